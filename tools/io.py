"""Import and export: JSONL triples and the published LMLM database JSON.

Readers never raise on a bad row: each row is validated with the store's own rules
and either kept or listed as a :class:`Rejection` (where and why), so an import
stores every good row, reports every bad one, and changes nothing on a file it
cannot read at all. Annotated text is turned into triples by the CLI (it needs the
call parser, which lives outside this package) and enters through :func:`import_rows`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tools.schema import InvalidInput, clean_triple
from tools.store import SQLKnowledgeStore

Row = tuple[str, str, str, str | None]  # entity, relation, value, source
LMLM_DB_KEYS = ("entities", "relationships", "return_values", "triplets")
SAMPLE = 20  # rejections kept verbatim in a report


class Rejection(BaseModel):
    where: str
    reason: str


class ImportReport(BaseModel):
    """What an import did: rows read, how they landed, and the rows refused (first few verbatim)."""

    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = Field(0, description="rows repeating another row of the import (same entity, relation and value; "
                            "or an earlier value of a single-valued pair, superseded by the later one)")
    removed: int = Field(0, description="stored values of single-valued pairs that an imported value replaced")
    multi_valued: list[str] = Field(default_factory=list, description="relations this import declared multi-valued")
    rejected: int = 0
    rejections: list[Rejection] = Field(default_factory=list)
    namespace: str


class Loaded(BaseModel):
    """Rows that passed validation plus the ones that did not."""

    rows: list[Row] = Field(default_factory=list)
    rejected: list[Rejection] = Field(default_factory=list)

    def take(self, where: str, fields: Any, source: str | None) -> None:
        """Keep ``fields`` as a row if it is a valid (entity, relation, value[, source]); else record why not."""
        if isinstance(fields, dict):
            missing = [k for k in ("entity", "relation", "value") if k not in fields]
            if missing:
                self.rejected.append(Rejection(where=where, reason=f"missing {', '.join(missing)}"))
                return
            fields = [fields["entity"], fields["relation"], fields["value"], fields.get("source")]
        if not isinstance(fields, list | tuple) or len(fields) not in (3, 4):
            self.rejected.append(Rejection(where=where, reason="expected an object with entity, relation, value or a 3-item list"))
            return
        row_source = fields[3] if len(fields) == 4 and fields[3] is not None else source
        try:
            clean = clean_triple(fields[0], fields[1], fields[2], row_source)
        except InvalidInput as exc:
            self.rejected.append(Rejection(where=where, reason=str(exc)))
            return
        self.rows.append((clean.entity, clean.relation, clean.value, clean.source))


def read_triples_jsonl(path: str | Path, source: str | None = None) -> Loaded:
    """One triple per line: ``{"entity", "relation", "value"[, "source"]}`` or ``[e, r, v]``; other keys ignored.

    A row without its own source gets ``source``, or ``"<file>:<line>"`` as provenance.
    """
    path = Path(path)
    loaded = Loaded()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                loaded.rejected.append(Rejection(where=where, reason=f"invalid JSON: {exc.msg}"))
                continue
            loaded.take(where, item, source or where)
    return loaded


def read_lmlm_database(path: str | Path, source: str | None = None) -> Loaded:
    """The published release's database JSON file (see :func:`load_lmlm_database`)."""
    path = Path(path)
    return load_lmlm_database(json.loads(path.read_text(encoding="utf-8")), path.name, source)


def load_lmlm_database(data: Any, name: str, source: str | None = None) -> Loaded:
    """Rows of a parsed LMLM database; only ``triplets`` carries facts, the other lists are indexes of it."""
    if not is_lmlm_database(data):
        raise InvalidInput(f"{name}: not an LMLM database JSON (needs keys {', '.join(LMLM_DB_KEYS)})")
    loaded = Loaded()
    for n, triplet in enumerate(data["triplets"]):
        where = f"{name}#triplet{n}"
        loaded.take(where, triplet, source or where)
    return loaded


def is_lmlm_database(data: Any) -> bool:
    return isinstance(data, dict) and all(k in data for k in LMLM_DB_KEYS)


def several_valued_relations(rows: Iterable[Row]) -> list[str]:
    """Relations that some entity has with two or more distinct values among ``rows`` (as first spelled)."""
    from tools.schema import normalise_text

    values: dict[tuple[str, str], set[str]] = {}
    spelling: dict[str, str] = {}
    for entity, relation, value, _ in rows:
        rk = normalise_text(relation)
        spelling.setdefault(rk, relation)
        values.setdefault((normalise_text(entity), rk), set()).add(value)
    return list(dict.fromkeys(spelling[rk] for (_, rk), vals in values.items() if len(vals) > 1))


def import_rows(
    store: SQLKnowledgeStore,
    rows: Iterable[Row],
    rejected: Iterable[Rejection] = (),
    *,
    namespace: str | None = None,
    detect_multi_valued: bool = True,
) -> ImportReport:
    """Write validated rows in one bulk write and report, with the rejections the reader collected.

    ``detect_multi_valued``: a relation that some entity has with several distinct values in
    the rows (two daughters, two starring roles) is declared multi-valued in the namespace
    first, so every value is kept as its own row; off, such a pair keeps its last value.
    """
    rows = list(rows)
    rejected = list(rejected)
    declared = store.declare_multi_valued(several_valued_relations(rows), namespace=namespace) if detect_multi_valued else []
    stats = store.upsert_many(rows, namespace=namespace)
    return ImportReport(
        read=len(rows) + len(rejected),
        inserted=stats.inserted,
        updated=stats.updated,
        unchanged=stats.unchanged,
        duplicates=stats.duplicates,
        removed=stats.removed,
        multi_valued=declared,
        rejected=len(rejected),
        rejections=rejected[:SAMPLE],
        namespace=namespace or store.namespace,
    )


def _export_records(store: SQLKnowledgeStore, namespace: str | None) -> Iterator[dict[str, Any]]:
    for fact in store.iter_facts(namespace=namespace):
        yield {
            "id": fact.id,
            "namespace": fact.namespace,
            "entity": fact.entity,
            "relation": fact.relation,
            "value": fact.value,
            "source": fact.source,
            "created_at": fact.created_at.isoformat() + "Z",
            "updated_at": fact.updated_at.isoformat() + "Z",
        }


def export_jsonl(store: SQLKnowledgeStore, path: str | Path, *, namespace: str | None = None) -> int:
    """Every row of the namespace, one JSON object per line (re-importable: extra keys are ignored)."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for record in _export_records(store, namespace):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def export_lmlm_database(store: SQLKnowledgeStore, path: str | Path, *, namespace: str | None = None) -> int:
    """The namespace in the published database format, for the reference implementation's tools."""
    triplets = [[f.entity, f.relation, f.value] for f in store.iter_facts(namespace=namespace)]
    data = {
        "entities": sorted({t[0] for t in triplets}),
        "relationships": sorted({t[1] for t in triplets}),
        "return_values": sorted({t[2] for t in triplets}),
        "triplets": triplets,
    }
    Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return len(triplets)
