"""The knowledge store: SQL rows are the truth, the semantic index is derived from them.

Read policies (``read``; see :mod:`tools.lookup`):

- ``entity`` (default): the entity is matched by name (exact after normalisation, else a
  fuzzy character-level match that forgives a typo), then, only among that entity's rows,
  the relation (exact, else by the meaning of relation names). An entity the store does
  not know is ``unknown`` whatever the relation.
- ``published``: the LMLM release's lookup, kept for comparison: the exact pair, else the
  nearest ``"entity relation"`` key in the semantic index at or above a cosine threshold
  (which answers an unknown entity with someone else's value).

Writes: a single-valued (entity, relation) has one row, which a new value replaces in
place (audited as an update); a multi-valued one (the relation declared multi-valued in
the namespace, or a write with ``mode="add"``) gets a row per distinct value. The same
value again changes nothing. Namespaces are a hard boundary: every statement filters on one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from sqlalchemy import Engine, bindparam, create_engine, delete, event, func, insert, inspect, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from tools.backends import KnowledgeStore, ReadOnlyStore, Triple, WriteStats
from tools.lookup import (
    RELATION_VECTORS,
    EntityMatch,
    EntityNames,
    Fallback,
    LookupPolicy,
    PolicyName,
    RelationMatch,
    RelationVectors,
    RelationVocabulary,
    make_policy,
    meant_elsewhere,
    pick_relation,
)
from tools.schema import (
    MAX_FIELD_CHARS,
    SINGLE_SLOT,
    UNKNOWN,
    VALUE_SEPARATOR,
    AuditEntry,
    CleanTriple,
    DiskScan,
    Fact,
    FactRecord,
    ForgetReceipt,
    IndexOp,
    InvalidInput,
    LookupResult,
    RelationDecl,
    StoredFact,
    StoreMeta,
    Tombstone,
    WriteMode,
    clean_field,
    clean_namespace,
    clean_row,
    clean_selector,
    clean_triple,
    normalise_key,
    normalise_text,
    query_keys,
    split_batch,
    storable,
    utcnow,
    value_slot,
)

if TYPE_CHECKING:
    from tools.index import SemanticIndex

TOP_K = 5
SQL_CHUNK = 2_000  # keys per statement: far below SQLite's and PostgreSQL's parameter limits
RELOOKUP_CAP = 20  # re-lookups listed in a forget receipt
DEFAULT_SERVER_INDEX = Path("runs/kb-index")
GENERATION = "entity_generation"  # kb_meta row that changes with every insert or delete (entity-name caches)
WRITE_MODES = ("add", "replace")
AUDIT_KEY = "audit_key"  # kb_meta row: the HMAC key of forgotten facts' digests (audit rows, tombstones)
DIGEST_PREFIX = "hmac:"
INDEX_PAGE = 1_024  # pending index operations applied per step (one embedding batch)
SCAN_MIN_BYTES = 4  # shorter forgotten strings are not searched for on disk (they occur by chance)
TEST_PAUSE_ENV = "LMLM_KB_TEST_PAUSE_S"  # tests only: sleep before each index step, so a kill lands between SQL and index
R = TypeVar("R")

FACTS = Fact.__table__
AUDIT = AuditEntry.__table__
META = StoreMeta.__table__
RELATIONS = RelationDecl.__table__
OUTBOX = IndexOp.__table__
TOMBSTONES = Tombstone.__table__
TABLES = [FACTS, AUDIT, META, RELATIONS, OUTBOX, TOMBSTONES]
_ROW = (FACTS.c.id, FACTS.c.entity, FACTS.c.relation, FACTS.c.value, FACTS.c.source, FACTS.c.key)
_PAIR_ROWS = select(*_ROW).where(
    FACTS.c.namespace == bindparam("ns"), FACTS.c.entity_key == bindparam("ek"), FACTS.c.relation_key == bindparam("rk")
).order_by(FACTS.c.id)
_ENTITY_ROWS = select(*_ROW, FACTS.c.relation_key).where(
    FACTS.c.namespace == bindparam("ns"), FACTS.c.entity_key == bindparam("ek")
).order_by(FACTS.c.id)
# By primary key alone: with the namespace in the WHERE clause SQLite scans the namespace's
# (namespace, entity, relation) index instead, which grows with the store (9 ms at 100k rows).
# The namespace boundary is enforced on the rows returned.
_BY_IDS = select(*_ROW, FACTS.c.namespace, FACTS.c.entity_key, FACTS.c.relation_key).where(
    FACTS.c.id.in_(bindparam("ids", expanding=True))
)
# A write finds the stored rows of its pairs by entity and picks the pairs in Python: PostgreSQL plans a
# row-value IN of 2,000 pairs as a scan of the whole table tested against every pair (2 s per chunk at 30k
# rows: the 330 rows/s import of 2026-12), while an entity list uses the unique index's (namespace, entity) prefix.
_BY_ENTITIES = select(*_ROW, FACTS.c.entity_key, FACTS.c.relation_key, FACTS.c.value_slot).where(
    FACTS.c.namespace == bindparam("ns"), FACTS.c.entity_key.in_(bindparam("eks", expanding=True))
).order_by(FACTS.c.id)
_GENERATION = select(META.c.value).where(META.c.name == GENERATION)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _record(row: Any) -> FactRecord:
    return FactRecord(id=row.id, entity=row.entity, relation=row.relation, value=row.value, source=row.source)


def _stored(row: Any) -> StoredFact:
    """A ``kb_fact`` row as the plain record the protocol returns (the SQL row stays inside this module)."""
    return StoredFact(id=row.id, entity=row.entity, relation=row.relation, value=row.value, source=row.source,
                      namespace=row.namespace, created_at=row.created_at, updated_at=row.updated_at)


def _bump_generation(conn: Any) -> None:
    """Tell every entity-name cache (in any process) that entities may have come or gone."""
    stamp = uuid.uuid4().hex
    if conn.execute(update(META).where(META.c.name == GENERATION).values(value=stamp)).rowcount == 0:
        conn.execute(insert(META).values(name=GENERATION, value=stamp))


class SQLKnowledgeStore(KnowledgeStore):
    """A :class:`KnowledgeStore` on any SQLAlchemy engine (SQLite file or memory, PostgreSQL).

    ``policy`` is a :class:`~tools.lookup.LookupPolicy` or its name, with its fields as keyword
    arguments (``entity_threshold``, ``relation_threshold``, ``relation_margin``, ``threshold``,
    ``fallback``). ``relation_vectors``: the embeddings of relation names used by the entity
    policy; None matches relations exactly (the default when there is no semantic index).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        index: SemanticIndex | None = None,
        namespace: str = "default",
        policy: PolicyName | LookupPolicy = "entity",
        relation_vectors: RelationVectors | None | Literal["auto"] = "auto",
        top_k: int = TOP_K,
        legacy_schema: bool = False,
        read_only: bool = False,
        **settings: Any,
    ) -> None:
        self.engine = engine
        self.index = index
        self.namespace = clean_namespace(namespace)
        self.policy = make_policy(policy, settings)
        self.relation_vectors = (RELATION_VECTORS if index is not None else None) if relation_vectors == "auto" else relation_vectors
        self.top_k = top_k
        self.legacy_schema = legacy_schema  # opened read-only (create=False) on the previous schema: no writes
        self.read_only = read_only  # opened for reading only: every write and delete is refused
        self._names: dict[str, EntityNames] = {}
        self._relations: dict[str, RelationVocabulary] = {}
        self._key: bytes | None = None  # kb_meta's audit key, read at the first write or fuzzy lookup

    def with_policy(self, policy: PolicyName | LookupPolicy, **settings: Any) -> SQLKnowledgeStore:
        """The same database and index read with another policy (to compare policies on one store)."""
        return SQLKnowledgeStore(
            self.engine, index=self.index, namespace=self.namespace, policy=policy,
            relation_vectors=self.relation_vectors, top_k=self.top_k, legacy_schema=self.legacy_schema,
            read_only=self.read_only, **settings,
        )

    def with_namespace(self, namespace: str) -> SQLKnowledgeStore:
        """The same database, index and caches, reading and writing ``namespace`` by default."""
        view = self.with_policy(self.policy)
        view.namespace = clean_namespace(namespace)
        # The entity-name and relation-vocabulary caches are per namespace already.
        view._names, view._relations, view._key = self._names, self._relations, self._key
        return view

    @property
    def threshold(self) -> float:
        return self.policy.threshold

    @property
    def fallback(self) -> Fallback:
        return self.policy.fallback

    # ------------------------------------------------------------------ reads

    def _ns(self, namespace: str | None) -> str:
        return self.namespace if namespace is None else clean_namespace(namespace)

    def read(self, entity: str, relation: str, *, namespace: str | None = None) -> LookupResult:
        """Look a fact up with the store's policy; total for any strings (bad ones are misses)."""
        ek, rk = query_keys(entity, relation)
        ns = self._ns(namespace)
        key = normalise_key(entity, relation)
        query = dict(entity=entity, relation=relation, namespace=ns, query=key, policy=self.policy.name)
        if not ek or not rk or not storable(key):
            return _miss(query, "empty_query")  # nothing stored can have this key
        if self.policy.name == "published":
            return self._read_published(ns, ek, rk, key, query)
        return self._read_entity_first(ns, ek, rk, query)

    def _read_entity_first(self, ns: str, ek: str, rk: str, query: dict[str, Any]) -> LookupResult:
        with self.engine.connect() as conn:
            rows = conn.execute(_ENTITY_ROWS, {"ns": ns, "ek": ek}).all()
            entity = EntityMatch(ek, 1.0, "entity_exact")
            if not rows:
                entity = self._fuzzy_entity(conn, ns, ek)
                if entity.entity_key is None:
                    return _miss(query, entity.rule, entity_score=entity.score)
                # Read from SQL, never from the cache: an entity deleted since is simply not found.
                rows = conn.execute(_ENTITY_ROWS, {"ns": ns, "ek": entity.entity_key}).all()
                if not rows:
                    return _miss(query, "entity_unknown", entity_score=entity.score)
        by_relation: dict[str, list[Any]] = {}
        for row in rows:
            by_relation.setdefault(row.relation_key, []).append(row)
        relation = pick_relation(rk, list(by_relation), self.relation_vectors, self.policy)
        scores = dict(entity_score=entity.score, relation_score=relation.score)
        if relation.relation_key is None:
            return _miss(query, relation.rule, **scores)
        if relation.rule in ("relation_lexical", "relation_alias", "relation_semantic") and self._answers_another_relation(ns, rk, relation):
            return _miss(query, "relation_absent", **scores)
        approximate = [r for r in (entity.rule, relation.rule) if r not in ("entity_exact", "relation_exact")]
        match = "fallback" if relation.fallback else "semantic" if approximate else "exact"
        return _found(by_relation[relation.relation_key], query, match, "+".join(approximate) or "exact",
                      min(entity.score, relation.score), **scores)

    def _answers_another_relation(self, ns: str, rk: str, relation: RelationMatch) -> bool:
        """Whether the entity's semantically matched relation is a different relation from the one asked.

        See :class:`~tools.lookup.RelationVocabulary`: the query means another relation the
        namespace knows, and that one's name is not close to the match's (``relation_same``)
        or one entity holds both with different values: they are not two names of one fact.
        """
        vocabulary = self._relations.setdefault(ns, RelationVocabulary())
        with self.engine.connect() as conn:
            # By primary key alone (a namespace condition would scan the namespace); other namespaces are skipped.
            rows = conn.execute(select(FACTS.c.id, FACTS.c.namespace, FACTS.c.relation_key)
                                .where(FACTS.c.id > vocabulary.seen_id)).all()
            vocabulary.grow({r.relation_key for r in rows if r.namespace == ns}, max((r.id for r in rows), default=0))
            meant = meant_elsewhere(rk, relation, vocabulary, self.relation_vectors)
            if meant is None:
                return False
            if self.relation_vectors.similarity(meant, relation.relation_key) < self.policy.relation_same:
                return True
            generation = conn.execute(_GENERATION).scalar()

            def ask_store(a: str, b: str) -> bool:
                first, second = FACTS.alias("first"), FACTS.alias("second")
                both = first.join(second, (second.c.namespace == first.c.namespace) & (second.c.entity_key == first.c.entity_key))
                return conn.execute(select(first.c.id).select_from(both).where(
                    first.c.namespace == ns, first.c.relation_key == a, second.c.relation_key == b,
                    first.c.value != second.c.value).limit(1)).first() is not None

            return vocabulary.held_apart(meant, relation.relation_key, generation, ask_store)

    def _fuzzy_entity(self, conn: Any, ns: str, ek: str) -> EntityMatch:
        """The nearest stored name, from a cache rebuilt whenever any process inserted or deleted rows.

        A name within one edit of a forgotten entity (see :class:`~tools.schema.Tombstone`) is
        ``entity_forgotten`` before any live name is considered.
        """
        if self.policy.entity_threshold < 1.0 and self.policy.entity_max_edits >= 1 and not self.legacy_schema:
            key = self._key or self._read_key(conn)
            if key is not None:
                variants = [digest(key, v) for v in one_deletion_variants(ek)]
                hit = conn.execute(select(TOMBSTONES.c.entity_digest).where(
                    TOMBSTONES.c.namespace == ns, TOMBSTONES.c.variant_digest.in_(variants)).limit(1)).first()
                if hit is not None:
                    return EntityMatch(None, None, "entity_forgotten")
        generation = conn.execute(_GENERATION).scalar()
        names = self._names.get(ns)
        if names is None or not names.is_current(generation):
            live = conn.execute(
                select(FACTS.c.entity_key).where(FACTS.c.namespace == ns).distinct().order_by(FACTS.c.entity_key)
            ).scalars().all()
            # Names deleted before forgotten entities became digests (older databases) stay tombstones by name.
            deleted = conn.execute(
                select(AUDIT.c.entity).where(AUDIT.c.namespace == ns, AUDIT.c.action == "delete",
                                             AUDIT.c.entity.not_like(DIGEST_PREFIX + "%")).distinct()
            ).scalars().all()
            names = self._names[ns] = EntityNames.build(generation, list(live), list(deleted))
        return names.match(ek, self.policy.entity_threshold, self.policy.entity_max_edits)

    def _read_published(self, ns: str, ek: str, rk: str, key: str, query: dict[str, Any]) -> LookupResult:
        """The released LMLM lookup: the exact pair, else the nearest indexed key at or above ``threshold``."""
        with self.engine.connect() as conn:
            rows = conn.execute(_PAIR_ROWS, {"ns": ns, "ek": ek, "rk": rk}).all()
            if rows:
                return _found(rows, query, "exact", "exact", 1.0)
            if self.index is None:
                return _miss(query, "published_no_index")
            hits = self.index.query(ns, key, self.top_k)
            found = {r.id: r for r in conn.execute(_BY_IDS, {"ids": [h.fact_id for h in hits]}) if r.namespace == ns} if hits else {}
            # A hit counts only if SQL still has the row under the key that was embedded.
            live = [(h, found[h.fact_id]) for h in hits if h.fact_id in found and found[h.fact_id].key == h.key]
            if not live:  # a first build still under way has no live collection yet: say so, not "nothing near"
                return _miss(query, "index_building" if not hits and self.index.building(ns) is not None
                             else "published_below_threshold")
            hit, row = live[0]
            if hit.similarity < self.policy.threshold and self.policy.fallback != "top1":
                return _miss(query, "published_below_threshold", score=round(hit.similarity, 6))
            # Every value of the hit's (entity, relation), as an exact read of it would give.
            pair = conn.execute(_PAIR_ROWS, {"ns": ns, "ek": row.entity_key, "rk": row.relation_key}).all()
        semantic = hit.similarity >= self.policy.threshold
        return _found(pair or [row], query, "semantic" if semantic else "fallback",
                      "published_semantic" if semantic else "published_fallback", hit.similarity)

    def get(self, fact_id: int, *, namespace: str | None = None) -> StoredFact | None:
        """The fact with this id in the namespace, or None (another namespace's id is not visible)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(FACTS).where(FACTS.c.namespace == self._ns(namespace), FACTS.c.id == fact_id)).first()
        return None if row is None else _stored(row)

    def count(self, *, namespace: str | None = None) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(FACTS).where(FACTS.c.namespace == self._ns(namespace))).scalar_one()

    def iter_facts(self, *, namespace: str | None = None, batch_size: int = 1_000) -> Iterator[StoredFact]:
        """All facts of the namespace in id order, paged by id so a million rows never sit in memory."""
        return map(_stored, self._rows(self._ns(namespace), batch_size))

    def _rows(self, ns: str, batch_size: int = 1_000) -> Iterator[Any]:
        last = 0
        while True:
            with self.engine.connect() as conn:
                page = conn.execute(
                    select(FACTS).where(FACTS.c.namespace == ns, FACTS.c.id > last).order_by(FACTS.c.id).limit(batch_size)
                ).all()
            if not page:
                return
            yield from page
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

    # ------------------------------------------------------------------ multi-valued relations

    def declare_multi_valued(
        self, relations: Iterable[str], *, multi_valued: bool = True, namespace: str | None = None
    ) -> list[str]:
        """Declare relations multi-valued in the namespace (a new value adds a row), or single-valued again.

        Making a relation single-valued again keeps the values already stored; the next
        write of a pair replaces all of that pair's values. Returns the relations changed.
        """
        self._writable()
        ns = self._ns(namespace)
        cleaned = {normalise_text(r): r for r in (clean_field("relation", r, MAX_FIELD_CHARS) for r in relations)}

        def declare(conn: Any) -> list[str]:
            declared = set(conn.execute(select(RELATIONS.c.relation_key).where(RELATIONS.c.namespace == ns)).scalars())
            if multi_valued:
                new = {k: r for k, r in cleaned.items() if k not in declared}
                if new:
                    conn.execute(insert(RELATIONS), [dict(namespace=ns, relation_key=k, relation=r, declared_at=utcnow())
                                                     for k, r in new.items()])
                return list(new.values())
            gone = [k for k in cleaned if k in declared]
            for chunk in _chunks(gone, SQL_CHUNK):
                conn.execute(delete(RELATIONS).where(RELATIONS.c.namespace == ns, RELATIONS.c.relation_key.in_(chunk)))
            return [cleaned[k] for k in gone]

        return retrying(self.engine, declare)

    def multi_valued(self, *, namespace: str | None = None) -> list[str]:
        """The relations declared multi-valued in the namespace, as first spelled."""
        if self.legacy_schema:
            return []
        with self.engine.connect() as conn:
            return list(conn.execute(
                select(RELATIONS.c.relation).where(RELATIONS.c.namespace == self._ns(namespace)).order_by(RELATIONS.c.relation_key)
            ).scalars())

    # ------------------------------------------------------------------ writes

    def write(
        self,
        entity: str,
        relation: str,
        value: str,
        source: str | None = None,
        *,
        namespace: str | None = None,
        mode: WriteMode | None = None,
    ) -> StoredFact:
        """Store one value; returns it as stored.

        ``mode``: ``"replace"`` (the pair ends with this one value), ``"add"`` (kept beside
        the pair's other values), or None: ``add`` for a relation declared multi-valued in the
        namespace, else ``replace``.
        """
        ns = self._ns(namespace)
        row = clean_triple(entity, relation, value, source)
        _, [stored] = self._upsert(ns, [row], mode, echo=True)
        return _stored(stored)

    def write_many(
        self, triples: Iterable[Triple], source: str | None = None, namespace: str | None = None, mode: WriteMode | None = None
    ) -> int:
        """Bulk write; returns the number of rows inserted or changed (see :meth:`upsert_many` for the split)."""
        return self.upsert_many(triples, source=source, namespace=namespace, mode=mode).written

    def upsert_many(
        self,
        triples: Iterable[Triple],
        *,
        source: str | None = None,
        namespace: str | None = None,
        mode: WriteMode | None = None,
    ) -> WriteStats:
        """Validate every triple first (one bad triple stores nothing), then write in chunks in one transaction.

        Per pair, ``mode`` as in :meth:`write`; within the batch, the last value of a replaced
        (single-valued) pair wins, and every distinct value of an added one is kept.
        """
        ns = self._ns(namespace)
        rows = [clean_row(n, t, source) for n, t in enumerate(triples)]
        return self._upsert(ns, rows, mode)[0]

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStore("this store was opened read-only (read_only=True): writes and deletes are refused")
        if self.legacy_schema:
            raise InvalidInput(
                "this database has a previous schema (one value per entity and relation, or no index journal) and was "
                "opened with create=False; open it once without create=False to migrate it (lossless), then write"
            )

    def _upsert(
        self, ns: str, rows: list[CleanTriple], mode: WriteMode | None, *, echo: bool = False
    ) -> tuple[WriteStats, list[Any]]:
        """One SQL transaction for all rows (all or nothing, the index changes journalled in it), then the index follows.

        A transaction that lost a race with another writer (a busy database, the same key
        inserted first) is planned and run again, so an upsert never fails for it. ``echo``:
        also return each row as stored, read in the same transaction (a later writer may
        replace it the moment it commits).
        """
        self._writable()
        if mode is not None and mode not in WRITE_MODES:
            raise InvalidInput(f"mode must be 'add', 'replace' or None, got {mode!r}")

        def write(conn: Any) -> _WritePlan:
            plan = _WritePlan(ns, utcnow(), journal_adds=self._journalled)
            multi = set() if mode is not None else set(
                conn.execute(select(RELATIONS.c.relation_key).where(RELATIONS.c.namespace == ns)).scalars()
            )
            todo, plan.duplicates = split_batch(rows, mode, multi)
            for chunk in _chunks(todo, SQL_CHUNK):
                pairs = {r.pair for r, _ in chunk}
                found = conn.execute(_BY_ENTITIES, {"ns": ns, "eks": list({ek for ek, _ in pairs})})
                existing: dict[tuple[str, str], list[Any]] = {}
                for e in found:
                    if (e.entity_key, e.relation_key) in pairs:
                        existing.setdefault((e.entity_key, e.relation_key), []).append(e)
                for r, add in chunk:
                    (plan.add if add else plan.replace)(r, existing.setdefault(r.pair, []))
                plan.flush(conn, self._audit_key(conn))
            if plan.inserted or plan.dropped:
                _bump_generation(conn)
            if echo:
                plan.echo = [conn.execute(select(FACTS).where(
                    FACTS.c.namespace == ns, FACTS.c.entity_key == r.entity_key, FACTS.c.relation_key == r.relation_key,
                    FACTS.c.value == r.value).order_by(FACTS.c.id)).first() for r in rows]
            return plan

        try:
            plan = retrying(self.engine, write)
        except IntegrityError as exc:
            raise InvalidInput(f"the write kept colliding with concurrent writers; nothing was written ({exc.orig})") from exc
        if self._journalled:
            self.apply_index_ops()
        elif self.index is not None:  # a private in-memory index follows this handle's own writes only
            if plan.new_keys:
                self.index.add(ns, plan.new_keys)
            if plan.dropped:
                self.index.delete(ns, [r.id for r in plan.dropped])
        return WriteStats(len(plan.new_keys), plan.updated, plan.unchanged, plan.duplicates, len(plan.dropped)), plan.echo

    @property
    def _journalled(self) -> bool:
        """Whether index changes go through the journal: for an index other processes share (a directory, a server).

        A private in-memory index is this process's alone, so another process must never apply
        (and clear) journal entries into it; its handle updates it directly. Deletions are
        journalled whatever the index, for the shared index a later open will find.
        """
        return self.index is not None and self.index.shared

    def _read_key(self, conn: Any) -> bytes | None:
        """The audit key without creating one (a reader's connection must not write)."""
        stored = conn.execute(select(META.c.value).where(META.c.name == AUDIT_KEY)).scalar()
        if stored is not None:
            self._key = bytes.fromhex(stored)
        return self._key

    def _audit_key(self, conn: Any) -> bytes:
        if self._key is None:
            stored = conn.execute(select(META.c.value).where(META.c.name == AUDIT_KEY)).scalar()
            if stored is None:  # a database made before keyed digests: make its key now (cached once committed and read)
                stored = secrets.token_hex(32)
                conn.execute(insert(META).values(name=AUDIT_KEY, value=stored))
                return bytes.fromhex(stored)
            self._key = bytes.fromhex(stored)
        return self._key

    # ------------------------------------------------------------------ index journal

    def apply_index_ops(self) -> int:
        """Apply the journalled index changes (this process's and any a crash left) and clear them; returns how many.

        Per fact id the last operation wins; an add is applied only while SQL still has the row
        under that key, so replaying an old journal never resurrects a deleted key.
        """
        if not self._journalled:
            return 0
        assert self.index is not None
        applied, last = 0, 0
        while True:
            with self.index.session(write=True):  # a local directory stays locked from reading the journal to clearing it
                with self.engine.connect() as conn:
                    ops = conn.execute(select(OUTBOX).where(OUTBOX.c.id > last).order_by(OUTBOX.c.id).limit(INDEX_PAGE)).all()
                    final = {(op.namespace, op.fact_id): op for op in ops}
                    adds = [op.fact_id for op in final.values() if op.key is not None]
                    live = {r.id: r for r in conn.execute(_BY_IDS, {"ids": adds})} if adds else {}
                if not ops:
                    return applied
                if os.environ.get(TEST_PAUSE_ENV):
                    time.sleep(float(os.environ[TEST_PAUSE_ENV]))
                by_ns: dict[str, tuple[list[tuple[int, str]], list[int]]] = {}
                for op in final.values():
                    to_add, to_delete = by_ns.setdefault(op.namespace, ([], []))
                    row = live.get(op.fact_id)
                    if op.key is None:
                        to_delete.append(op.fact_id)
                    elif row is not None and row.namespace == op.namespace and row.key == op.key:
                        to_add.append((op.fact_id, op.key))
                for ns, (to_add, to_delete) in by_ns.items():
                    if to_delete:
                        self.index.delete(ns, to_delete)
                    if to_add:
                        self.index.add(ns, to_add)
                ids = [op.id for op in ops]
                for chunk in _chunks(ids, SQL_CHUNK):
                    retrying(self.engine, lambda conn, chunk=chunk: conn.execute(delete(OUTBOX).where(OUTBOX.c.id.in_(chunk))))
            applied, last = applied + len(ops), ops[-1].id

    def pending_index_ops(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(OUTBOX)).scalar_one()

    def check_index(self, *, namespace: str | None = None, repair: bool = False) -> list[dict[str, Any]]:
        """Compare SQL and the index per namespace (counts and ids, both directions); ``repair`` makes them agree.

        Repair applies pending journal entries, embeds rows the index lacks and removes index
        entries without a row. Each namespace's report: ``facts``, ``indexed``, ``missing``
        (ids in SQL, not in the index), ``stale`` (in the index, not in SQL), ``pending``
        journal entries, and after a repair what was ``added`` and ``removed``.
        """
        if self.index is None:
            raise InvalidInput("this store was opened without an index (index=False, or create=False with none on disk)")
        pending = self.pending_index_ops()
        if repair:
            self._writable()
            self.apply_index_ops()
        targets = [self._ns(namespace)] if namespace is not None else sorted(set(self.namespaces()) | set(self.index.namespaces()))
        report = []
        for ns in targets:
            with self.engine.connect() as conn:
                keys = dict(conn.execute(select(FACTS.c.id, FACTS.c.key).where(FACTS.c.namespace == ns)).tuples().all())
            indexed = self.index.ids(ns)
            missing, stale = sorted(set(keys) - indexed), sorted(indexed - set(keys))
            entry = dict(namespace=ns, facts=len(keys), indexed=len(indexed), missing=len(missing), stale=len(stale),
                         pending=pending)
            if repair:
                if stale:
                    self.index.delete(ns, stale)
                entry.update(added=self.index.add(ns, [(i, keys[i]) for i in missing]), removed=len(stale))
            report.append(entry)
        return report

    # ------------------------------------------------------------------ delete

    def delete(
        self,
        *,
        fact_id: int | None = None,
        entity: str | None = None,
        relation: str | None = None,
        namespace: str | None = None,
    ) -> ForgetReceipt:
        """Forget by id (one value), by entity, or by entity + relation (all its values); nothing there is an empty receipt."""
        self._writable()
        ns = self._ns(namespace)
        condition, selector = self._selector(fact_id, entity, relation)
        now = utcnow()

        def forget(conn: Any) -> list[Any]:
            rows = conn.execute(select(*_ROW, FACTS.c.entity_key, FACTS.c.relation_key)
                                .where(FACTS.c.namespace == ns, condition).order_by(FACTS.c.id)).all()
            if rows:
                _forget_rows(conn, self._audit_key(conn), ns, rows, now)
            return rows

        rows = retrying(self.engine, forget)
        ids = [r.id for r in rows]
        index_removed: list[int] = []
        index_remaining: int | None = None
        if self.index is not None:
            index_removed = self.index.present(ns, ids)
            if self._journalled:
                self.apply_index_ops()
            else:
                self.index.delete(ns, ids)
            index_remaining = len(self.index.present(ns, ids))
            if rows:
                self.index.compact(ids)
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
            verified=sql_remaining == 0 and not index_remaining and not any(gone & set(r.fact_ids) for r in relookups),
            disk=self._scan_disk(ns, rows) if rows else None,
            at=now,
        )

    def files(self) -> list[Path]:
        """The files holding this store's content: the SQLite file and its journals, and a local index's files."""
        found: list[Path] = []
        db = sqlite_file(self.engine)
        if db is not None:
            found += [p for p in (db, *(db.with_name(db.name + s) for s in ("-wal", "-journal"))) if p.is_file()]
        if self.index is not None and self.index.local:
            found += sorted(p for p in Path(self.index.location).rglob("*") if p.is_file())
        return found

    def _scan_disk(self, ns: str, rows: Sequence[Any]) -> DiskScan | None:
        """Search the store's files for the forgotten values, entity names and keys (see :class:`DiskScan`)."""
        files = self.files()
        if not files:
            return None
        if self.engine.url.get_backend_name() == "sqlite":
            with self.engine.connect() as conn:  # move the WAL's frames (old page images included) into the zeroed file
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        wanted = {t for r in rows for t in (r.value, r.entity, r.key, r.entity_key)}
        with self.engine.connect() as conn:
            held = set(conn.execute(select(FACTS.c.value).where(FACTS.c.namespace == ns, FACTS.c.value.in_(wanted))).scalars())
            held |= set(conn.execute(select(FACTS.c.entity).where(FACTS.c.namespace == ns, FACTS.c.entity.in_(wanted))).scalars())
            held |= set(conn.execute(select(FACTS.c.entity_key).where(FACTS.c.namespace == ns,
                                                                     FACTS.c.entity_key.in_(wanted))).scalars())
        too_short = sorted(t for t in wanted - held if len(t.encode("utf-8")) < SCAN_MIN_BYTES)
        needles = sorted(wanted - held - set(too_short), key=len, reverse=True)
        found: dict[str, list[str]] = {}
        size = 0
        if needles:
            pattern = re.compile(b"|".join(re.escape(n.encode("utf-8")) for n in needles))
            for path in files:
                data = path.read_bytes()
                size += len(data)
                for hit in {m.group().decode("utf-8") for m in pattern.finditer(data)}:
                    found.setdefault(hit, []).append(str(path))
        return DiskScan(files=len(files), bytes=size, found=found, held=sorted(held), too_short=too_short)

    @staticmethod
    def _selector(fact_id: int | None, entity: str | None, relation: str | None) -> tuple[Any, dict[str, int | str]]:
        """The WHERE clause of a delete (see :func:`~tools.schema.clean_selector`)."""
        selector = clean_selector(fact_id, entity, relation)
        if "fact_id" in selector:
            return FACTS.c.id == selector["fact_id"], selector
        condition = FACTS.c.entity_key == normalise_text(str(selector["entity"]))
        if "relation" in selector:
            condition = condition & (FACTS.c.relation_key == normalise_text(str(selector["relation"])))
        return condition, selector

    # ------------------------------------------------------------------ index upkeep

    def rebuild_index(
        self, namespace: str | None = None, *, workers: int = 1, progress: Callable[[int], None] | None = None
    ) -> dict[str, int]:
        """Re-embed the index from the SQL rows: of one namespace, or of every namespace either side knows.

        Each namespace is built beside its live collection and swapped in; a build that was
        killed continues where it stopped (see :meth:`~tools.index.SemanticIndex.rebuild`).
        Lookups go on meanwhile: the entity policy never needs the index, the published one
        reads the old collection (or, on a first build, answers exact pairs and says
        ``index_building`` for the rest). ``workers``: embedding processes (each one torch thread
        and its own MiniLM; 1 embeds in this process); ``progress`` gets the number of keys of each step.
        """
        if self.index is None:
            raise InvalidInput("this store was opened without an index (index=False, or create=False with none on disk)")
        targets = [self._ns(namespace)] if namespace is not None else sorted(set(self.namespaces()) | set(self.index.namespaces()))
        done = {ns: self.index.rebuild(ns, lambda after, ns=ns: self._keys_after(ns, after),
                                       still_stored=lambda ids, ns=ns: self._stored_ids(ns, ids), workers=workers,
                                       progress=progress) for ns in targets}
        self.index.compact([])  # the replaced collections' files
        self.apply_index_ops()  # changes journalled during the build (applied to both collections, or pending)
        return done

    def _keys_after(self, ns: str, after: int, page: int = 10_000) -> Iterator[tuple[int, str]]:
        """``(id, key)`` of the namespace's rows with ids above ``after``, in id order, a page per query."""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(FACTS.c.id, FACTS.c.key).where(FACTS.c.namespace == ns, FACTS.c.id > after)
                                    .order_by(FACTS.c.id).limit(page)).all()
            if not rows:
                return
            yield from ((r.id, r.key) for r in rows)
            after = rows[-1].id

    def _stored_ids(self, ns: str, ids: list[int]) -> set[int]:
        """Which of ``ids`` the namespace still has."""
        with self.engine.connect() as conn:
            return {i for chunk in _chunks(ids, SQL_CHUNK) for i in conn.execute(
                select(FACTS.c.id).where(FACTS.c.namespace == ns, FACTS.c.id.in_(chunk))).scalars()}

    def index_building(self, *, namespace: str | None = None) -> int | None:
        """The last fact id an unfinished index build of the namespace embedded, or None when none is under way."""
        return None if self.index is None else self.index.building(self._ns(namespace))

    def describe(self) -> dict[str, Any]:
        """Where the store lives (password hidden) and how it looks facts up."""
        return {
            "db": self.engine.url.render_as_string(hide_password=True),
            "index": None if self.index is None else self.index.location,
            "namespace": self.namespace,
            "policy": self.policy.name,
            "entity_threshold": self.policy.entity_threshold,
            "entity_max_edits": self.policy.entity_max_edits,
            "relation_threshold": self.policy.relation_threshold,
            "relation_margin": self.policy.relation_margin,
            "relation_same": self.policy.relation_same,
            "relation_match": "semantic" if self.relation_vectors is not None else "exact",
            "threshold": self.policy.threshold,
            "fallback": self.policy.fallback,
            "top_k": self.top_k,
            "legacy_schema": self.legacy_schema,
            "read_only": self.read_only,
        }

    def close(self) -> None:
        self.engine.dispose()


# --------------------------------------------------------------------------- read and write helpers


def _miss(query: dict[str, Any], rule: str, **scores: float | None) -> LookupResult:
    return LookupResult(found=False, value=UNKNOWN, match="miss", rule=rule, **query, **scores)


def _found(rows: Sequence[Any], query: dict[str, Any], match: str, rule: str, score: float, **scores: float | None) -> LookupResult:
    """A hit on every value of one (entity, relation), in id order; ``entity``/``relation`` are the stored spelling."""
    first = rows[0]
    records = [_record(r) for r in rows]
    return LookupResult(
        found=True,
        value=VALUE_SEPARATOR.join(r.value for r in records),
        fact_id=first.id,
        score=round(score, 6),
        match=match,
        source=first.source,
        records=records,
        rule=rule,
        **{**query, "entity": first.entity, "relation": first.relation},
        **scores,
    )


def _audit(at: Any, action: str, ns: str, row: Any, *, old_value: str | None = None, new_value: str | None = None,
           fact_id: int | None = None) -> dict[str, Any]:
    """A kb_audit row for ``row`` (a stored row, or a CleanTriple with ``fact_id`` given)."""
    return dict(at=at, action=action, namespace=ns, fact_id=row.id if fact_id is None else fact_id, entity=row.entity,
                relation=row.relation, old_value=old_value, new_value=new_value, source=row.source)


def _forget_rows(conn: Any, key: bytes, ns: str, rows: Sequence[Any], now: Any) -> None:
    """Delete ``rows`` and keep no content of them: the audit holds keyed digests, entities left without rows
    become tombstones, the index removal is journalled."""
    ids = [r.id for r in rows]
    for chunk in _chunks(ids, SQL_CHUNK):
        conn.execute(delete(FACTS).where(FACTS.c.namespace == ns, FACTS.c.id.in_(chunk)))
        conn.execute(delete(OUTBOX).where(OUTBOX.c.namespace == ns, OUTBOX.c.fact_id.in_(chunk)))  # pending adds hold keys
    scrub = update(AUDIT).where(AUDIT.c.namespace == ns, AUDIT.c.fact_id == bindparam("b_id")).values(
        entity=bindparam("b_entity"), relation=bindparam("b_relation"), old_value=None, new_value=None)
    digests = [dict(b_id=r.id, b_entity=digest(key, r.entity_key), b_relation=digest(key, r.relation_key)) for r in rows]
    conn.execute(scrub, digests)
    insert_rows(conn, AUDIT, [
        dict(at=now, action="delete", namespace=ns, fact_id=r.id, entity=d["b_entity"], relation=d["b_relation"],
             old_value=digest(key, r.entity_key, r.relation_key, r.value), new_value=None, source=r.source)
        for r, d in zip(rows, digests, strict=True)
    ])
    insert_rows(conn, OUTBOX, [dict(namespace=ns, fact_id=i, key=None) for i in ids])
    entities = list({r.entity_key for r in rows})
    still = set(conn.execute(select(FACTS.c.entity_key).where(FACTS.c.namespace == ns, FACTS.c.entity_key.in_(entities))).scalars())
    for ek in set(entities) - still:
        stones = _tombstones(key, ns, ek)
        have = set(conn.execute(select(TOMBSTONES.c.variant_digest).where(
            TOMBSTONES.c.namespace == ns, TOMBSTONES.c.entity_digest == stones[0]["entity_digest"])).scalars())
        fresh = [t for t in stones if t["variant_digest"] not in have]
        if fresh:
            conn.execute(insert(TOMBSTONES), fresh)
    _bump_generation(conn)


def digest(key: bytes, *parts: str) -> str:
    """A keyed digest of ``parts``: proves which fact was meant to whoever holds the key, holds none of its text."""
    return DIGEST_PREFIX + hmac.new(key, "\x1f".join(parts).encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def one_deletion_variants(name: str) -> set[str]:
    """``name`` and every string one character shorter: two names within one edit (insert, delete, replace,
    neighbours swapped) always share one of these."""
    return {name} | {name[:i] + name[i + 1 :] for i in range(len(name))}


def _tombstones(key: bytes, ns: str, entity_key: str) -> list[dict[str, str]]:
    entity = digest(key, entity_key)
    return [dict(namespace=ns, entity_digest=entity, variant_digest=digest(key, v)) for v in one_deletion_variants(entity_key)]


def insert_rows(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) in the caller's transaction; on PostgreSQL by ``COPY``.

    psycopg turns a multi-row INSERT into SQL text in Python, which costs more than the
    server's work; ``COPY`` streams the values as they are (measured in docs/knowledge.md).
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), rows)  # executemany: one prepared statement, many rows
        return
    import psycopg

    columns = list(rows[0])
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    try:
        with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
    except psycopg.Error as exc:  # as SQLAlchemy's error, so a lost race (a unique key taken) is retried
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


def insert_facts(conn: Any, values: list[dict[str, Any]]) -> list[int]:
    """Insert fact rows; returns their ids in the order given (ascending, so file order stays id order).

    PostgreSQL: the ids are drawn from the table's sequence first, then the rows copied with
    them (``COPY`` returns nothing). Elsewhere: a multi-row INSERT ... RETURNING.
    """
    if conn.dialect.name != "postgresql":
        return list(conn.execute(insert(FACTS).returning(FACTS.c.id, sort_by_parameter_order=True), values).scalars())
    ids = sorted(conn.execute(text(f"SELECT nextval(pg_get_serial_sequence('{FACTS.name}', 'id')) "
                                   "FROM generate_series(1, :n)"), {"n": len(values)}).scalars())
    insert_rows(conn, FACTS, [{"id": i, **v} for i, v in zip(ids, values, strict=True)])
    return ids


class _WritePlan:
    """The statements of one write transaction, planned per pair and flushed per chunk."""

    def __init__(self, ns: str, now: Any, *, journal_adds: bool) -> None:
        self.ns, self.now = ns, now
        self.journal_adds = journal_adds  # only a store with an index journals additions (deletions always)
        self.inserts: list[tuple[CleanTriple, str]] = []  # (row, value_slot)
        self.updates: list[tuple[Any, CleanTriple]] = []  # (stored row, new value) of single-valued pairs
        self.slot_fixes: list[int] = []  # rows kept by a replace that were one value of several
        self.deletes: list[Any] = []
        self.new_keys: list[tuple[int, str]] = []
        self.dropped: list[Any] = []
        self.echo: list[Any] = []  # the rows as stored, when the caller asked for them
        self.updated = self.unchanged = self.duplicates = 0

    @property
    def inserted(self) -> int:
        return len(self.new_keys)

    def add(self, row: CleanTriple, stored: list[Any]) -> None:
        """Keep ``row`` beside the pair's other values (the same value again changes nothing)."""
        if any(s.value == row.value for s in stored):
            self.unchanged += 1
        else:
            self.inserts.append((row, value_slot(row.value)))

    def replace(self, row: CleanTriple, stored: list[Any]) -> None:
        """End with ``row`` as the pair's one value: a row holding it is kept (else the oldest is updated), the rest go."""
        if not stored:
            self.inserts.append((row, SINGLE_SLOT))
            return
        keep = next((s for s in stored if s.value == row.value), stored[0])
        self.deletes.extend(s for s in stored if s is not keep)
        if keep.value == row.value:
            self.unchanged += 1
            if keep.value_slot != SINGLE_SLOT:
                self.slot_fixes.append(keep.id)
        else:
            self.updates.append((keep, row))

    def flush(self, conn: Any, key: bytes) -> None:
        """Deletes first (they free the single-value slot a kept row moves into), then updates, then inserts.

        The index changes go to the journal in the same transaction; an inserted entity is no
        longer a tombstone.
        """
        audit: list[dict[str, Any]] = []
        journal: list[dict[str, Any]] = [dict(namespace=self.ns, fact_id=d.id, key=None) for d in self.deletes]
        if self.deletes:
            for chunk in _chunks([d.id for d in self.deletes], SQL_CHUNK):
                conn.execute(delete(FACTS).where(FACTS.c.id.in_(chunk)))
            audit += [_audit(self.now, "delete", self.ns, d, old_value=d.value) for d in self.deletes]
            self.dropped += self.deletes
        if self.slot_fixes:
            conn.execute(update(FACTS).where(FACTS.c.id.in_(self.slot_fixes)).values(value_slot=SINGLE_SLOT))
        if self.updates:
            stmt = update(FACTS).where(FACTS.c.id == bindparam("b_id")).values(
                value=bindparam("b_value"), source=bindparam("b_source"), value_slot=SINGLE_SLOT, updated_at=self.now
            )
            conn.execute(stmt, [dict(b_id=old.id, b_value=c.value, b_source=c.source) for old, c in self.updates])
            audit += [_audit(self.now, "update", self.ns, c, fact_id=old.id, old_value=old.value, new_value=c.value)
                      for old, c in self.updates]
            self.updated += len(self.updates)
        if self.inserts:
            values = [
                dict(namespace=self.ns, entity=c.entity, relation=c.relation, value=c.value, key=c.key, entity_key=c.entity_key,
                     relation_key=c.relation_key, value_slot=slot, source=c.source, created_at=self.now, updated_at=self.now)
                for c, slot in self.inserts
            ]
            ids = insert_facts(conn, values)
            new_keys = [(i, c.key) for i, (c, _) in zip(ids, self.inserts, strict=True)]
            self.new_keys += new_keys
            audit += [_audit(self.now, "insert", self.ns, c, fact_id=i, new_value=c.value)
                      for i, (c, _) in zip(ids, self.inserts, strict=True)]
            if self.journal_adds:
                journal += [dict(namespace=self.ns, fact_id=i, key=k) for i, k in new_keys]
            revived = list({digest(key, c.entity_key) for c, _ in self.inserts})
            for chunk in _chunks(revived, SQL_CHUNK):
                conn.execute(delete(TOMBSTONES).where(TOMBSTONES.c.namespace == self.ns, TOMBSTONES.c.entity_digest.in_(chunk)))
        insert_rows(conn, AUDIT, audit)
        insert_rows(conn, OUTBOX, journal)
        self.inserts, self.updates, self.slot_fixes, self.deletes = [], [], [], []


# --------------------------------------------------------------------------- opening


SQLITE_BUSY_S = 30.0  # how long a SQLite writer waits for another one before a retry
WRITE_RETRIES = 6  # attempts of a write transaction that lost a race (locked database, concurrent insert)


def make_engine(db: str | Path | None, *, create: bool = True, read_only: bool = False) -> Engine:
    """None: a private in-memory SQLite; a path: a SQLite file (parents created unless ``create=False``); a URL: that database.

    A new SQLite file is made with its tables in a temporary file beside it and renamed into
    place, so no process ever sees (and no kill leaves) a database file without its tables.
    ``read_only`` (with ``create=False``): SQLite opens the file ``mode=ro``, or ``immutable``
    when its directory cannot be written (WAL's side files cannot be made there).
    """
    if db is None:
        engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
        _sqlite_transactions(engine, wal=False)
        return engine
    text_ = str(db)
    if text_ in ("sqlite://", "sqlite:///:memory:"):
        return make_engine(None)
    if text_.startswith("sqlite:///"):
        text_ = text_.removeprefix("sqlite:///")  # a file: made, opened and guarded as a bare path is
    if "://" not in text_:
        path = Path(text_).expanduser().resolve()
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_file() or path.stat().st_size == 0:
                _create_sqlite_file(path)
        elif not path.is_file():
            raise FileNotFoundError(f"no knowledge base at {path} (opened with create=False, which never creates one)")
        if read_only:
            mode = "mode=ro" if os.access(path.parent, os.W_OK) else "immutable=1"
            engine = create_engine(f"sqlite:///file:{path}?{mode}&uri=true", connect_args={"timeout": SQLITE_BUSY_S})
            _sqlite_transactions(engine, wal=False)
            return engine
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": SQLITE_BUSY_S})
        # WAL is a persistent property of the file: a create=False open leaves the file as it is
        _sqlite_transactions(engine, wal=create)
        return engine
    for plain in ("postgresql://", "postgres://"):
        if text_.startswith(plain):
            text_ = "postgresql+psycopg://" + text_[len(plain) :]  # psycopg 3 is the driver we ship
    # psycopg prepares a statement at its fifth use, and PostgreSQL may then keep one generic plan for it: made
    # while a namespace was empty, a write's entity lookup scanned the whole namespace (3 s per chunk at 300k
    # rows; the 1M import slowed to 670 rows/s), and without autovacuum nothing ever re-plans it. Custom plans
    # see the actual keys, for a fraction of a millisecond of planning.
    return create_engine(text_, pool_pre_ping=True, connect_args={"options": "-c plan_cache_mode=force_custom_plan"})


def _create_sqlite_file(path: Path) -> None:
    """Make the database with every table in ``.<name>.<pid>.tmp`` beside ``path``, then move it into place.

    A file already there (another process won the race) is kept; an empty one (left by an
    older version killed at its first open) is replaced.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    engine = create_engine(f"sqlite:///{tmp}")
    _sqlite_transactions(engine, wal=True)
    try:
        with write_transaction(engine) as conn:
            _create_schema(conn)
    finally:
        engine.dispose()  # the last connection closing checkpoints and removes the temporary WAL
    try:
        if path.exists():
            if path.stat().st_size == 0:
                os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if another process linked its file first: theirs stays
    except FileExistsError:
        pass
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)


def _sqlite_transactions(engine: Engine, *, wal: bool) -> None:
    """SQLite connections: transactions begun by SQLAlchemy (``BEGIN IMMEDIATE`` for writes), deleted bytes zeroed.

    WAL lets readers run beside a writer; NORMAL sync is safe under WAL and much faster for bulk
    writes. ``BEGIN IMMEDIATE`` takes the write lock at the start, so a writer waits (busy
    timeout) instead of failing half-way with ``database is locked``. ``secure_delete``
    overwrites deleted rows, so forgotten content does not linger in free pages.
    """

    def connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own implicit BEGIN would defeat BEGIN IMMEDIATE
        cur = dbapi_conn.cursor()
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    def begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")

    event.listen(engine, "connect", connect)
    event.listen(engine, "begin", begin)


_IMMEDIATE = "lmlm_write"


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Any]:
    """One write transaction (on SQLite it holds the write lock from its first statement)."""
    with engine.connect() as conn:
        conn.execution_options(**{_IMMEDIATE: True})
        with conn.begin():
            yield conn


def _lost_race(exc: DBAPIError) -> bool:
    """A failure that retrying the whole transaction can cure: a busy database, a deadlock, a concurrent insert."""
    if isinstance(exc, IntegrityError):
        return True
    text_ = str(exc.orig).lower()
    return any(s in text_ for s in ("locked", "busy", "deadlock", "could not serialize", "already exists"))


def retrying(engine: Engine, work: Callable[[Any], R]) -> R:
    """``work(conn)`` in a write transaction, run again (with backoff) when it lost a race with another writer.

    The work is planned inside the transaction, so a retry sees the other writer's rows: an
    upsert that raced an insert of the same key becomes an update.
    """
    for attempt in range(WRITE_RETRIES):
        try:
            with write_transaction(engine) as conn:
                return work(conn)
        except DBAPIError as exc:
            if attempt == WRITE_RETRIES - 1 or not _lost_race(exc):
                raise
            time.sleep(0.02 * 2**attempt * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


class _Prepared(NamedTuple):
    store_id: str | None
    legacy_schema: bool


def _prepare(engine: Engine, *, create: bool) -> _Prepared:
    """Create (or, with ``create=False``, only inspect) the tables; migrate a previous-schema database when allowed."""
    if not create:
        tables = set(inspect(engine).get_table_names())
        if FACTS.name not in tables:
            raise InvalidInput(f"{engine.url.render_as_string(hide_password=True)} holds no knowledge base (no {FACTS.name} "
                               "table; opened with create=False, which never creates one)")
        # A database from before value slots, or before the index journal and tombstones, is read as it is.
        legacy = _missing_columns(engine) == {"value_slot"} or not {OUTBOX.name, TOMBSTONES.name} <= tables
        _check_columns(engine, allow={"value_slot"})
        found = None
        if META.name in tables:
            with engine.connect() as conn:
                found = conn.execute(select(META.c.value).where(META.c.name == "store_id")).scalar()
        return _Prepared(found, legacy)
    retrying(engine, _create_schema)
    if _missing_columns(engine) == {"value_slot"}:
        _migrate_to_value_slots(engine)
    _check_columns(engine)
    with engine.connect() as conn:
        return _Prepared(conn.execute(select(META.c.value).where(META.c.name == "store_id")).scalar_one(), False)


def _create_schema(conn: Any) -> None:
    """Every table and the store's own meta rows, in the caller's (one) transaction."""
    Fact.metadata.create_all(conn, tables=TABLES)
    for name, make in (("store_id", lambda: uuid.uuid4().hex), (GENERATION, lambda: uuid.uuid4().hex),
                       (AUDIT_KEY, lambda: secrets.token_hex(32))):
        if conn.execute(select(META.c.value).where(META.c.name == name)).scalar() is None:
            conn.execute(insert(META).values(name=name, value=make()))


def _missing_columns(engine: Engine) -> set[str]:
    return {c.name for c in FACTS.columns} - {c["name"] for c in inspect(engine).get_columns(FACTS.name)}


def _check_columns(engine: Engine, allow: set[str] = frozenset()) -> None:
    """Refuse a database whose tables predate the current schema (beyond what migrates), instead of failing later."""
    inspector = inspect(engine)
    for table in (FACTS, AUDIT):
        missing = {c.name for c in table.columns} - {c["name"] for c in inspector.get_columns(table.name)} - allow
        if missing:
            raise InvalidInput(
                f"{table.name} lacks column(s) {', '.join(sorted(missing))}: the database was made by an older "
                "version; export it with that version or re-import its source into a new database"
            )


_V1_COLUMNS = "id, namespace, entity, relation, value, key, entity_key, relation_key, source, created_at, updated_at"


def _migrate_to_value_slots(engine: Engine) -> None:
    """Migrate the previous schema (one row per entity and relation) in place; lossless, in one transaction.

    Every existing row becomes a single-valued row (``value_slot`` = ``""``) with its id, and the
    unique key (namespace, entity, relation) becomes (namespace, entity, relation, value_slot).
    SQLite cannot drop a table constraint, so the table is rebuilt (ids and the AUTOINCREMENT
    high-water mark kept); PostgreSQL alters it.
    """
    backend = engine.url.get_backend_name()
    try:
        with engine.begin() as conn:
            if backend == "sqlite":
                if "value_slot" in {r[1] for r in conn.execute(text("PRAGMA table_info(kb_fact)"))}:
                    return  # another process migrated it since we looked
                seq = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'kb_fact'")).scalar()
                conn.execute(text("ALTER TABLE kb_fact RENAME TO kb_fact_v1"))
                FACTS.create(conn)
                conn.execute(text(f"INSERT INTO kb_fact ({_V1_COLUMNS}, value_slot) SELECT {_V1_COLUMNS}, '' FROM kb_fact_v1"))
                conn.execute(text("DROP TABLE kb_fact_v1"))
                if seq is not None:
                    conn.execute(text("UPDATE sqlite_sequence SET seq = max(seq, :seq) WHERE name = 'kb_fact'"), {"seq": seq})
            elif backend == "postgresql":
                conn.execute(text("ALTER TABLE kb_fact ADD COLUMN value_slot TEXT NOT NULL DEFAULT ''"))
                conn.execute(text("ALTER TABLE kb_fact DROP CONSTRAINT IF EXISTS uq_kb_fact_namespace_entity_relation"))
                conn.execute(text("ALTER TABLE kb_fact ADD CONSTRAINT uq_kb_fact_namespace_entity_relation_slot "
                                  "UNIQUE (namespace, entity_key, relation_key, value_slot)"))
            else:
                raise InvalidInput(f"kb_fact has the previous schema and migrating {backend} is not supported; "
                                   "export it with the previous version and re-import it")
    except DBAPIError:
        if _missing_columns(engine):  # not another process migrating at the same moment: a real failure
            raise


def default_index_location(db: str | Path | None, engine: Engine) -> str:
    """In memory beside an in-memory database, ``<name>.chroma/`` beside a SQLite file, ``runs/kb-index`` otherwise."""
    from tools.index import EPHEMERAL

    path = sqlite_file(engine)
    if db is None or (path is None and engine.url.get_backend_name() == "sqlite"):
        return EPHEMERAL
    if path is not None:
        return str(path.with_name(path.stem + ".chroma"))
    return str(DEFAULT_SERVER_INDEX.resolve())


def sqlite_file(engine: Engine) -> Path | None:
    """The file of a SQLite engine (also one opened read-only by URI), else None."""
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database.removeprefix("file:"))


def open_sql_store(
    db: str | Path | None = None,
    *,
    index: str | Path | None | Literal[False] = None,
    namespace: str = "default",
    policy: PolicyName | LookupPolicy = "entity",
    relation_match: Literal["semantic", "exact"] | None = None,
    create: bool = True,
    read_only: bool = False,
    index_wait_s: float | None = None,
    **settings: Any,
) -> SQLKnowledgeStore:
    """Open a SQL knowledge store (creating it, unless ``create=False``); ``tools.open_store`` calls it for
    paths and ``sqlite://`` / ``postgresql://`` URLs.

    ``index``: None for the default location, a directory, ``":memory:"``, an ``http(s)://``
    Chroma server, or False: no index and no embedder (Chroma and the model are never
    imported, which keeps other packages' tests fast); the entity policy then matches
    relations exactly. ``policy``: ``"entity"`` (default) or ``"published"``, or a
    :class:`~tools.lookup.LookupPolicy`; ``settings`` are its fields (``entity_threshold``,
    ``relation_threshold``, ``relation_margin``, ``threshold``, ``fallback``).
    ``relation_match``: how the entity policy matches relations, ``"semantic"`` (MiniLM
    embeddings of relation names; needs only the embedder, not the index) or ``"exact"``;
    None: semantic unless ``index=False``. ``index=False, relation_match="semantic"`` is the
    entity policy at full strength without building or maintaining a Chroma index.

    ``create=False`` (for readers such as an agent) never creates a file, a directory or a
    table: a missing database is a :class:`FileNotFoundError`, a file without the tables an
    :class:`InvalidInput`; a missing local index directory means no index (the published
    policy is then exact-only; the entity policy still matches relations by meaning, its
    vectors live in memory); a previous-schema database is read as it is, and writes to it
    are refused until it is opened once with ``create=True`` (which migrates it).

    ``read_only=True`` (implies ``create=False``) is for readers that must not write: a
    SQLite file is opened ``mode=ro`` (``immutable`` in a directory that cannot be written,
    so a store on read-only media can be read), every write or delete is refused, and a local
    index is used only where its directory can be written (its lock file lives there).

    ``index_wait_s``: how long to wait for another process using the same local index
    directory before :class:`~tools.index.IndexBusy` (default ``tools.index.INDEX_WAIT_S``).
    A writable open (``create=True``) with an index first applies the index changes a
    crashed writer left journalled.
    """
    lookup = make_policy(policy, settings)
    if relation_match not in (None, "semantic", "exact"):
        raise InvalidInput(f"relation_match must be 'semantic', 'exact' or None, got {relation_match!r}")
    semantic_relations = relation_match == "semantic" or (relation_match is None and index is not False)
    create = create and not read_only
    engine = make_engine(db, create=create, read_only=read_only)
    prepared = _prepare(engine, create=create)
    semantic = None
    if index is not False:
        from tools.index import INDEX_WAIT_S, SemanticIndex, is_local_dir

        location = default_index_location(db, engine) if index is None else str(index)
        usable_dir = Path(location).is_dir() and (not read_only or os.access(location, os.W_OK))
        if create or (prepared.store_id is not None and (not is_local_dir(location) or usable_dir)):
            wait_s = INDEX_WAIT_S if index_wait_s is None else index_wait_s
            semantic = SemanticIndex(location, prepared.store_id, wait_s=wait_s)
    store = SQLKnowledgeStore(
        engine, index=semantic, namespace=namespace, policy=lookup, legacy_schema=prepared.legacy_schema,
        relation_vectors=RELATION_VECTORS if semantic_relations else None, read_only=read_only,
    )
    if create:
        store.apply_index_ops()  # what a killed writer journalled but never reached the index
    return store
