"""The knowledge store: SQL rows are the truth, the semantic index is derived from them.

Lookup policy (``read``): the normalised key is matched exactly in SQL first; then
the semantic index gives the top-k nearest keys, each checked against SQL (so a
row SQL no longer has is never returned), and the best one at or above the
threshold wins; below it the fallback policy decides (``unknown``: a miss,
``top1``: the best candidate anyway, marked ``fallback``).

Writes upsert on the normalised (namespace, entity, relation): writing a known pair again with
a new value replaces the value (audited as an update); with the same value it
changes nothing. Namespaces are a hard boundary: every statement filters on one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from sqlalchemy import Engine, bindparam, create_engine, delete, event, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from tools.schema import (
    MAX_FIELD_CHARS,
    UNKNOWN,
    AuditEntry,
    CleanTriple,
    Fact,
    FactRecord,
    ForgetReceipt,
    InvalidInput,
    LookupResult,
    StoreMeta,
    clean_field,
    clean_namespace,
    clean_triple,
    normalise_key,
    normalise_text,
    storable,
    utcnow,
)

if TYPE_CHECKING:
    from tools.index import SemanticIndex

Fallback = Literal["unknown", "top1"]
Triple = Sequence[Any]  # (entity, relation, value) or (entity, relation, value, source)

TOP_K = 5
SQL_CHUNK = 2_000  # keys per statement: far below SQLite's and PostgreSQL's parameter limits
RELOOKUP_CAP = 20  # re-lookups listed in a forget receipt
DEFAULT_SERVER_INDEX = Path("runs/kb-index")

FACTS = Fact.__table__
AUDIT = AuditEntry.__table__
META = StoreMeta.__table__
_ROW = (FACTS.c.id, FACTS.c.entity, FACTS.c.relation, FACTS.c.value, FACTS.c.source, FACTS.c.key)
_EXACT = select(*_ROW).where(
    FACTS.c.namespace == bindparam("ns"), FACTS.c.entity_key == bindparam("ek"), FACTS.c.relation_key == bindparam("rk")
)
# By primary key alone: with the namespace in the WHERE clause SQLite scans the namespace's
# (namespace, entity, relation) index instead, which grows with the store (9 ms at 100k rows).
# The namespace boundary is enforced on the rows returned.
_BY_IDS = select(*_ROW, FACTS.c.namespace).where(FACTS.c.id.in_(bindparam("ids", expanding=True)))
_BY_PAIRS = select(FACTS.c.id, FACTS.c.entity_key, FACTS.c.relation_key, FACTS.c.value).where(
    FACTS.c.namespace == bindparam("ns"),
    tuple_(FACTS.c.entity_key, FACTS.c.relation_key).in_(bindparam("pairs", expanding=True)),
)


@runtime_checkable
class KnowledgeStore(Protocol):
    """What the runtime, the typed tools and the benchmarks need from a knowledge base."""

    namespace: str

    def read(self, entity: str, relation: str, *, namespace: str | None = None) -> LookupResult: ...

    def write(
        self, entity: str, relation: str, value: str, source: str | None = None, *, namespace: str | None = None
    ) -> Fact: ...

    def write_many(self, triples: Iterable[Triple], source: str | None = None, namespace: str | None = None) -> int: ...

    def delete(
        self,
        *,
        fact_id: int | None = None,
        entity: str | None = None,
        relation: str | None = None,
        namespace: str | None = None,
    ) -> ForgetReceipt: ...

    def count(self, *, namespace: str | None = None) -> int: ...

    def iter_facts(self, *, namespace: str | None = None) -> Iterator[Fact]: ...

    def namespaces(self) -> list[str]: ...


@dataclass(frozen=True)
class WriteStats:
    """What a bulk write did. ``duplicates``: rows superseded by a later row with the same key in the same batch."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0

    @property
    def written(self) -> int:
        return self.inserted + self.updated


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _record(row: Any) -> FactRecord:
    return FactRecord(id=row.id, entity=row.entity, relation=row.relation, value=row.value, source=row.source)


class SQLKnowledgeStore:
    """A :class:`KnowledgeStore` on any SQLAlchemy engine (SQLite file or memory, PostgreSQL)."""

    def __init__(
        self,
        engine: Engine,
        *,
        index: SemanticIndex | None = None,
        namespace: str = "default",
        threshold: float = 0.6,
        fallback: Fallback = "unknown",
        top_k: int = TOP_K,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise InvalidInput(f"threshold must be within [0, 1], got {threshold}")
        if fallback not in ("unknown", "top1"):
            raise InvalidInput(f"fallback must be 'unknown' or 'top1', got {fallback!r}")
        self.engine = engine
        self.index = index
        self.namespace = clean_namespace(namespace)
        self.threshold = threshold
        self.fallback: Fallback = fallback
        self.top_k = top_k

    # ------------------------------------------------------------------ reads

    def _ns(self, namespace: str | None) -> str:
        return self.namespace if namespace is None else clean_namespace(namespace)

    def read(self, entity: str, relation: str, *, namespace: str | None = None) -> LookupResult:
        """Exact, then semantic, then the fallback policy; total for any strings (bad ones are misses)."""
        if not isinstance(entity, str) or not isinstance(relation, str):
            raise InvalidInput("entity and relation must be strings")
        ns = self._ns(namespace)
        key = normalise_key(entity, relation)
        miss = dict(found=False, value=UNKNOWN, entity=entity, relation=relation, match="miss", namespace=ns, query=key)
        if not key or not storable(key):
            return LookupResult(**miss)  # nothing stored can have this key
        with self.engine.connect() as conn:
            row = conn.execute(_EXACT, {"ns": ns, "ek": normalise_text(entity), "rk": normalise_text(relation)}).first()
            if row is not None:
                return self._result(row, 1.0, "exact", ns, key)
            if self.index is None:
                return LookupResult(**miss)
            hits = self.index.query(ns, key, self.top_k)
            rows = {r.id: r for r in conn.execute(_BY_IDS, {"ids": [h.fact_id for h in hits]}) if r.namespace == ns} if hits else {}
        # A hit counts only if SQL still has the row under the key that was embedded.
        live = [(h, rows[h.fact_id]) for h in hits if h.fact_id in rows and rows[h.fact_id].key == h.key]
        if live:
            hit, row = live[0]
            if hit.similarity >= self.threshold:
                return self._result(row, hit.similarity, "semantic", ns, key)
            if self.fallback == "top1":
                return self._result(row, hit.similarity, "fallback", ns, key)
            miss["score"] = round(hit.similarity, 6)
        return LookupResult(**miss)

    @staticmethod
    def _result(row: Any, score: float, match: str, ns: str, key: str) -> LookupResult:
        return LookupResult(
            found=True,
            value=row.value,
            entity=row.entity,
            relation=row.relation,
            fact_id=row.id,
            score=round(score, 6),
            match=match,
            source=row.source,
            namespace=ns,
            query=key,
        )

    def get(self, fact_id: int, *, namespace: str | None = None) -> Fact | None:
        """The row with this id in the namespace, or None (another namespace's id is not visible)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(FACTS).where(FACTS.c.namespace == self._ns(namespace), FACTS.c.id == fact_id)).first()
        return None if row is None else Fact(**row._mapping)

    def count(self, *, namespace: str | None = None) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(FACTS).where(FACTS.c.namespace == self._ns(namespace))).scalar_one()

    def iter_facts(self, *, namespace: str | None = None, batch_size: int = 1_000) -> Iterator[Fact]:
        """All rows of the namespace in id order, paged by id so a million rows never sit in memory."""
        ns, last = self._ns(namespace), 0
        while True:
            with self.engine.connect() as conn:
                page = conn.execute(
                    select(FACTS).where(FACTS.c.namespace == ns, FACTS.c.id > last).order_by(FACTS.c.id).limit(batch_size)
                ).all()
            if not page:
                return
            yield from (Fact(**r._mapping) for r in page)
            last = page[-1].id

    def namespaces(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(FACTS.c.namespace).distinct().order_by(FACTS.c.namespace)).scalars())

    def audit(self, *, namespace: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries of the namespace (writes and deletes), newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(AUDIT).where(AUDIT.c.namespace == self._ns(namespace)).order_by(AUDIT.c.id.desc()).limit(limit)
            ).all()
        return [AuditEntry(**r._mapping) for r in rows]

    # ------------------------------------------------------------------ writes

    def write(
        self, entity: str, relation: str, value: str, source: str | None = None, *, namespace: str | None = None
    ) -> Fact:
        """Insert, or replace the value of the same normalised (entity, relation); returns the stored row."""
        ns = self._ns(namespace)
        row = clean_triple(entity, relation, value, source)
        self._upsert(ns, [row])
        with self.engine.connect() as conn:
            stored = conn.execute(select(FACTS).where(
                FACTS.c.namespace == ns, FACTS.c.entity_key == row.entity_key, FACTS.c.relation_key == row.relation_key
            )).one()
        return Fact(**stored._mapping)

    def write_many(self, triples: Iterable[Triple], source: str | None = None, namespace: str | None = None) -> int:
        """Bulk upsert; returns the number of rows inserted or changed (see :meth:`upsert_many` for the split)."""
        return self.upsert_many(triples, source=source, namespace=namespace).written

    def upsert_many(
        self, triples: Iterable[Triple], *, source: str | None = None, namespace: str | None = None
    ) -> WriteStats:
        """Validate every triple first (one bad triple stores nothing), then write in chunks in one transaction."""
        ns = self._ns(namespace)
        rows = [self._clean_row(n, t, source) for n, t in enumerate(triples)]
        return self._upsert(ns, rows)

    @staticmethod
    def _clean_row(n: int, triple: Triple, source: str | None) -> CleanTriple:
        if isinstance(triple, str | bytes) or not isinstance(triple, Sequence) or len(triple) not in (3, 4):
            raise InvalidInput(f"triple #{n}: expected (entity, relation, value[, source]), got {triple!r:.80}")
        row_source = triple[3] if len(triple) == 4 and triple[3] is not None else source
        try:
            return clean_triple(triple[0], triple[1], triple[2], row_source)
        except InvalidInput as exc:
            raise InvalidInput(f"triple #{n}: {exc}") from None

    def _upsert(self, ns: str, rows: list[CleanTriple]) -> WriteStats:
        """One SQL transaction for all rows (all or nothing), then the new keys go to the index."""
        latest = {r.pair: r for r in rows}  # within a batch the last row for an (entity, relation) wins
        inserted = updated = unchanged = 0
        new_keys: list[tuple[int, str]] = []
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                for chunk in _chunks(list(latest.values()), SQL_CHUNK):
                    found = conn.execute(_BY_PAIRS, {"ns": ns, "pairs": [c.pair for c in chunk]})
                    existing = {(r.entity_key, r.relation_key): r for r in found}
                    fresh = [c for c in chunk if c.pair not in existing]
                    changed = [(existing[c.pair], c) for c in chunk if c.pair in existing and existing[c.pair].value != c.value]
                    unchanged += len(chunk) - len(fresh) - len(changed)
                    audit = self._insert_fresh(conn, ns, fresh, now, new_keys) + self._update_changed(conn, ns, changed, now)
                    if audit:
                        conn.execute(insert(AUDIT), audit)
                    inserted += len(fresh)
                    updated += len(changed)
        except IntegrityError as exc:
            raise InvalidInput(f"a concurrent writer stored one of these keys first; nothing was written ({exc.orig})") from exc
        if self.index is not None and new_keys:
            self.index.add(ns, new_keys)
        return WriteStats(inserted, updated, unchanged, len(rows) - len(latest))

    @staticmethod
    def _insert_fresh(conn: Any, ns: str, fresh: Sequence[CleanTriple], now: Any, new_keys: list[tuple[int, str]]) -> list[dict]:
        """Insert new rows; their (id, key) go to ``new_keys`` for the index; returns their audit entries."""
        if not fresh:
            return []
        values = [
            dict(namespace=ns, entity=c.entity, relation=c.relation, value=c.value, key=c.key,
                 entity_key=c.entity_key, relation_key=c.relation_key, source=c.source, created_at=now, updated_at=now)
            for c in fresh
        ]
        ids = conn.execute(insert(FACTS).returning(FACTS.c.id, sort_by_parameter_order=True), values).scalars().all()
        new_keys.extend((i, c.key) for i, c in zip(ids, fresh, strict=True))
        return [
            dict(at=now, action="insert", namespace=ns, fact_id=i, entity=c.entity, relation=c.relation,
                 old_value=None, new_value=c.value, source=c.source)
            for i, c in zip(ids, fresh, strict=True)
        ]

    @staticmethod
    def _update_changed(conn: Any, ns: str, changed: Sequence[tuple[Any, CleanTriple]], now: Any) -> list[dict]:
        """Replace the values of existing rows (ids and keys unchanged, so no re-embedding); returns audit entries."""
        if not changed:
            return []
        stmt = update(FACTS).where(FACTS.c.id == bindparam("b_id")).values(
            value=bindparam("b_value"), source=bindparam("b_source"), updated_at=now
        )
        conn.execute(stmt, [dict(b_id=old.id, b_value=c.value, b_source=c.source) for old, c in changed])
        return [
            dict(at=now, action="update", namespace=ns, fact_id=old.id, entity=c.entity, relation=c.relation,
                 old_value=old.value, new_value=c.value, source=c.source)
            for old, c in changed
        ]

    # ------------------------------------------------------------------ delete

    def delete(
        self,
        *,
        fact_id: int | None = None,
        entity: str | None = None,
        relation: str | None = None,
        namespace: str | None = None,
    ) -> ForgetReceipt:
        """Forget by id, by entity, or by entity + relation; deleting what is not there is an empty receipt."""
        ns = self._ns(namespace)
        condition, selector = self._selector(fact_id, entity, relation)
        now = utcnow()
        with self.engine.begin() as conn:
            rows = conn.execute(select(*_ROW).where(FACTS.c.namespace == ns, condition).order_by(FACTS.c.id)).all()
            ids = [r.id for r in rows]
            for chunk in _chunks(ids, SQL_CHUNK):
                conn.execute(delete(FACTS).where(FACTS.c.namespace == ns, FACTS.c.id.in_(chunk)))
            if rows:
                conn.execute(insert(AUDIT), [
                    dict(at=now, action="delete", namespace=ns, fact_id=r.id, entity=r.entity, relation=r.relation,
                         old_value=r.value, new_value=None, source=r.source)
                    for r in rows
                ])
        index_removed: list[int] = []
        index_remaining: int | None = None
        if self.index is not None:
            index_removed = self.index.present(ns, ids)
            self.index.delete(ns, ids)
            index_remaining = len(self.index.present(ns, ids))
        with self.engine.connect() as conn:
            sql_remaining = sum(
                conn.execute(select(func.count()).select_from(FACTS).where(FACTS.c.id.in_(chunk))).scalar_one()
                for chunk in _chunks(ids, SQL_CHUNK)
            )
        pairs = list(dict.fromkeys((r.entity, r.relation) for r in rows))[:RELOOKUP_CAP]
        relookups = [self.read(e, r, namespace=ns) for e, r in pairs]
        gone = set(ids)
        return ForgetReceipt(
            namespace=ns,
            selector=selector,
            removed=[_record(r) for r in rows],
            index_removed=index_removed,
            sql_remaining=sql_remaining,
            index_remaining=index_remaining,
            relookups=relookups,
            verified=sql_remaining == 0 and not index_remaining and all(r.fact_id not in gone for r in relookups),
            at=now,
        )

    @staticmethod
    def _selector(fact_id: int | None, entity: str | None, relation: str | None) -> tuple[Any, dict[str, int | str]]:
        """The WHERE clause of a delete; refuses ambiguous or unbounded requests instead of guessing."""
        if fact_id is not None:
            if entity is not None or relation is not None:
                raise InvalidInput("delete takes fact_id alone, or entity with an optional relation")
            if isinstance(fact_id, bool) or not isinstance(fact_id, int) or fact_id < 1:
                raise InvalidInput(f"fact_id must be a positive integer, got {fact_id!r}")
            return FACTS.c.id == fact_id, {"fact_id": fact_id}
        if entity is None:
            what = "relation alone would delete across every entity" if relation is not None else "nothing was selected"
            raise InvalidInput(f"delete needs fact_id, entity, or entity and relation ({what})")
        e = clean_field("entity", entity, MAX_FIELD_CHARS)
        if relation is None:
            return FACTS.c.entity_key == normalise_text(e), {"entity": e}
        r = clean_field("relation", relation, MAX_FIELD_CHARS)
        pair = (FACTS.c.entity_key == normalise_text(e)) & (FACTS.c.relation_key == normalise_text(r))
        return pair, {"entity": e, "relation": r}

    # ------------------------------------------------------------------ index upkeep

    def rebuild_index(self, namespace: str | None = None) -> dict[str, int]:
        """Drop and re-embed the index from the SQL rows: of one namespace, or of every namespace either side knows."""
        if self.index is None:
            raise InvalidInput("this store was opened without an index (index=False)")
        targets = [self._ns(namespace)] if namespace is not None else sorted(set(self.namespaces()) | set(self.index.namespaces()))
        done: dict[str, int] = {}
        for ns in targets:
            self.index.drop(ns)
            done[ns] = self.index.add(ns, ((f.id, f.key) for f in self.iter_facts(namespace=ns)))
        return done

    def describe(self) -> dict[str, Any]:
        """Where the store lives (password hidden) and how it looks facts up."""
        return {
            "db": self.engine.url.render_as_string(hide_password=True),
            "index": None if self.index is None else self.index.location,
            "namespace": self.namespace,
            "threshold": self.threshold,
            "fallback": self.fallback,
            "top_k": self.top_k,
        }

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SQLKnowledgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- opening


def make_engine(db: str | Path | None) -> Engine:
    """None: a private in-memory SQLite; a path: a SQLite file (parents created); a URL: that database."""
    if db is None:
        return create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    text = str(db)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{path}")
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    for plain in ("postgresql://", "postgres://"):
        if text.startswith(plain):
            text = "postgresql+psycopg://" + text[len(plain) :]  # psycopg 3 is the driver we ship
    return create_engine(text, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets readers run beside a writer; NORMAL sync is safe under WAL and much faster for bulk writes."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _store_id(engine: Engine) -> str:
    """The database's own id, made once: index collections are named by it, so two databases never share one."""
    import uuid

    Fact.metadata.create_all(engine, tables=[FACTS, AUDIT, META])
    _check_columns(engine)
    with engine.begin() as conn:
        found = conn.execute(select(META.c.value).where(META.c.name == "store_id")).scalar()
        if found:
            return found
        try:
            conn.execute(insert(META).values(name="store_id", value=uuid.uuid4().hex))
        except IntegrityError:
            pass  # another process made it first; read theirs below
    with engine.connect() as conn:
        return conn.execute(select(META.c.value).where(META.c.name == "store_id")).scalar_one()


def _check_columns(engine: Engine) -> None:
    """Refuse a database whose tables predate the current schema, instead of failing on the first query."""
    from sqlalchemy import inspect

    inspector = inspect(engine)
    for table in (FACTS, AUDIT):
        missing = {c.name for c in table.columns} - {c["name"] for c in inspector.get_columns(table.name)}
        if missing:
            raise InvalidInput(
                f"{table.name} lacks column(s) {', '.join(sorted(missing))}: the database was made by an older "
                "version; export it with that version or re-import its source into a new database"
            )


def default_index_location(db: str | Path | None, engine: Engine) -> str:
    """In memory beside an in-memory database, ``<name>.chroma/`` beside a SQLite file, ``runs/kb-index`` otherwise."""
    from tools.index import EPHEMERAL

    if db is None:
        return EPHEMERAL
    if engine.url.get_backend_name() == "sqlite" and engine.url.database:
        path = Path(engine.url.database)
        return str(path.with_name(path.stem + ".chroma"))
    return str(DEFAULT_SERVER_INDEX.resolve())


def open_store(
    db: str | Path | None = None,
    *,
    index: str | Path | None | Literal[False] = None,
    namespace: str = "default",
    threshold: float = 0.6,
    fallback: Fallback = "unknown",
) -> SQLKnowledgeStore:
    """Open (creating if needed) a knowledge store.

    ``index``: None for the default location, a directory, ``":memory:"``, an
    ``http(s)://`` Chroma server, or False for exact lookups only (the embedder and
    Chroma are then never imported, which keeps other packages' tests fast).
    """
    engine = make_engine(db)
    store_id = _store_id(engine)
    semantic = None
    if index is not False:
        from tools.index import SemanticIndex, make_client

        location = default_index_location(db, engine) if index is None else str(index)
        semantic = SemanticIndex(make_client(location), store_id, location)
    return SQLKnowledgeStore(engine, index=semantic, namespace=namespace, threshold=threshold, fallback=fallback)
