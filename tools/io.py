"""Import and export: JSONL triples and the published LMLM database JSON.

Readers never raise on a bad row: each row is validated with the store's own rules
and either kept or listed as a :class:`Rejection` (where and why), so an import
stores every good row, reports every bad one, and changes nothing on a file it
cannot read at all. Annotated text is turned into triples by the CLI (it needs the
call parser, which lives outside this package) and enters through :func:`import_rows`.

Files are read as streams (``ijson`` for the database JSON), never whole: the published
database holds 54.6M triples. :func:`import_file` reads a file twice, first to count its
rows and find the relations with several values per entity (on disk, in a temporary
SQLite file), then to write it in batches, recording after each batch how far it got, so
an interrupted import of the same file resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import delete, insert, select, update

from tools.backends import KnowledgeStore
from tools.schema import InvalidInput, StoreMeta, clean_triple, normalise_text
from tools.store import SQLKnowledgeStore, retrying

Row = tuple[str, str, str, str | None]  # entity, relation, value, source
FileFormat = Literal["jsonl", "lmlm-db"]
LMLM_DB_KEYS = ("entities", "relationships", "return_values", "triplets")
SAMPLE = 20  # rejections kept verbatim in a report
BATCH = 20_000  # rows per transaction of a file import: one batch is what a crash can make it redo
META = StoreMeta.__table__


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
    resumed_from: int = Field(0, description="rows of the file skipped because an interrupted import of the same file "
                              "into the same namespace had stored them")

    def add(self, stats: Any, rejected: list[Rejection], read: int) -> None:
        self.read += read
        for name in ("inserted", "updated", "unchanged", "duplicates", "removed"):
            setattr(self, name, getattr(self, name) + getattr(stats, name))
        self.rejected += len(rejected)
        self.rejections.extend(rejected[: SAMPLE - len(self.rejections)])


def check_row(where: str, fields: Any, source: str | None) -> Row | Rejection:
    """``fields`` as a row if it is a valid (entity, relation, value[, source]); else why not."""
    if isinstance(fields, dict):
        missing = [k for k in ("entity", "relation", "value") if k not in fields]
        if missing:
            return Rejection(where=where, reason=f"missing {', '.join(missing)}")
        fields = [fields["entity"], fields["relation"], fields["value"], fields.get("source")]
    if not isinstance(fields, list | tuple) or len(fields) not in (3, 4):
        return Rejection(where=where, reason="expected an object with entity, relation, value or a 3-item list")
    row_source = fields[3] if len(fields) == 4 and fields[3] is not None else source
    try:
        clean = clean_triple(fields[0], fields[1], fields[2], row_source)
    except InvalidInput as exc:
        return Rejection(where=where, reason=str(exc))
    return (clean.entity, clean.relation, clean.value, clean.source)


class Loaded(BaseModel):
    """Rows that passed validation plus the ones that did not."""

    rows: list[Row] = Field(default_factory=list)
    rejected: list[Rejection] = Field(default_factory=list)

    def take(self, where: str, fields: Any, source: str | None) -> None:
        """Keep ``fields`` as a row if it is a valid (entity, relation, value[, source]); else record why not."""
        self.keep(check_row(where, fields, source))

    def keep(self, item: Row | Rejection) -> None:
        (self.rejected if isinstance(item, Rejection) else self.rows).append(item)

    @classmethod
    def collect(cls, items: Iterable[Row | Rejection]) -> Loaded:
        loaded = cls()
        for item in items:
            loaded.keep(item)
        return loaded


def iter_triples_jsonl(path: str | Path, source: str | None = None) -> Iterator[Row | Rejection]:
    """One triple per line: ``{"entity", "relation", "value"[, "source"]}`` or ``[e, r, v]``; other keys ignored.

    A row without its own source gets ``source``, or ``"<file>:<line>"`` as provenance.
    """
    for where, item in _raw_jsonl(Path(path)):
        yield item if isinstance(item, Rejection) else check_row(where, item, source or where)


def _raw_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, the line as parsed, or the Rejection of a line that is not JSON) for each non-blank line."""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, Rejection(where=where, reason=f"invalid JSON: {exc.msg}")


def iter_lmlm_database(path: str | Path, source: str | None = None) -> Iterator[Row | Rejection]:
    """The rows of the published release's database JSON, parsed as a stream.

    Only ``triplets`` carries facts; the other three lists are indexes of it, skipped
    unread. A file that is not such a database raises :class:`InvalidInput` once it has
    been read to the end (:func:`import_file` reads it whole before writing anything).
    """
    for where, fields in _raw_triplets(Path(path)):
        yield check_row(where, fields, source or where)


def _raw_triplets(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, the triplet as parsed) for each item of ``triplets``, unvalidated."""
    import ijson
    from ijson.common import ObjectBuilder

    keys: set[str] = set()
    builder: ObjectBuilder | None = None
    n = 0
    with path.open("rb") as fh:
        try:
            for prefix, event, value in ijson.parse(fh, use_float=True):
                if prefix == "":
                    if event == "map_key":
                        keys.add(value)
                    elif event in ("start_array", "string", "number", "boolean", "null"):
                        break  # not an object at the top: refused below
                    continue
                if not prefix.startswith("triplets.item"):
                    continue
                if prefix == "triplets.item" and builder is None:
                    if event not in ("start_array", "start_map"):  # a scalar where a triplet belongs
                        yield f"{path.name}#triplet{n}", value
                        n += 1
                        continue
                    builder = ObjectBuilder()
                builder.event(event, value)
                if prefix == "triplets.item" and event in ("end_array", "end_map"):
                    yield f"{path.name}#triplet{n}", builder.value
                    builder, n = None, n + 1
        except ijson.JSONError as exc:
            raise InvalidInput(f"{path.name}: not valid JSON ({exc})") from None
    if not all(k in keys for k in LMLM_DB_KEYS):
        raise InvalidInput(f"{path.name}: not an LMLM database JSON (needs keys {', '.join(LMLM_DB_KEYS)})")


def read_triples_jsonl(path: str | Path, source: str | None = None) -> Loaded:
    return Loaded.collect(iter_triples_jsonl(path, source))


def read_lmlm_database(path: str | Path, source: str | None = None) -> Loaded:
    """The published release's database JSON file, in memory (:func:`import_file` streams it instead)."""
    return Loaded.collect(iter_lmlm_database(path, source))


def is_lmlm_database(data: Any) -> bool:
    return isinstance(data, dict) and all(k in data for k in LMLM_DB_KEYS)


def sniff_json(path: str | Path) -> Literal["lmlm-db", "annotated"] | None:
    """What a ``.json`` file holds, from its first top-level key (read as a stream, not parsed whole).

    ``lmlm-db`` for the published database, ``annotated`` for published annotations (``examples``),
    None for anything else.
    """
    import ijson

    with Path(path).open("rb") as fh:
        try:
            for prefix, event, value in ijson.parse(fh):
                if prefix == "" and event == "map_key":
                    if value in LMLM_DB_KEYS:
                        return "lmlm-db"
                    if value == "examples":
                        return "annotated"
                elif prefix == "" and event != "start_map":
                    return None
        except ijson.JSONError as exc:
            raise InvalidInput(f"{Path(path).name}: not valid JSON ({exc})") from None
    return None


def several_valued_relations(rows: Iterable[Row]) -> list[str]:
    """Relations that some entity has with two or more distinct values among ``rows`` (as first spelled).

    The (entity, relation, value) set is kept in a temporary SQLite file, not in memory, so a
    file of any size can be scanned.
    """
    spelling: dict[str, str] = {}
    rel_ids: dict[str, int] = {}

    def keyed() -> Iterator[tuple[bytes, int, bytes]]:
        for entity, relation, value, _ in rows:
            rk = normalise_text(relation)
            if rk not in rel_ids:
                rel_ids[rk], spelling[rk] = len(rel_ids), relation
            pair = hashlib.blake2b(f"{normalise_text(entity)}\0{rk}".encode(), digest_size=12).digest()
            yield pair, rel_ids[rk], hashlib.blake2b(value.encode(), digest_size=12).digest()

    with tempfile.TemporaryDirectory(prefix="lmlm-scan-") as tmp:
        db = sqlite3.connect(Path(tmp) / "pairs.sqlite")
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("CREATE TABLE pv (pair BLOB, rel INTEGER, val BLOB, PRIMARY KEY (pair, val)) WITHOUT ROWID")
        db.executemany("INSERT OR IGNORE INTO pv VALUES (?, ?, ?)", keyed())  # consumes the rows as a stream
        several = {rel for (rel,) in db.execute("SELECT rel FROM pv GROUP BY pair HAVING COUNT(*) > 1")}
        db.close()
    by_id = {i: rk for rk, i in rel_ids.items()}
    return [spelling[by_id[i]] for i in sorted(several)]


def import_rows(
    store: KnowledgeStore,
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
    report = ImportReport(namespace=namespace or store.namespace, multi_valued=declared)
    report.add(store.upsert_many(rows, namespace=namespace), rejected, len(rows) + len(rejected))
    return report


class FileScan(BaseModel):
    """The first pass of :func:`import_file`: how many items the file holds, which relations are several-valued."""

    items: int
    multi_valued: list[str]


def scan_file(path: str | Path, kind: FileFormat, source: str | None = None) -> FileScan:
    """Read the whole file once (streaming): count its items and find its several-valued relations.

    A database JSON that is not one raises here, before anything is written. Items are taken
    as parsed (validating 54.6M rows twice would double the read): a row the import then
    rejects still counts towards its relation's values.
    """
    count = 0

    def rows() -> Iterator[Row]:
        nonlocal count
        for _, fields in (_raw_triplets if kind == "lmlm-db" else _raw_jsonl)(Path(path)):
            count += 1
            if (row := _plain(fields)) is not None:
                yield row

    several = several_valued_relations(rows())
    return FileScan(items=count, multi_valued=several)


def _plain(fields: Any) -> Row | None:
    """(entity, relation, value, None) of a parsed item that has three strings in place, unvalidated; else None."""
    if isinstance(fields, dict):
        fields = [fields.get("entity"), fields.get("relation"), fields.get("value")]
    if isinstance(fields, list) and len(fields) in (3, 4) and all(isinstance(f, str) for f in fields[:3]):
        return (fields[0], fields[1], fields[2], None)
    return None


class _ResumeMark:
    """How many items of one file (by size, time and content digest) an import into a namespace has stored."""

    def __init__(self, store: SQLKnowledgeStore, namespace: str, path: Path) -> None:
        stat = path.stat()
        digest = hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        with path.open("rb") as fh:
            digest.update(fh.read(1 << 20))
        self.engine, self.name = store.engine, f"import:{namespace}:{path.name}:{digest.hexdigest()[:16]}"

    def get(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(META.c.value).where(META.c.name == self.name)).scalar()
        return int(value) if value is not None else 0

    def set(self, done: int) -> None:
        def mark(conn: Any) -> None:
            if conn.execute(update(META).where(META.c.name == self.name).values(value=str(done))).rowcount == 0:
                conn.execute(insert(META).values(name=self.name, value=str(done)))

        retrying(self.engine, mark)  # another import may hold the database for a moment

    def clear(self) -> None:
        retrying(self.engine, lambda conn: conn.execute(delete(META).where(META.c.name == self.name)))


def import_file(
    store: SQLKnowledgeStore,
    path: str | Path,
    kind: FileFormat,
    *,
    namespace: str | None = None,
    source: str | None = None,
    detect_multi_valued: bool = True,
    resume: bool = True,
    batch_size: int = BATCH,
    scan: FileScan | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import a JSONL or published-database file in constant memory, in batches of ``batch_size`` rows.

    Each batch is one transaction; after it, the number of items done is recorded in the
    store (``kb_meta``), so that a second import of the same unchanged file into the same
    namespace, after a crash or Ctrl-C, skips what was stored (``resume=False`` re-reads it
    all; the rows are upserts either way, so nothing is doubled). ``scan``: the result of
    :func:`scan_file` when the caller ran it (for a progress total); ``progress`` is called
    with the number of items of each batch written.
    """
    path = Path(path)
    scan = scan or scan_file(path, kind, source)
    ns = namespace or store.namespace
    mark = _ResumeMark(store, ns, path)
    done = mark.get() if resume else 0
    declared = store.declare_multi_valued(scan.multi_valued, namespace=namespace) if detect_multi_valued else []
    report = ImportReport(namespace=ns, multi_valued=declared, resumed_from=done)
    items = islice(_READERS[kind](path, source), done, None)
    while batch := list(islice(items, batch_size)):
        rows = [item for item in batch if not isinstance(item, Rejection)]
        report.add(store.upsert_many(rows, namespace=namespace), [i for i in batch if isinstance(i, Rejection)], len(batch))
        done += len(batch)
        mark.set(done)
        if progress is not None:
            progress(len(batch))
    mark.clear()
    return report


_READERS: dict[str, Callable[[str | Path, str | None], Iterator[Row | Rejection]]] = {
    "jsonl": iter_triples_jsonl,
    "lmlm-db": iter_lmlm_database,
}


def _export_records(store: KnowledgeStore, namespace: str | None) -> Iterator[dict[str, Any]]:
    for fact in store.iter_facts(namespace=namespace):
        yield {
            "id": fact.id,
            "namespace": fact.namespace,
            "entity": fact.entity,
            "relation": fact.relation,
            "value": fact.value,
            "source": fact.source,
            "created_at": _utc_text(fact.created_at),
            "updated_at": _utc_text(fact.updated_at),
        }


def _utc_text(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat() + "Z"  # stores keep naive UTC


def export_jsonl(store: KnowledgeStore, path: str | Path, *, namespace: str | None = None) -> int:
    """Every row of the namespace, one JSON object per line (re-importable: extra keys are ignored)."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for record in _export_records(store, namespace):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def export_lmlm_database(store: KnowledgeStore, path: str | Path, *, namespace: str | None = None) -> int:
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
