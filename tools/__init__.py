"""The knowledge layer: knowledge stores behind one protocol, opened by URL, and the one lookup contract.

    from tools import open_store
    store = open_store("runs/x/kb.sqlite")        # or sqlite:///..., postgresql+psycopg://..., memory://, http://host:port
    store.write("Ada Lovelace", "birth year", "1815", source="doc:12@340")   # -> StoredFact (a plain record)
    store.read("ada lovelace", "birth_year").value   # '1815' (exact after normalisation)
    store.read("Ada Lovelase", "year of birth")      # entity by name (typo forgiven), then the relation by meaning

Every layer reads facts through :class:`Lookup` (``read(entity, relation) -> LookupResult``);
every backend implements :class:`KnowledgeStore` and passes :mod:`tools.conformance`.
This package imports nothing else of the project's; Chroma and the embedder load
only when a store is opened with an index, SQLAlchemy only when a store's name is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.backends import KnowledgeStore, ReadOnlyStore, WriteStats, open_store, register_backend, registered_backends
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

# Each name is imported from its module on first use: a light module of this package (tools.settings, which
# the command line reads to build its --help) then loads without SQLAlchemy.
_HOME = {
    "LookupPolicy": "tools.lookup",
    **dict.fromkeys(("UNKNOWN", "FactRecord", "ForgetReceipt", "InvalidInput", "Lookup", "LookupResult", "StoredFact",
                     "normalise_key", "normalise_text"), "tools.schema"),
    **dict.fromkeys(("KnowledgeStore", "ReadOnlyStore", "WriteStats", "open_store", "register_backend",
                     "registered_backends"), "tools.backends"),
    "SQLKnowledgeStore": "tools.store",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'tools' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


__all__ = list(_HOME)
