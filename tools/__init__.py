"""The knowledge layer: a SQL store of (entity, relation, value) facts with a derived Chroma index.

    from tools import open_store
    store = open_store("runs/x/kb.sqlite")
    store.write("Ada Lovelace", "birth year", "1815", source="doc:12@340")
    store.read("ada lovelace", "birth_year").value   # '1815' (exact after normalisation)
    store.read("Ada Lovelase", "year of birth")      # entity by name (typo forgiven), then the relation by meaning

This package imports nothing else of the project's; Chroma and the embedder load
only when a store is opened with an index, SQLAlchemy only when a store's name is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.lookup import LookupPolicy
    from tools.schema import UNKNOWN, Fact, FactRecord, ForgetReceipt, InvalidInput, LookupResult, normalise_key
    from tools.store import KnowledgeStore, SQLKnowledgeStore, WriteStats, open_store

# Each name is imported from its module on first use: a light module of this package (tools.settings, which
# the command line reads to build its --help) then loads without SQLAlchemy.
_HOME = {
    "LookupPolicy": "tools.lookup",
    **dict.fromkeys(("UNKNOWN", "Fact", "FactRecord", "ForgetReceipt", "InvalidInput", "LookupResult", "normalise_key"),
                    "tools.schema"),
    **dict.fromkeys(("KnowledgeStore", "SQLKnowledgeStore", "WriteStats", "open_store"), "tools.store"),
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'tools' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


__all__ = list(_HOME)
