"""Import and export: JSONL triples and the published LMLM database JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import InvalidInput, open_store
from tools.io import export_jsonl, export_lmlm_database, import_rows, read_lmlm_database, read_triples_jsonl

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
