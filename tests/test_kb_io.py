"""Import and export: JSONL triples and the published LMLM database JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import InvalidInput, open_store
from tools.io import (
    export_jsonl,
    export_lmlm_database,
    import_file,
    import_rows,
    read_lmlm_database,
    read_triples_jsonl,
    sniff_json,
)

# A slice of the published squad-eval100 database, quirks kept: an escaped quote, and one
# (entity, relation) with two values, which the import keeps both of (the relation becomes multi-valued).
PUBLISHED = {
    "entities": ["Beyoncé", "Destiny\\'s Child"],
    "relationships": ["Starring Role", "Manager", "Birthplace"],
    "return_values": ["The Pink Panther (2006)", "Obsessed (2009)", "Mathew Knowles", "Houston, Texas"],
    "triplets": [
        ["Beyoncé", "Starring Role", "The Pink Panther (2006)"],
        ["Destiny\\'s Child", "Manager", "Mathew Knowles"],
        ["Beyoncé", "Starring Role", "Obsessed (2009)"],
        ["Beyoncé", "Birthplace", "Houston, Texas"],
        ["Beyoncé", "", "empty relation"],
    ],
}


def _rows(store) -> list[tuple]:
    return [(f.entity, f.relation, f.value, f.source) for f in store.iter_facts()]


def test_lmlm_database_import_export_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "published.json"
    src.write_text(json.dumps(PUBLISHED), encoding="utf-8")
    loaded = read_lmlm_database(src)
    assert [r.where for r in loaded.rejected] == ["published.json#triplet4"]
    store = open_store(index=False)
    report = import_rows(store, loaded.rows, loaded.rejected)
    assert (report.read, report.inserted, report.duplicates, report.rejected) == (5, 4, 0, 1)
    assert report.multi_valued == ["Starring Role"]
    roles = store.read("Beyoncé", "Starring Role")
    assert roles.value == "The Pink Panther (2006), Obsessed (2009)"  # file order = id order
    assert [r.source for r in roles.records] == ["published.json#triplet0", "published.json#triplet2"]
    assert store.read("Destiny\\'s Child", "manager").source == "published.json#triplet1"

    out = tmp_path / "export.json"
    assert export_lmlm_database(store, out) == 4
    data = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(map(tuple, data["triplets"])) == sorted(
        [("Beyoncé", "Starring Role", "The Pink Panther (2006)"), ("Beyoncé", "Starring Role", "Obsessed (2009)"),
         ("Destiny\\'s Child", "Manager", "Mathew Knowles"), ("Beyoncé", "Birthplace", "Houston, Texas")])
    assert data["entities"] == ["Beyoncé", "Destiny\\'s Child"]


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"triplets": []}), encoding="utf-8")
    with pytest.raises(InvalidInput, match="not an LMLM database"):
        read_lmlm_database(bad)


def test_jsonl_reader_keeps_good_rows_and_reports_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "triples.jsonl"
    lines = [
        json.dumps({"entity": "Ada Lovelace", "relation": "birth year", "value": "1815", "extra": 1}),
        "{not json",
        json.dumps(["Alan Turing", "birthplace", "London"]),
        "",
        json.dumps({"entity": "Ada Lovelace", "relation": "born in"}),
        json.dumps({"entity": " ", "relation": "r", "value": "v"}),
        json.dumps({"entity": "Grace Hopper", "relation": "rank", "value": "Rear admiral", "source": "navy.txt"}),
        json.dumps("just a string"),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loaded = read_triples_jsonl(path)
    assert [r[0] for r in loaded.rows] == ["Ada Lovelace", "Alan Turing", "Grace Hopper"]
    assert [r[3] for r in loaded.rows] == ["triples.jsonl:1", "triples.jsonl:3", "navy.txt"]
    reasons = {r.where: r.reason for r in loaded.rejected}
    assert set(reasons) == {"triples.jsonl:2", "triples.jsonl:5", "triples.jsonl:6", "triples.jsonl:8"}
    assert reasons["triples.jsonl:2"].startswith("invalid JSON")
    assert reasons["triples.jsonl:5"] == "missing value"
    assert "entity must not be empty" in reasons["triples.jsonl:6"]


def test_jsonl_export_reimports_to_the_same_facts(tmp_path: Path) -> None:
    store = open_store(index=False, namespace="src")
    store.write_many([("Ada Lovelace", "birth year", "1815"), ("東京", "人口", "1400万"), ("O'Brien", "motto", '"quoted"')],
                     source="seed")
    path = tmp_path / "facts.jsonl"
    assert export_jsonl(store, path) == 3
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"id", "namespace", "entity", "relation", "value", "source", "created_at", "updated_at"}
    copy = open_store(index=False, namespace="copy")
    report = import_rows(copy, read_triples_jsonl(path).rows, namespace="copy")
    assert report.inserted == 3 and report.rejected == 0
    assert _rows(copy) == _rows(store)


def test_single_valued_import_keeps_the_last_value_when_asked(tmp_path: Path) -> None:
    src = tmp_path / "published.json"
    src.write_text(json.dumps(PUBLISHED), encoding="utf-8")
    loaded = read_lmlm_database(src)
    store = open_store(index=False)
    report = import_rows(store, loaded.rows, loaded.rejected, detect_multi_valued=False)
    assert (report.inserted, report.duplicates, report.multi_valued) == (3, 1, [])
    assert store.read("Beyoncé", "Starring Role").value == "Obsessed (2009)" and store.multi_valued() == []


def _published_file(path: Path, people: int) -> Path:
    """A published-format database: one birth year per person, and two children for the first three."""
    triplets = [[f"Person {i}", "birth year", str(1800 + i)] for i in range(people)]
    triplets += [[f"Person {i}", "child", f"Kid {i}.{j}"] for i in range(3) for j in (1, 2)]
    triplets.append(["Person 0", "", "no relation"])
    path.write_text(json.dumps({"entities": [], "relationships": [], "return_values": [], "triplets": triplets}))
    return path


def test_import_file_streams_in_batches_and_keeps_values_split_across_batches(tmp_path: Path) -> None:
    src = _published_file(tmp_path / "database.json", 40)
    written: list[int] = []
    with open_store(tmp_path / "kb.sqlite", index=False) as store:
        report = import_file(store, src, "lmlm-db", batch_size=7, progress=written.append)
        assert (report.read, report.inserted, report.rejected) == (47, 46, 1)
        assert report.multi_valued == ["child"] and sum(written) == 47 and max(written) == 7
        # Person 0's two children arrive in one batch, the 40 birth years in six before them.
        assert [v.value for v in store.read("Person 2", "child").records] == ["Kid 2.1", "Kid 2.2"]
        assert store.count() == 46


def test_an_interrupted_import_resumes_where_it_stopped(tmp_path: Path) -> None:
    src = _published_file(tmp_path / "database.json", 40)

    def crash_after_two_batches(n: int, seen: list[int] = []) -> None:  # noqa: B006 - the batches of this one import
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with open_store(tmp_path / "kb.sqlite", index=False) as store:
        with pytest.raises(KeyboardInterrupt):
            import_file(store, src, "lmlm-db", batch_size=10, progress=crash_after_two_batches)
        assert store.count() == 20
        report = import_file(store, src, "lmlm-db", batch_size=10)
        assert report.resumed_from == 20 and report.read == 27 and report.inserted == 26
        assert store.count() == 46
        again = import_file(store, src, "lmlm-db", batch_size=10)  # finished: the mark is gone, a new import reads all
        assert (again.resumed_from, again.read, again.unchanged) == (0, 47, 46)


def test_a_file_that_is_not_a_database_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"triplets": [["Ada", "born", "1815"]]}), encoding="utf-8")
    assert sniff_json(bad) == "lmlm-db"  # looks like one at its first key...
    with open_store(tmp_path / "kb.sqlite", index=False) as store:
        with pytest.raises(InvalidInput, match="not an LMLM database"):  # ...but lacks the other three lists
            import_file(store, bad, "lmlm-db")
        assert store.count() == 0
    (tmp_path / "list.json").write_text("[1, 2]")
    assert sniff_json(tmp_path / "list.json") is None
    (tmp_path / "cut.json").write_text('{"entities": [')
    with pytest.raises(InvalidInput, match="not valid JSON"):
        read_lmlm_database(tmp_path / "cut.json")


def test_import_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Peak Python allocation of a batched import: the same for a file fifteen times larger."""
    import tracemalloc

    peaks = []
    for people in (1_000, 15_000):
        src = _published_file(tmp_path / f"db{people}.json", people)
        with open_store(tmp_path / f"kb{people}.sqlite", index=False) as store:
            tracemalloc.start()
            import_file(store, src, "lmlm-db", batch_size=500)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    whole = tracemalloc.start() or len(read_lmlm_database(tmp_path / "db15000.json").rows)
    whole_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert whole == 15_006
    assert peaks[1] < 1.5 * peaks[0], (peaks, whole_peak)
    assert peaks[1] < whole_peak, (peaks, whole_peak)
