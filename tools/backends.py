"""The knowledge-store contract, and the registry that opens a backend from a URL.

    from tools import open_store, register_backend
    open_store("runs/x/kb.sqlite")                       # a bare path: SQLite (also sqlite:///runs/x/kb.sqlite)
    open_store("postgresql+psycopg://u@host/db")         # PostgreSQL (also postgresql://, postgres://)
    open_store("memory://")                              # pure Python, in this process only
    open_store("http://127.0.0.1:8000")                  # read-only: another `lmlm serve`'s knowledge API
    register_backend("mykv", lambda url, **options: MyStore(url, **options))   # then open_store("mykv://...")

Every backend returns plain records (:class:`~tools.schema.StoredFact`,
:class:`~tools.schema.LookupResult`, :class:`~tools.schema.ForgetReceipt`), never a
database row, and passes the same conformance suite (:mod:`tools.conformance`).
This module imports no database driver: each backend is imported when first opened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

from tools.schema import ForgetReceipt, InvalidInput, LookupResult, StoredFact, WriteMode

Triple = Sequence[Any]  # (entity, relation, value) or (entity, relation, value, source)


class ReadOnlyStore(InvalidInput):
    """A write or delete sent to a store that only reads (opened ``read_only``, or a remote knowledge API)."""


@dataclass(frozen=True)
class WriteStats:
    """What a bulk write did.

    ``duplicates``: rows of the batch that repeat another (the same value of a multi-valued
    pair, or an earlier value of a single-valued pair, which the later one supersedes);
    ``removed``: stored values a replace dropped (a single-valued write over several values).
    """

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    removed: int = 0

    @property
    def written(self) -> int:
        return self.inserted + self.updated


@runtime_checkable
class KnowledgeStore(Protocol):
    """What the runtime, the typed tools, the importers and the benchmarks need from a knowledge base.

    Every method takes ``namespace`` (None: the store's own); namespaces never see each
    other's facts. A store is a :class:`~tools.schema.Lookup` of its own namespace, and
    :meth:`with_namespace` gives the store of another one (sharing connections and caches).
    """

    namespace: str

    def read(self, entity: str, relation: str, *, namespace: str | None = None) -> LookupResult: ...

    def write(self, entity: str, relation: str, value: str, source: str | None = None, *,
              namespace: str | None = None, mode: WriteMode | None = None) -> StoredFact: ...

    def write_many(self, triples: Iterable[Triple], source: str | None = None, namespace: str | None = None,
                   mode: WriteMode | None = None) -> int: ...

    def upsert_many(self, triples: Iterable[Triple], *, source: str | None = None, namespace: str | None = None,
                    mode: WriteMode | None = None) -> WriteStats: ...

    def declare_multi_valued(self, relations: Iterable[str], *, multi_valued: bool = True,
                             namespace: str | None = None) -> list[str]: ...

    def multi_valued(self, *, namespace: str | None = None) -> list[str]: ...

    def delete(self, *, fact_id: int | None = None, entity: str | None = None, relation: str | None = None,
               namespace: str | None = None) -> ForgetReceipt: ...

    def count(self, *, namespace: str | None = None) -> int: ...

    def iter_facts(self, *, namespace: str | None = None) -> Iterator[StoredFact]: ...

    def namespaces(self) -> list[str]: ...

    def with_namespace(self, namespace: str) -> KnowledgeStore: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self:  # a backend that subclasses the protocol inherits these two
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BackendFactory = Callable[..., KnowledgeStore]
"""``factory(url, **options) -> KnowledgeStore``; ``url`` is what :func:`open_store` was given, as a string."""

_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Let :func:`open_store` open ``scheme://...`` with ``factory`` (a later registration of a scheme replaces it)."""
    if not scheme or "://" in scheme or scheme != scheme.lower():
        raise ValueError(f"a scheme is lower-case and without '://', got {scheme!r}")
    _BACKENDS[scheme] = factory


def registered_backends() -> list[str]:
    """The schemes :func:`open_store` can open."""
    return sorted(_BACKENDS)


def scheme_of(db: str | Path | None) -> str:
    """The registry key of ``db``: its URL scheme (``postgresql+psycopg`` -> ``postgresql+psycopg``), ``sqlite``
    for a bare path or None (an in-memory SQLite database)."""
    text = "" if db is None else str(db)
    return text.split("://", 1)[0].lower() if "://" in text else "sqlite"


def open_store(db: str | Path | None = None, **options: Any) -> KnowledgeStore:
    """Open the knowledge store ``db`` names, with the backend registered for its scheme.

    ``db``: a path or ``sqlite:///path`` (SQLite; None: a private in-memory SQLite database),
    ``postgresql+psycopg://...`` / ``postgresql://...`` (PostgreSQL), ``memory://`` (pure
    Python, this process only), ``http(s)://host:port`` (read-only, another ``lmlm serve``).
    ``options`` go to the backend (the SQL backend's are :func:`tools.store.open_sql_store`'s);
    one a backend does not take is refused by it. Any other scheme is a SQLAlchemy URL for the
    SQL backend (``mysql://...`` then fails naming the driver it lacks).
    """
    return _BACKENDS.get(scheme_of(db), _sql)(db, **options)


def _sql(db: str | Path | None, **options: Any) -> KnowledgeStore:
    from tools.store import open_sql_store

    return open_sql_store(db, **options)


def _memory(db: str, **options: Any) -> KnowledgeStore:
    from tools.memory import MemoryKnowledgeStore

    return MemoryKnowledgeStore(**options)


def _remote(db: str, **options: Any) -> KnowledgeStore:
    from tools.remote import RemoteKnowledgeStore

    return RemoteKnowledgeStore(db, **options)


for _scheme in ("sqlite", "postgresql", "postgresql+psycopg", "postgres"):
    register_backend(_scheme, _sql)
register_backend("memory", _memory)
for _scheme in ("http", "https"):
    register_backend(_scheme, _remote)
