"""`lmlm kb`: every command through typer's CliRunner, on a SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmlm_agent.cli import app
from lmlm_agent.format import extract_triples, legacy_to_special, render_call
from tools import open_store

runner = CliRunner()


def kb(*args: str, db: Path, index: str | None = "off") -> tuple[int, str]:
    """A `lmlm kb` command on ``db``; ``index=None`` for commands that never touch the index (export)."""
    result = runner.invoke(app, ["kb", *args, "--db", str(db), *(["--index", index] if index else [])])
    return result.exit_code, result.output


def kb_json(*args: str, db: Path, index: str = "off") -> dict:
    code, out = kb(*args, "--json", db=db, index=index)
    assert code == 0, out
    return json.loads(out)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "kb.sqlite"


def test_add_get_delete_cycle(db: Path) -> None:
    code, out = kb("add", "Ada Lovelace", "birth year", "1815", "--source", "doc:1", db=db)
    assert code == 0 and "inserted" in out
    code, out = kb("add", "ada lovelace", "birth_year", "1816", db=db)
    assert code == 0 and "updated" in out and "'1815'" in out
    got = kb_json("get", "ADA LOVELACE", "birth year", db=db)
    assert (got["match"], got["value"], got["fact_id"]) == ("exact", "1816", 1)
    receipt = kb_json("delete", "--entity", "Ada Lovelace", db=db)
    assert [r["value"] for r in receipt["removed"]] == ["1816"] and receipt["verified"]
    assert kb_json("get", "Ada Lovelace", "birth year", db=db)["value"] == "unknown"
    code, out = kb("delete", "--id", "99", db=db)
    assert code == 0 and "nothing removed" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (("add", "  ", "born", "1815"), "entity: String should have at least 1 character"),
        (("add", "Ada", "born", "x<|db_end|>"), "lookup-call token"),
        (("delete",), "nothing was selected"),
        (("delete", "--relation", "born"), "relation alone"),
        (("add", "Ada", "born", "1815", "--namespace", "bad namespace"), "namespace"),
    ],
)
def test_errors_exit_non_zero_with_a_clear_message(db: Path, args: tuple[str, ...], message: str) -> None:
    code, out = kb(*args, db=db)
    assert code == 1 and "error:" in out and message in out


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    code, out = kb("stats", db="postgresql://nobody@127.0.0.1:1/none")  # type: ignore[arg-type]
    assert code == 1 and out.startswith("error:") and "Traceback" not in out


def test_import_jsonl_with_bad_lines_then_export(db: Path, tmp_path: Path) -> None:
    src = tmp_path / "triples.jsonl"
    src.write_text("\n".join([
        json.dumps({"entity": "Ada Lovelace", "relation": "birth year", "value": "1815"}),
        "{broken",
        json.dumps(["Alan Turing", "birthplace", "London"]),
    ]) + "\n", encoding="utf-8")
    report = kb_json("import", str(src), "--namespace", "people", db=db)
    assert (report["inserted"], report["rejected"]) == (2, 1)
    assert report["rejections"][0]["where"] == "triples.jsonl:2"
    stats = kb_json("stats", db=db)
    assert stats["namespaces"] == [{"namespace": "people", "facts": 2, "indexed": None}]
    out = tmp_path / "out.json"
    code, _ = kb("export", str(out), "--format", "lmlm-db", "--namespace", "people", db=db, index=None)
    assert code == 0 and len(json.loads(out.read_text())["triplets"]) == 2


def test_import_annotated_special_token_jsonl(db: Path, tmp_path: Path) -> None:
    text = (f"Ada Lovelace was born in {render_call('Ada Lovelace', 'birth year', '1815')} 1815 and wrote "
            f"{render_call('Ada Lovelace', 'notable work', 'Notes on the Analytical Engine')} her Notes. "
            "<|db_entity|> broken call")
    src = tmp_path / "corpus.jsonl"
    src.write_text("\n".join([json.dumps({"id": "doc-7", "text": text}), "{cut off", json.dumps({"id": "x"})]) + "\n",
                   encoding="utf-8")
    report = kb_json("import", str(src), db=db)
    assert report["inserted"] == 2
    assert [r["where"] for r in report["rejections"]] == ["corpus.jsonl:2", "corpus.jsonl:3"]
    assert kb_json("get", "Ada Lovelace", "notable work", db=db)["source"] == "corpus.jsonl#doc-7"


def test_import_published_legacy_annotations(db: Path, annotations_dir: Path) -> None:
    path = annotations_dir / "squad-eval100.gpt4o.json"
    examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    triples = [t for ex in examples for t in extract_triples(legacy_to_special(ex["annotated_text"]).text)]
    report = kb_json("import", str(path), db=db)
    assert report["read"] >= len(triples) > 500
    assert report["inserted"] + report["duplicates"] + report["rejected"] == report["read"]
    store = open_store(db, index=False)
    assert store.count() == report["inserted"]
    e, r, _ = triples[0]
    assert store.read(e, r).source == "squad-eval100.gpt4o.json#0"


def test_import_unreadable_file_changes_nothing(db: Path, tmp_path: Path) -> None:
    kb("add", "Ada", "born", "1815", db=db)
    bad = tmp_path / "broken.json"
    bad.write_text("{not json", encoding="utf-8")
    code, out = kb("import", str(bad), db=db)
    assert code == 1 and "error:" in out
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}), encoding="utf-8")
    code, out = kb("import", str(other), db=db)
    assert code != 0 and "neither an LMLM database" in out
    assert kb_json("stats", db=db)["namespaces"][0]["facts"] == 1


def test_semantic_get_and_rebuild_index(db: Path, tmp_path: Path) -> None:
    index = str(tmp_path / "index")
    kb("add", "Alan Turing", "birthplace", "London", db=db, index=index)
    kb("add", "Alan Turing", "employer", "GCHQ", db=db)  # written with the index off: not indexed yet
    got = kb_json("get", "alan turing", "place of birth", db=db, index=index)
    assert (got["match"], got["value"]) == ("semantic", "London")
    assert kb_json("stats", db=db, index=index)["namespaces"][0]["indexed"] == 1
    code, out = kb("rebuild-index", "--workers", "0", db=db, index=index)
    assert code != 0 and "--workers" in out
    code, out = kb("rebuild-index", "--workers", "1", db=db, index=index)
    assert code == 0 and "2 keys indexed" in out
    # The published policy reads the index (the entity policy compares relation names, not indexed keys).
    assert kb_json("get", "Alan Turing", "works for", "--policy", "published", db=db, index=index)["value"] == "GCHQ"


def test_import_published_database_with_several_values_keeps_them_all(db: Path, tmp_path: Path) -> None:
    src = tmp_path / "database.json"
    triplets = [["Geri Halliwell", "Daughter", "Bluebell Madonna"], ["Geri Halliwell", "Birthplace", "Watford"],
                ["Geri Halliwell", "Daughter", "Olivia"], ["Geri Halliwell", "daughter", "Olivia"]]
    src.write_text(json.dumps({"entities": ["Geri Halliwell"], "relationships": ["Daughter", "Birthplace"],
                               "return_values": ["Bluebell Madonna", "Olivia", "Watford"], "triplets": triplets}))
    report = kb_json("import", str(src), db=db)
    assert (report["inserted"], report["duplicates"], report["multi_valued"]) == (3, 1, ["Daughter"])
    got = kb_json("get", "geri halliwel", "daughter", db=db)
    assert (got["value"], got["rule"], len(got["fact_ids"])) == ("Bluebell Madonna, Olivia", "entity_fuzzy", 2)
    assert [r["source"] for r in got["records"]] == ["database.json#triplet0", "database.json#triplet2"]
    listed = runner.invoke(app, ["kb", "multi-valued", "--db", str(db)])  # reads no index: it takes no --index
    assert listed.exit_code == 0 and "Daughter" in listed.output
    code, out = kb("add", "Geri Halliwell", "daughter", "Charlie", db=db)
    assert code == 0 and "inserted" in out
    receipt = kb_json("delete", "--entity", "Geri Halliwell", "--relation", "Daughter", db=db)
    assert sorted(r["value"] for r in receipt["removed"]) == ["Bluebell Madonna", "Charlie", "Olivia"] and receipt["verified"]


def test_get_reports_rule_and_scores_and_never_creates_a_database(tmp_path: Path) -> None:
    code, out = kb("get", "Ada", "born", db=tmp_path / "none" / "kb.sqlite")
    assert code == 1 and "no knowledge base" in out and not (tmp_path / "none").exists()
    db = tmp_path / "kb.sqlite"
    kb("add", "Ada Lovelace", "birth year", "1815", db=db)
    code, out = kb("get", "Ada Lovelase", "birth year", db=db)
    assert code == 0 and "entity_fuzzy" in out and "1815" in out
    code, out = kb("get", "Kalo Veri", "birth year", db=db)
    assert code == 0 and "entity_unknown" in out and "unknown" in out


def test_memllm_export_reimports_and_memllm_text_imports_its_writes_and_reads(db: Path, tmp_path: Path) -> None:
    kb("add", "Ada Lovelace", "birth year", "1815", db=db)
    assert kb("multi-valued", "child", db=db, index=None)[0] == 0
    for child in ("Byron King", "Anne King"):
        kb("add", "Ada Lovelace", "child", child, db=db)
    out = tmp_path / "memory.txt"
    code, message = kb("export", str(out), "--format", "memllm", db=db, index=None)
    assert code == 0 and "wrote 3 facts" in message, message
    assert out.read_text().splitlines()[0] == "({MEM_WRITE--> Ada Lovelace>>birth year>>1815})"
    again = tmp_path / "again.sqlite"
    report = kb_json("import", str(out), db=again)
    assert (report["inserted"], report["rejected"], report["multi_valued"]) == (3, 0, ["child"])
    assert sorted(f.value for f in open_store(again, index=False).iter_facts()) == ["1815", "Anne King", "Byron King"]

    text = tmp_path / "memllm.txt"
    text.write_text("Grace Hopper was born in ({MEM_READ(Grace Hopper>>birthplace>>)-->New York City}) New York. "
                    "({MEM_WRITE--> Grace Hopper>>employer>>US Navy;broken}) ({MEM_READ(>>employer>>US Navy)-->Grace Hopper})")
    report = kb_json("import", str(text), db=tmp_path / "m.sqlite")
    assert report["inserted"] == 2 and report["rejected"] == 2  # the broken write part and the subject read


def test_memllm_export_refuses_a_fact_the_dialect_cannot_spell(db: Path, tmp_path: Path) -> None:
    kb("add", "Recipe", "steps", "mix; bake", db=db)
    out = tmp_path / "memory.txt"
    code, message = kb("export", str(out), "--format", "memllm", db=db, index=None)
    assert code == 1 and "cannot carry" in message and "export them as jsonl" in message and not out.exists()


def test_kb_get_offers_every_lookup_policy_setting() -> None:
    """A LookupPolicy field without a `kb get` option could not be tried from the command line."""
    import dataclasses

    from tools.lookup import LookupPolicy

    # Typer reads the signature, not the dataclass, so a new field needs its parameter written out.
    params = {p.name for p in __import__("typer").main.get_command(app).commands["kb"].commands["get"].params}
    missing = {f.name for f in dataclasses.fields(LookupPolicy)} - params - {"name"}
    assert not missing and "policy" in params, f"kb get lacks options for {sorted(missing)}"
