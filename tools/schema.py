"""Tables, result models and input rules of the knowledge base.

Every string that reaches the database goes through :func:`clean_triple` (or
:func:`clean_namespace`) first, so a bad write fails before anything is touched
and the rules are the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Column, DateTime, Index, Integer, Text, UniqueConstraint
from sqlmodel import SQLModel
from sqlmodel import Field as SQLField

UNKNOWN = "unknown"
"""The value of a miss: what the published LMLM runtime injects when nothing is found."""

# Entity and relation are part of the unique (namespace, entity, relation) index: PostgreSQL caps an
# index row near 2,700 bytes, so 256 + 256 characters (up to 4 bytes each) plus the
# namespace stay below it. Values are not indexed and may be long, but bounded.
MAX_FIELD_CHARS = 256
MAX_VALUE_CHARS = 16_384
MAX_SOURCE_CHARS = 1_024
NAMESPACE_RE = re.compile(r"[A-Za-z0-9._:@/-]{1,64}")
# A field holding a call token would corrupt the text a value is injected into.
_CALL_TOKEN_RE = re.compile(r"<\|db_\w+\|>")

MatchKind = Literal["exact", "semantic", "fallback", "miss", "error"]
WriteMode = Literal["add", "replace"]
VALUE_SEPARATOR = ", "
"""How the values of a multi-valued (entity, relation) are joined in ``LookupResult.value`` (the text spliced in)."""
SINGLE_SLOT = ""
"""``Fact.value_slot`` of a single-valued row: at most one per (namespace, entity, relation)."""


class InvalidInput(ValueError):
    """A write or delete was refused before anything was stored or removed."""


def normalise_text(text: str) -> str:
    """The published key normalisation (lower-case, ``_`` as space) plus NFC and collapsed whitespace."""
    return " ".join(unicodedata.normalize("NFC", text).lower().replace("_", " ").split())


def normalise_key(entity: str, relation: str) -> str:
    """The lookup key ``"{entity} {relation}"``, normalised: what exact match compares and the index embeds."""
    return normalise_text(f"{entity} {relation}")


def query_keys(entity: object, relation: object) -> tuple[str, str]:
    """The normalised entity and relation of a read; any strings are a query (perhaps a miss), other types are refused."""
    if not isinstance(entity, str) or not isinstance(relation, str):
        raise InvalidInput("entity and relation must be strings")
    return normalise_text(entity), normalise_text(relation)


def storable(text: str) -> bool:
    """Whether both backends can hold ``text``: PostgreSQL refuses NUL, UTF-8 refuses lone surrogates."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_field(name: str, text: object, limit: int) -> str:
    """Stripped ``text`` or an :class:`InvalidInput` naming the field and the rule it broke."""
    if not isinstance(text, str):
        raise InvalidInput(f"{name} must be a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise InvalidInput(f"{name} must not be empty or whitespace")
    if len(text) > limit:
        raise InvalidInput(f"{name} is {len(text):,} characters; the limit is {limit:,}")
    if not storable(text):
        raise InvalidInput(f"{name} contains a NUL character or invalid unicode (lone surrogate)")
    if _CALL_TOKEN_RE.search(text):
        raise InvalidInput(f"{name} contains a lookup-call token such as <|db_end|>")
    return text


def clean_namespace(namespace: object) -> str:
    """A valid namespace or :class:`InvalidInput`: namespaces name collections and CLI arguments."""
    if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
        raise InvalidInput(
            f"namespace {namespace!r} must be 1-64 characters of letters, digits and . _ : @ / -"
        )
    return namespace


def value_slot(value: str) -> str:
    """``Fact.value_slot`` of one value of a multi-valued pair: a digest, so the unique index stays short."""
    import hashlib

    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]


class CleanTriple(NamedTuple):
    """A validated write: stripped fields plus the normalised forms they are matched by."""

    entity: str
    relation: str
    value: str
    source: str | None
    key: str  # normalised "entity relation": what the index embeds
    entity_key: str
    relation_key: str

    @property
    def pair(self) -> tuple[str, str]:
        """The identity of a fact within a namespace (the joined key alone would merge "New York" +
        "city population" with "New York City" + "population")."""
        return self.entity_key, self.relation_key


def clean_triple(entity: object, relation: object, value: object, source: object = None) -> CleanTriple:
    """Validate one fact; raises :class:`InvalidInput` with the offending field's name."""
    e = clean_field("entity", entity, MAX_FIELD_CHARS)
    r = clean_field("relation", relation, MAX_FIELD_CHARS)
    v = clean_field("value", value, MAX_VALUE_CHARS)
    s = None if source is None else clean_field("source", source, MAX_SOURCE_CHARS)
    ek, rk = normalise_text(e), normalise_text(r)
    for name, raw, key in (("entity", e, ek), ("relation", r, rk)):
        if not key:  # "_" normalises to nothing: such a row could never be looked up
            raise InvalidInput(f"{name} {raw!r} is only underscores once normalised; lookups could never find it")
    return CleanTriple(e, r, v, s, normalise_key(e, r), ek, rk)


def clean_row(n: int, triple: object, source: str | None) -> CleanTriple:
    """Triple ``#n`` of a bulk write, ``(entity, relation, value[, source])``, validated (its own source wins)."""
    if isinstance(triple, str | bytes) or not isinstance(triple, Sequence) or len(triple) not in (3, 4):
        raise InvalidInput(f"triple #{n}: expected (entity, relation, value[, source]), got {triple!r:.80}")
    row_source = triple[3] if len(triple) == 4 and triple[3] is not None else source
    try:
        return clean_triple(triple[0], triple[1], triple[2], row_source)
    except InvalidInput as exc:
        raise InvalidInput(f"triple #{n}: {exc}") from None


def split_batch(
    rows: Sequence[CleanTriple], mode: WriteMode | None, multi_valued: Collection[str]
) -> tuple[list[tuple[CleanTriple, bool]], int]:
    """A bulk write's rows as ``(row, add)`` per distinct value to add or pair to replace, and how many repeat another.

    ``add`` when ``mode`` is ``"add"`` or (``mode`` None) the relation key is in ``multi_valued``;
    of an added pair every distinct value is kept, of a replaced pair the batch's last value wins.
    """
    added: dict[tuple[str, str, str], CleanTriple] = {}
    replaced: dict[tuple[str, str], CleanTriple] = {}
    for r in rows:
        if mode == "add" or (mode is None and r.relation_key in multi_valued):
            added.setdefault((*r.pair, r.value), r)
        else:
            replaced[r.pair] = r  # the last value of the batch wins
    todo = [(r, True) for r in added.values()] + [(r, False) for r in replaced.values()]
    return todo, len(rows) - len(added) - len(replaced)


def clean_selector(fact_id: int | None, entity: str | None, relation: str | None) -> dict[str, int | str]:
    """What a delete selects, validated: ``{"fact_id"}``, ``{"entity"}`` or ``{"entity", "relation"}``.

    Ambiguous or unbounded requests are refused instead of guessed.
    """
    if fact_id is not None:
        if entity is not None or relation is not None:
            raise InvalidInput("delete takes fact_id alone, or entity with an optional relation")
        if isinstance(fact_id, bool) or not isinstance(fact_id, int) or fact_id < 1:
            raise InvalidInput(f"fact_id must be a positive integer, got {fact_id!r}")
        return {"fact_id": fact_id}
    if entity is None:
        what = "relation alone would delete across every entity" if relation is not None else "nothing was selected"
        raise InvalidInput(f"delete needs fact_id, entity, or entity and relation ({what})")
    selector: dict[str, int | str] = {"entity": clean_field("entity", entity, MAX_FIELD_CHARS)}
    if relation is not None:
        selector["relation"] = clean_field("relation", relation, MAX_FIELD_CHARS)
    return selector


def utcnow() -> datetime:
    """Naive UTC: SQLite drops time zones, so both backends store naive UTC timestamps."""
    return datetime.now(UTC).replace(tzinfo=None)


# --------------------------------------------------------------------------- tables


class Fact(SQLModel, table=True):
    """One (entity, relation, value) row.

    A single-valued (entity, relation) has one row (``value_slot`` = ``""``), which a rewrite
    updates in place; a multi-valued one has a row per distinct value (``value_slot`` = a
    digest of the value), each with its own id. ``key`` (the normalised ``"entity relation"``)
    is what the semantic index embeds.
    """

    __tablename__ = "kb_fact"
    __table_args__ = (
        # Guards against two writers storing the same pair (single-valued) or the same value (multi-valued);
        # its (namespace, entity_key) prefix also serves lookups and delete-by-entity.
        UniqueConstraint(
            "namespace", "entity_key", "relation_key", "value_slot", name="uq_kb_fact_namespace_entity_relation_slot"
        ),
        # Never reuse a deleted id on SQLite: index entries and receipts refer to ids.
        {"sqlite_autoincrement": True},
    )

    id: int | None = SQLField(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    namespace: str = SQLField(sa_column=Column(Text, nullable=False))
    entity: str = SQLField(sa_column=Column(Text, nullable=False))
    relation: str = SQLField(sa_column=Column(Text, nullable=False))
    value: str = SQLField(sa_column=Column(Text, nullable=False))
    key: str = SQLField(sa_column=Column(Text, nullable=False))
    entity_key: str = SQLField(sa_column=Column(Text, nullable=False))
    relation_key: str = SQLField(sa_column=Column(Text, nullable=False))
    # A server default keeps writers of the previous schema (no such column) working on a migrated database.
    value_slot: str = SQLField(default=SINGLE_SLOT, sa_column=Column(Text, nullable=False, server_default=SINGLE_SLOT))
    source: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = SQLField(default_factory=utcnow, sa_column=Column(DateTime, nullable=False))
    updated_at: datetime = SQLField(default_factory=utcnow, sa_column=Column(DateTime, nullable=False))


class RelationDecl(SQLModel, table=True):
    """A relation declared multi-valued in a namespace: writing a new value adds a row instead of replacing."""

    __tablename__ = "kb_relation"

    namespace: str = SQLField(sa_column=Column(Text, primary_key=True))
    relation_key: str = SQLField(sa_column=Column(Text, primary_key=True))
    relation: str = SQLField(sa_column=Column(Text, nullable=False))
    declared_at: datetime = SQLField(default_factory=utcnow, sa_column=Column(DateTime, nullable=False))


AuditAction = Literal["insert", "update", "delete"]


class AuditEntry(SQLModel, table=True):
    """One write or delete, kept after the fact itself is gone (who asserted what, and when it was forgotten).

    A forgotten fact's rows keep no content: entity and relation become keyed digests
    (``hmac:...``, the key in ``kb_meta``), the delete row's ``old_value`` the digest of the
    whole triple, and the values of its earlier rows are erased.
    """

    __tablename__ = "kb_audit"
    __table_args__ = (Index("ix_kb_audit_namespace_at", "namespace", "at"),)

    id: int | None = SQLField(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    at: datetime = SQLField(default_factory=utcnow, sa_column=Column(DateTime, nullable=False))
    action: str = SQLField(sa_column=Column(Text, nullable=False))
    namespace: str = SQLField(sa_column=Column(Text, nullable=False))
    fact_id: int = SQLField(sa_column=Column(Integer, nullable=False))
    entity: str = SQLField(sa_column=Column(Text, nullable=False))
    relation: str = SQLField(sa_column=Column(Text, nullable=False))
    old_value: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    new_value: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    source: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))


class IndexOp(SQLModel, table=True):
    """A pending change of the semantic index, written in the transaction of the row change it follows.

    ``key`` set: add ``fact_id`` under that key; None: remove ``fact_id``. Applied to the index
    after the commit and then deleted; whatever a crash leaves is applied by the next writable
    open (or ``lmlm kb check --repair``), so SQL and the index converge.
    """

    __tablename__ = "kb_outbox"

    id: int | None = SQLField(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    namespace: str = SQLField(sa_column=Column(Text, nullable=False))
    fact_id: int = SQLField(sa_column=Column(Integer, nullable=False))
    key: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))


class Tombstone(SQLModel, table=True):
    """A forgotten entity, kept only as keyed digests: of its name and of each one-letter deletion of it.

    A query whose name (or one of its one-letter deletions) shares a digest is within one edit
    of a forgotten name: it is answered ``entity_forgotten``, never with a neighbour's facts,
    and the forgotten name itself is nowhere on disk.
    """

    __tablename__ = "kb_tombstone"
    __table_args__ = (Index("ix_kb_tombstone_entity", "namespace", "entity_digest"),)

    namespace: str = SQLField(sa_column=Column(Text, primary_key=True))
    variant_digest: str = SQLField(sa_column=Column(Text, primary_key=True))
    entity_digest: str = SQLField(sa_column=Column(Text, primary_key=True))


class StoreMeta(SQLModel, table=True):
    """Key-value facts about the database itself; ``store_id`` scopes its index collections."""

    __tablename__ = "kb_meta"

    name: str = SQLField(sa_column=Column(Text, primary_key=True))
    value: str = SQLField(sa_column=Column(Text, nullable=False))


# --------------------------------------------------------------------------- results


class FactRecord(BaseModel, frozen=True):
    """A detached copy of a row: one value of a lookup, or what a receipt lists after the row is gone."""

    id: int
    entity: str
    relation: str
    value: str
    source: str | None = None


class StoredFact(FactRecord):
    """A fact as a backend holds it: what ``write`` returns and ``iter_facts`` lists (plain data, no database row)."""

    namespace: str
    created_at: datetime | None = Field(None, description="when the fact was first written, naive UTC (None: the backend "
                                        "does not say)")
    updated_at: datetime | None = Field(None, description="when the value was last written, naive UTC (None: the backend "
                                        "does not say)")

    @property
    def key(self) -> str:
        """The normalised ``"entity relation"`` key (what exact match compares and the index embeds)."""
        return normalise_key(self.entity, self.relation)

    def record(self) -> FactRecord:
        """The fact as a lookup or a receipt lists it."""
        return FactRecord(id=self.id, entity=self.entity, relation=self.relation, value=self.value, source=self.source)


class LookupResult(BaseModel):
    """What a lookup returns, with the provenance needed to cite or audit the injected value.

    ``found`` is true when stored values are returned (``match`` ``exact``, ``semantic`` or
    ``fallback``); on a ``miss`` (nothing stored) or an ``error`` (the lookup itself failed,
    ``error`` says how) the value is :data:`UNKNOWN` and ``entity``/``relation`` echo the
    query: see :meth:`miss`. ``match`` is ``exact`` only when both the entity and the relation matched
    after normalisation; ``semantic`` means some step was approximate, and ``rule`` says which.

    A multi-valued (entity, relation) returns every value: ``records`` in id order (each with
    its own id and source) and ``value`` joined with :data:`VALUE_SEPARATOR`; ``fact_id`` and
    ``source`` are the first record's.
    """

    model_config = ConfigDict(frozen=True)

    found: bool
    value: str
    entity: str
    relation: str
    fact_id: int | None = None
    score: float | None = None
    match: MatchKind
    source: str | None = None
    namespace: str = ""
    query: str = Field(description="the normalised key that was looked up")
    records: list[FactRecord] = Field(default_factory=list, description="every value returned, in id order")
    policy: str = Field("entity", description="the read policy: 'entity' (entity first) or 'published'")
    rule: str = Field("", description="the step that decided, e.g. exact, entity_fuzzy+relation_semantic, entity_unknown")
    entity_score: float | None = Field(None, description="entity policy: 1.0 exact, else the fuzzy name similarity")
    relation_score: float | None = Field(None, description="entity policy: 1.0 exact, else the relation-name cosine")
    error: str | None = Field(None, description="match 'error': why the lookup failed (a store down, a refused tool call)")

    @classmethod
    def miss(
        cls, entity: str, relation: str, *, rule: str = "unknown", error: str | None = None, namespace: str = "", **fields: object
    ) -> LookupResult:
        """Nothing found for the query: :data:`UNKNOWN`, ``match`` ``miss``, or ``error`` when ``error`` is given."""
        return cls(found=False, value=UNKNOWN, entity=entity, relation=relation, match="miss" if error is None else "error",
                   rule=rule, error=error, namespace=namespace, query=normalise_key(entity, relation), **fields)

    @classmethod
    def hit(cls, entity: str, relation: str, value: str, **fields: object) -> LookupResult:
        """A found value (``match`` ``exact`` unless given); a lookup without stored rows (an oracle) gives no ids."""
        return cls(found=True, value=value, entity=entity, relation=relation, query=normalise_key(entity, relation),
                   **{"match": "exact", **fields})

    @property
    def fact_ids(self) -> list[int]:
        """The ids of every value returned (cite or forget each)."""
        return [r.id for r in self.records]


@runtime_checkable
class Lookup(Protocol):
    """What every layer reads facts through: the decoder, perplexity, benchmarks, chat model and server.

    ``read`` is total: a miss, or a failure of the lookup itself, is a :class:`LookupResult`
    (:meth:`LookupResult.miss`), never an exception and never None. Every
    :class:`~tools.backends.KnowledgeStore` is one (reading its own namespace).
    """

    def read(self, entity: str, relation: str) -> LookupResult: ...


class DiskScan(BaseModel):
    """What a byte scan of the store's files found of a forget's values, entity names and keys (UTF-8)."""

    files: int = Field(description="files scanned (the SQLite file and its journal, every file of a local index)")
    bytes: int
    found: dict[str, list[str]] = Field(description="forgotten string -> files still holding it")
    held: list[str] = Field(description="strings not searched for: other live rows of the namespace still hold them")
    too_short: list[str] = Field(description="strings under 4 bytes, not searched for (they occur by chance)")

    @property
    def clean(self) -> bool:
        return not self.found


class ForgetReceipt(BaseModel):
    """Proof of a delete: the rows removed, what left the index, and re-lookups that no longer see them."""

    namespace: str
    selector: dict[str, int | str]
    removed: list[FactRecord]
    index_removed: list[int] = Field(description="ids that were in the semantic index and were removed from it")
    sql_remaining: int = Field(description="removed ids still in SQL afterwards (0 when the delete held)")
    index_remaining: int | None = Field(description="removed ids still in the index afterwards; None without an index")
    relookups: list[LookupResult] = Field(description="a fresh read of each removed (entity, relation), up to a cap")
    verified: bool = Field(description="nothing remains and no re-lookup returned a removed row (among all its values)")
    disk: DiskScan | None = Field(None, description="the store's files scanned for the forgotten bytes (SQLite file "
                                  "and local index only; None for a server database or an in-memory store)")
    at: datetime

    @property
    def count(self) -> int:
        return len(self.removed)
