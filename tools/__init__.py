"""The knowledge layer: a SQL store of (entity, relation, value) facts with a derived Chroma index.

    from tools import open_store
    store = open_store("runs/x/kb.sqlite")
    store.write("Ada Lovelace", "birth year", "1815", source="doc:12@340")
    store.read("ada lovelace", "birth_year").value   # '1815' (exact after normalisation)
    store.read("Ada Lovelase", "year of birth")      # entity by name (typo forgiven), then the relation by meaning

This package imports nothing else of the project's; Chroma and the embedder load
only when a store is opened with an index.
"""

from tools.lookup import LookupPolicy
from tools.schema import UNKNOWN, Fact, FactRecord, ForgetReceipt, InvalidInput, LookupResult, normalise_key
from tools.store import KnowledgeStore, SQLKnowledgeStore, WriteStats, open_store

__all__ = [
    "UNKNOWN",
    "Fact",
    "FactRecord",
    "ForgetReceipt",
    "InvalidInput",
    "KnowledgeStore",
    "LookupPolicy",
    "LookupResult",
    "SQLKnowledgeStore",
    "WriteStats",
    "normalise_key",
    "open_store",
]
