"""Every annotator kind through the one interface: made by `lmlm annotate train`, loaded by kind, lossless on
bad input, usable by every consumer (corpus runs, ingest, agreement), compared side by side."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lmlm_agent.cli import app
from lmlm_agent.format import strip_calls
from training.annotators import KINDS, Annotator, load_annotator
from training.corpus import load_lmlm_annotations


@pytest.fixture(scope="module")
def records(annotations_dir, tmp_path_factory):
    """Six teacher records to learn from, and two others (recorded by the offline teacher) to annotate."""
    out = tmp_path_factory.mktemp("records")
    for name, source, n in (("train.json", "squad-train1k.gpt4o.json", 6), ("eval.json", "squad-eval100.gpt4o.json", 2)):
        data = json.loads((annotations_dir / source).read_text())
        (out / name).write_text(json.dumps({"metadata": data["metadata"], "examples": data["examples"][:n]}))
    return out


@pytest.fixture(scope="module")
def teacher_url(records):
    from training.teacher_server import create_app, load_records, running_server

    with running_server(create_app(load_records([records / "eval.json"]))) as url:
        yield url


TRAIN_ARGS = {
    "teacher": lambda url, tmp: ["--set", f"base_url={url}", "--set", f"cache_dir={tmp / 'cache'}", "--set", "progress=false"],
    # An untrained tagger is shy: a high value bias makes it write calls.
    "extractive": lambda url, tmp: ["--layers", "1", "--max-documents", "3", "--set", "max_steps=2", "--set", "max_length=64", "--set", "calibration_documents=0",
                                    "--set", "value_bias=4.0", "--set", "progress=false"],
    # A micro model from scratch, one step; short fields and windows keep its (mostly dropped) calls cheap.
    "generative": lambda url, tmp: ["--preset", "micro", "--context", "128", "--set", "max_steps=1", "--set", "window_tokens=32",
                                    "--set", "max_field_tokens=2", "--set", "progress=false"],
}


@pytest.fixture(scope="module", params=KINDS)
def made(request, records, teacher_url, tmp_path_factory):
    kind, tmp = request.param, tmp_path_factory.mktemp(request.param)
    result = CliRunner().invoke(app, ["annotate", "train", "--kind", kind, "--records", str(records / "train.json"),
                                      "--out", str(tmp / "annotator"), *TRAIN_ARGS[kind](teacher_url, tmp)])
    assert result.exit_code == 0, result.output
    return kind, tmp / "annotator"


def texts(records) -> list[str]:
    recorded = [d.plain for d in load_lmlm_annotations(records / "eval.json")]
    return [*recorded, "", "Ada wrote <|db_entity|> about engines.", "Ada Lovelace, whom no teacher has seen, was born in 1815 in London."]


def test_each_kind_adds_calls_and_never_changes_the_text(made, records) -> None:
    kind, directory = made
    annotator = load_annotator(directory, threads=1)
    assert isinstance(annotator, Annotator) and annotator.kind == kind == annotator.describe()["kind"]
    inputs = texts(records)
    results = annotator.annotate(inputs)
    assert [r.status for r in results] == ["ok", "ok", "empty", "contains_call_tokens", "unknown" if kind == "teacher" else "ok"]
    assert [r.annotated for r in results[2:4]] == inputs[2:4]  # left as they were
    assert [r.text for r in results] == inputs and all(strip_calls(r.annotated) == r.text for r in results if r is not results[3])
    assert all(0 <= offset <= len(r.text) for r in results for offset, _ in r.calls)
    if kind != "generative":  # an untrained micro LM writes no finished call; the others do
        assert all(r.calls for r in results[:2])


def test_each_kind_feeds_a_corpus_run_and_ingest(made, records, tmp_path) -> None:
    from tools.ingest import ingest_texts
    from tools import open_store
    from training.annotator_run import annotate_corpus

    kind, directory = made
    annotator = load_annotator(directory, threads=1)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts(records))))
    store = open_store(tmp_path / "kb.sqlite", index=False)
    summary = annotate_corpus(annotator, src, tmp_path / "out.jsonl", store)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert summary["documents"] == 5 and summary["contains_call_tokens"] == 1 and rows[3]["text"] == rows[3]["plain"]
    assert all(strip_calls(r["text"]) == r["plain"] for r in rows[:3] + rows[4:])
    assert store.count() == summary.get("triples_written", 0) and (store.count() > 0) == (summary["calls"] > 0)
    report = ingest_texts(annotator, open_store(None, index=False), [("doc#0", texts(records)[0])])
    assert report.written == report.calls and all(f["source"].startswith("doc#0@") for f in report.facts)


def test_old_directories_load_as_extractive_and_unknown_kinds_are_refused(made, tmp_path) -> None:
    kind, directory = made
    if kind != "extractive":
        pytest.skip("about extractive directories")
    meta = json.loads((directory / "annotator.json").read_text())
    assert meta.pop("kind") == "extractive"
    (directory / "annotator.json").write_text(json.dumps(meta))  # as saved before kinds existed
    assert load_annotator(directory).kind == "extractive"
    (directory / "annotator.json").write_text(json.dumps({**meta, "kind": "oracle"}))
    with pytest.raises(ValueError, match="unknown annotator kind 'oracle'"):
        load_annotator(directory)
    (directory / "annotator.json").write_text(json.dumps({**meta, "kind": "extractive"}))
    with pytest.raises(FileNotFoundError, match="not an annotator directory"):
        load_annotator(tmp_path)


def test_compare_puts_the_kinds_side_by_side(made, records, tmp_path) -> None:
    kind, directory = made
    if kind != KINDS[-1]:
        pytest.skip("one comparison, once every kind is made (the fixture makes them in KINDS order)")
    made_dirs = [directory.parent.parent / f"{kind}0" / "annotator" for kind in KINDS]  # tmp_path_factory.mktemp(kind)
    assert [load_annotator(d).kind for d in made_dirs] == list(KINDS)
    args = ["annotate", "compare", "--reference", str(records / "eval.json"), "--out", str(tmp_path), "--threads", "1"]
    result = CliRunner().invoke(app, [*args, *sum((["--annotator", str(d)] for d in made_dirs), [])])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["kind"] for r in rows] == list(KINDS)
    assert rows[0]["triple_f1"] == 1.0  # the teacher agrees with itself
    assert all(r["documents"] == 2 and r["reference_calls"] == rows[0]["reference_calls"] for r in rows)
    assert "triple_f1" in (tmp_path / "comparison.md").read_text()
