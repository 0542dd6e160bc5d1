"""The semantic index: a Chroma collection per namespace over the normalised ``"{entity} {relation}"`` keys.

The index is derived from SQL and holds only ``id -> key`` (values are always read
from SQL), so it can be dropped and rebuilt from the rows at any time, and a value
update never needs a re-embedding. One collection per (store, namespace) keeps the
namespace boundary physical: a query can only ever see its own namespace's keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlparse

import chromadb
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.config import Settings
from chromadb.errors import NotFoundError
from chromadb.utils.embedding_functions import register_embedding_function

from tools.embedder import embed_queries, intra_op_threads, load_minilm

BATCH = 1024  # keys per add: one embedding call, well under Chroma's max batch size
EPHEMERAL = ":memory:"
T = TypeVar("T")


@register_embedding_function
class MiniLMEmbedding(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 from the bundled weights; the model loads on the first call, not at construction."""

    def __init__(self) -> None:
        """Nothing to configure; defined so Chroma's base class does not warn about a missing __init__."""

    def __call__(self, input: Documents) -> Embeddings:
        return list(load_minilm().encode(list(input), batch_size=256, normalize_embeddings=True, convert_to_numpy=True))

    def embed_query(self, input: Documents) -> Embeddings:
        """A lookup embeds one short key: a second thread gains little there and spins on a busy machine."""
        with intra_op_threads(1):
            return list(embed_queries(list(input)))

    @staticmethod
    def name() -> str:
        return "lmlm-minilm-offline"

    def default_space(self) -> Space:
        return "cosine"

    def get_config(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbedding:
        return MiniLMEmbedding()


class Hit(NamedTuple):
    """A candidate from the index: still to be checked against SQL."""

    fact_id: int
    key: str
    similarity: float


def make_client(location: str | Path) -> ClientAPI:
    """A Chroma client: ``http(s)://host:port`` is a server, ``:memory:`` is in-process, anything else a directory."""
    settings = Settings(anonymized_telemetry=False)
    text = str(location)
    if text == EPHEMERAL:
        return chromadb.EphemeralClient(settings=settings)
    if text.startswith(("http://", "https://")):
        url = urlparse(text)
        ssl = url.scheme == "https"
        try:
            return chromadb.HttpClient(
                host=url.hostname or "localhost", port=url.port or (443 if ssl else 8000), ssl=ssl, settings=settings
            )
        except ValueError as exc:  # Chroma reports an unreachable server as a ValueError
            raise ConnectionError(f"no Chroma server answers at {text}: {exc}") from exc
    Path(text).mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=text, settings=settings)


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class SemanticIndex:
    """Per-namespace Chroma collections of one store, named from the store's id and the namespace."""

    def __init__(self, client: ClientAPI, store_id: str, location: str) -> None:
        self.client = client
        self.store_id = store_id
        self.location = location
        self._embedding = MiniLMEmbedding()
        self._collections: dict[str, Collection] = {}

    def collection_name(self, namespace: str) -> str:
        """Chroma names allow only ``[a-zA-Z0-9._-]``; hashing the namespace keeps any valid namespace usable."""
        digest = hashlib.sha1(namespace.encode()).hexdigest()[:16]
        return f"kb-{self.store_id[:12]}-{digest}"

    def _get(self, namespace: str, *, create: bool) -> Collection | None:
        if namespace in self._collections:
            return self._collections[namespace]
        name = self.collection_name(namespace)
        if create:
            col = self.client.get_or_create_collection(
                name,
                metadata={"hnsw:space": "cosine", "namespace": namespace, "store_id": self.store_id},
                embedding_function=self._embedding,
            )
        else:
            try:
                col = self.client.get_collection(name, embedding_function=self._embedding)
            except NotFoundError:
                return None
        self._collections[namespace] = col
        return col

    def add(self, namespace: str, rows: Iterable[tuple[int, str]]) -> int:
        """Embed and add ``(fact_id, key)`` rows in batches; returns how many were added."""
        col = self._get(namespace, create=True)
        assert col is not None
        added = 0
        for batch in _batches(rows, BATCH):
            col.upsert(ids=[str(i) for i, _ in batch], documents=[k for _, k in batch])
            added += len(batch)
        return added

    def delete(self, namespace: str, fact_ids: list[int]) -> None:
        col = self._get(namespace, create=False)
        if col is not None:
            for batch in _batches(fact_ids, BATCH):
                col.delete(ids=[str(i) for i in batch])

    def present(self, namespace: str, fact_ids: list[int]) -> list[int]:
        """Which of ``fact_ids`` the index holds (what a receipt reports as removed from, or left in, it)."""
        col = self._get(namespace, create=False)
        if col is None:
            return []
        found = [i for batch in _batches(fact_ids, BATCH) for i in col.get(ids=[str(i) for i in batch], include=[])["ids"]]
        return sorted(int(i) for i in found)

    def query(self, namespace: str, key: str, k: int) -> list[Hit]:
        """The ``k`` nearest keys, best first, with cosine similarity (1 - cosine distance)."""
        col = self._get(namespace, create=False)
        if col is None:
            return []
        res = col.query(query_texts=[key], n_results=k, include=["documents", "distances"])
        ids, docs, dists = res["ids"][0], res["documents"][0], res["distances"][0]
        # Float error can put an identical key a hair above 1.
        return [Hit(int(i), doc, min(1.0, 1.0 - float(d))) for i, doc, d in zip(ids, docs, dists, strict=True)]

    def count(self, namespace: str) -> int:
        col = self._get(namespace, create=False)
        return 0 if col is None else col.count()

    def namespaces(self) -> list[str]:
        """Namespaces this store has collections for, including ones whose SQL rows are all gone."""
        return sorted(
            c.metadata["namespace"]
            for c in self.client.list_collections()
            if (c.metadata or {}).get("store_id") == self.store_id
        )

    def drop(self, namespace: str) -> None:
        """Remove the namespace's collection (the first step of a rebuild)."""
        self._collections.pop(namespace, None)
        try:
            self.client.delete_collection(self.collection_name(namespace))
        except NotFoundError:
            pass
