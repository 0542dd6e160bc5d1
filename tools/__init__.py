"""The knowledge layer: knowledge stores behind one protocol, opened by URL, and the one lookup contract.

    from tools import open_store
    store = open_store("runs/x/kb.sqlite")        # or sqlite:///..., postgresql+psycopg://..., memory://, http://host:port
    store.write("Ada Lovelace", "birth year", "1815", source="doc:12@340")   # -> StoredFact (a plain record)
    store.read("ada lovelace", "birth_year").value   # '1815' (exact after normalisation)
    store.read("Ada Lovelase", "year of birth")      # entity by name (typo forgiven), then the relation by meaning

Every layer reads facts through :class:`Lookup` (``read(entity, relation) -> LookupResult``);
every backend implements :class:`KnowledgeStore` and passes :mod:`tools.conformance`.
This package imports nothing else of the project's; Chroma and the embedder load
only when a store is opened with an index.
"""

from tools.backends import KnowledgeStore, ReadOnlyStore, WriteStats, backends, open_store, register_backend
from tools.lookup import LookupPolicy
from tools.schema import (
    UNKNOWN,
    FactRecord,
    ForgetReceipt,
    InvalidInput,
    Lookup,
    LookupResult,
    StoredFact,
    normalise_key,
    normalise_text,
)
from tools.store import SQLKnowledgeStore

__all__ = [
    "UNKNOWN",
    "FactRecord",
    "ForgetReceipt",
    "InvalidInput",
    "KnowledgeStore",
    "Lookup",
    "LookupPolicy",
    "LookupResult",
    "ReadOnlyStore",
    "SQLKnowledgeStore",
    "StoredFact",
    "WriteStats",
    "backends",
    "normalise_key",
    "normalise_text",
    "open_store",
    "register_backend",
]
