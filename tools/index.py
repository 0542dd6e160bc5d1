"""The semantic index: a Chroma collection per namespace over the normalised ``"{entity} {relation}"`` keys.

The index is derived from SQL and holds only ``id -> key`` (values are always read
from SQL), so it can be dropped and rebuilt from the rows at any time, and a value
update never needs a re-embedding. One collection per (store, namespace) keeps the
namespace boundary physical: a query can only ever see its own namespace's keys.

Several processes may share one local index directory: Chroma's local client keeps its
vector index in memory and writes it back over what another process wrote (the lost
rows of issue 20), and two first opens race on its tables. So every use of a local
directory happens under a cross-process file lock (``lmlm-index.lock`` in the
directory), and a process reopens its client whenever another process wrote since its
own last use (a stamp file changes at every write). A process that cannot get the lock
within ``wait_s`` gets :class:`IndexBusy`, never a corrupt index. A Chroma server
serialises writers itself and needs none of this.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlparse

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.config import Settings
from chromadb.errors import NotFoundError
from chromadb.utils.embedding_functions import register_embedding_function

from tools.embedder import embed_queries, intra_op_threads, load_minilm

BATCH = 1024  # keys per add: one embedding call, well under Chroma's max batch size
EPHEMERAL = ":memory:"
INDEX_WAIT_S = 60.0  # how long a process waits for another one's hold on a local index directory
LOCK_FILE = "lmlm-index.lock"
STAMP_FILE = "lmlm-index.stamp"  # rewritten after every write: tells other processes to reopen
BUILDING = "-next"  # suffix of a collection being rebuilt beside the live one
BUILT_TO = "built_to"  # metadata of a collection being built: the last fact id embedded (where a killed build resumes)
BUILD_STEP = 16_384  # keys embedded (outside the lock) then inserted (under it) per step of a build; its resume granularity
_SEGMENT_DIR = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
T = TypeVar("T")


class IndexBusy(TimeoutError):
    """Another process held the local index directory longer than ``wait_s``; nothing was changed."""


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


def _embed_in_worker(keys: list[str]) -> Any:
    """One shard of a build step, in a worker process (one torch thread, its own MiniLM)."""
    import torch

    torch.set_num_threads(1)
    return np.asarray(MiniLMEmbedding()(keys), dtype=np.float32)


@contextmanager
def _step_embedder(embedding: MiniLMEmbedding, workers: int) -> Iterator[Callable[[list[str]], Any]]:
    """What embeds a build step: ``embedding`` itself, or ``workers`` processes each embedding a shard of it.

    Processes rather than torch threads: on the shared 2-core machine two intra-op threads spin
    waiting for each other and built at half the one-thread speed (docs/knowledge.md); single-
    threaded processes never wait for one another.
    """
    if workers <= 1:
        yield lambda keys: np.asarray(embedding(keys), dtype=np.float32)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        def embed(keys: list[str]) -> Any:
            size = -(-len(keys) // workers)
            shards = [keys[i : i + size] for i in range(0, len(keys), size)]
            return np.concatenate(list(pool.map(_embed_in_worker, shards)))

        yield embed


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


def is_local_dir(location: str) -> bool:
    return location != EPHEMERAL and not location.startswith(("http://", "https://"))


class _Client:
    """The Chroma client of this process for one index location, used only inside :meth:`session`.

    For a local directory every session holds the directory's file lock (and, for the threads
    of this process, a mutex). A write session opens a fresh client and closes it before the
    lock is released, so what it wrote is on disk and no client of this process holds
    unwritten state; a read session reuses its client while the stamp file shows no write since
    it was opened (a client that only read has nothing to write back when it is replaced).
    ``epoch`` counts reopenings, so collection handles of an older client are never reused.
    """

    def __init__(self, location: str) -> None:
        self.location = location
        self.local = is_local_dir(location)
        self.client: ClientAPI | None = None
        self.epoch = 0
        self._stamp: str | None = None
        self._mutex = threading.RLock()
        self._depth = 0
        self._writing = False
        self._fd: int | None = None

    @contextmanager
    def session(self, wait_s: float, *, write: bool) -> Iterator[ClientAPI]:
        if not self.local:
            if self.client is None:
                self.client = make_client(self.location)
            yield self.client
            return
        with self._mutex:
            outer = self._depth == 0
            if outer:
                self._lock(wait_s)
            self._depth += 1
            try:
                if outer or (write and not self._writing):
                    self._refresh(write)
                assert self.client is not None
                yield self.client
            finally:
                self._depth -= 1
                if outer:
                    try:
                        if self._writing:
                            self.close()  # Chroma writes its vector index back to disk on close
                            self._bump()
                    finally:
                        self._writing = False
                        self._unlock()

    def _lock(self, wait_s: float) -> None:
        Path(self.location).mkdir(parents=True, exist_ok=True)
        fd = os.open(os.path.join(self.location, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise IndexBusy(
                        f"semantic index {self.location} is held by another process for more than {wait_s:g} s "
                        "(a long import or rebuild?); try again later, raise index_wait_s, or use a Chroma server "
                        "for many concurrent writers"
                    ) from None
                time.sleep(0.05)
        self._fd = fd

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def _read_stamp(self) -> str | None:
        try:
            return Path(self.location, STAMP_FILE).read_text()
        except FileNotFoundError:
            return None

    def _refresh(self, write: bool) -> None:
        """A fresh client for a write; for a read, a fresh one only when another process wrote since."""
        stamp = self._read_stamp()
        if write or self.client is None or stamp != self._stamp:
            self.close()
            self.client = make_client(self.location)
            self.epoch += 1
            self._stamp = stamp
        self._writing = self._writing or write

    def _bump(self) -> None:
        stamp = uuid.uuid4().hex
        tmp = Path(self.location, f"{STAMP_FILE}.{os.getpid()}")
        tmp.write_text(stamp)
        os.replace(tmp, Path(self.location, STAMP_FILE))
        self._stamp = stamp

    def close(self) -> None:
        """Release the client (a local one writes its vector index back to disk)."""
        if self.client is not None and self.local:
            self.client.close()
        self.client = None


_CLIENTS: dict[str, _Client] = {}
_CLIENTS_LOCK = threading.Lock()


def _client_for(location: str) -> _Client:
    key = str(Path(location).resolve()) if is_local_dir(location) else location
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = _Client(key if is_local_dir(location) else location)
        return _CLIENTS[key]


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class SemanticIndex:
    """Per-namespace Chroma collections of one store, named from the store's id and the namespace.

    ``wait_s``: how long to wait for another process's hold on a local directory before
    :class:`IndexBusy`.
    """

    def __init__(self, location: str, store_id: str, *, wait_s: float = INDEX_WAIT_S) -> None:
        self.location = location
        self.store_id = store_id
        self.wait_s = wait_s
        self._client = _client_for(location)
        self._embedding = MiniLMEmbedding()
        self._collections: dict[str, Collection] = {}
        self._epoch = -1
        with self.session():  # opens (and, for a new directory, creates) the index under the lock
            pass

    @property
    def local(self) -> bool:
        """A directory on this machine (several processes may share it: it is locked)."""
        return self._client.local

    @property
    def shared(self) -> bool:
        """A directory or a server, as opposed to this process's private in-memory index."""
        return self.location != EPHEMERAL

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[ClientAPI]:
        """Hold the index for several operations (one lock, one freshness check)."""
        with self._client.session(self.wait_s, write=write) as client:
            if self._epoch != self._client.epoch:
                self._collections.clear()
                self._epoch = self._client.epoch
            yield client

    def collection_name(self, namespace: str) -> str:
        """Chroma names allow only ``[a-zA-Z0-9._-]``; hashing the namespace keeps any valid namespace usable."""
        digest = hashlib.sha1(namespace.encode()).hexdigest()[:16]
        return f"kb-{self.store_id[:12]}-{digest}"

    def _label(self, namespace: str) -> dict[str, Any]:
        return {"namespace": namespace, "store_id": self.store_id}

    def _metadata(self, namespace: str) -> dict[str, Any]:
        """At creation only: Chroma refuses to change the distance later."""
        return {"hnsw:space": "cosine", **self._label(namespace)}

    def _get(self, client: ClientAPI, namespace: str, *, create: bool) -> Collection | None:
        if namespace in self._collections:
            return self._collections[namespace]
        name = self.collection_name(namespace)
        try:
            col = client.get_collection(name, embedding_function=self._embedding)
        except NotFoundError:
            col = self._finish_swap(client, namespace)
            if col is None and create:
                col = client.get_or_create_collection(name, metadata=self._metadata(namespace),
                                                      embedding_function=self._embedding)
        if col is not None:
            self._collections[namespace] = col
        return col

    def _finish_swap(self, client: ClientAPI, namespace: str) -> Collection | None:
        """A rebuild killed between dropping the old collection and renaming the new one: rename it now."""
        try:
            col = client.get_collection(self.collection_name(namespace) + BUILDING, embedding_function=self._embedding)
        except NotFoundError:
            return None
        if not (col.metadata or {}).get("complete"):
            return None
        col.modify(name=self.collection_name(namespace), metadata=self._label(namespace))
        return client.get_collection(self.collection_name(namespace), embedding_function=self._embedding)

    def add(self, namespace: str, rows: Iterable[tuple[int, str]]) -> int:
        """Embed and add ``(fact_id, key)`` rows in batches (one lock hold per batch); returns how many were added.

        While a build of the namespace is under way (or was killed), the rows go into its new
        collection too, so the new collection misses nothing the live one gets.
        """
        added = 0
        for batch in _batches(rows, BATCH):
            ids, keys = [str(i) for i, _ in batch], [k for _, k in batch]
            vectors = self._embedding(keys)
            with self.session(write=True) as client:
                col = self._get(client, namespace, create=True)
                assert col is not None
                for target in (col, self._building(client, namespace)):
                    if target is not None:
                        target.upsert(ids=ids, documents=keys, embeddings=vectors)
            added += len(batch)
        return added

    def delete(self, namespace: str, fact_ids: list[int]) -> None:
        with self.session(write=True) as client:
            for col in (self._get(client, namespace, create=False), self._building(client, namespace)):
                if col is not None:
                    for batch in _batches(fact_ids, BATCH):
                        col.delete(ids=[str(i) for i in batch])

    def _building(self, client: ClientAPI, namespace: str) -> Collection | None:
        """The collection a build of the namespace is filling (unfinished, or killed), or None."""
        try:
            return client.get_collection(self.collection_name(namespace) + BUILDING, embedding_function=self._embedding)
        except NotFoundError:
            return None

    def building(self, namespace: str) -> int | None:
        """How far an unfinished build of the namespace got (the last fact id embedded), or None when there is none."""
        with self.session() as client:
            col = self._building(client, namespace)
            return None if col is None else int((col.metadata or {}).get(BUILT_TO, 0))

    def present(self, namespace: str, fact_ids: list[int]) -> list[int]:
        """Which of ``fact_ids`` the index holds (what a receipt reports as removed from, or left in, it)."""
        with self.session() as client:
            col = self._get(client, namespace, create=False)
            if col is None:
                return []
            found = [i for batch in _batches(fact_ids, BATCH) for i in col.get(ids=[str(i) for i in batch], include=[])["ids"]]
        return sorted(int(i) for i in found)

    def ids(self, namespace: str, page: int = 10_000) -> set[int]:
        """Every id in the namespace's collection (what ``check`` compares with SQL)."""
        found: set[int] = set()
        with self.session() as client:
            col = self._get(client, namespace, create=False)
            while col is not None:
                got = col.get(include=[], limit=page, offset=len(found))["ids"]
                found.update(int(i) for i in got)
                if len(got) < page:
                    break
        return found

    def query(self, namespace: str, key: str, k: int) -> list[Hit]:
        """The ``k`` nearest keys, best first, with cosine similarity (1 - cosine distance)."""
        with self.session() as client:
            col = self._get(client, namespace, create=False)
            if col is None:
                return []
            res = col.query(query_texts=[key], n_results=k, include=["documents", "distances"])
        ids, docs, dists = res["ids"][0], res["documents"][0], res["distances"][0]
        # Float error can put an identical key a hair above 1.
        return [Hit(int(i), doc, min(1.0, 1.0 - float(d))) for i, doc, d in zip(ids, docs, dists, strict=True)]

    def count(self, namespace: str) -> int:
        with self.session() as client:
            col = self._get(client, namespace, create=False)
            return 0 if col is None else col.count()

    def namespaces(self) -> list[str]:
        """Namespaces this store has collections for, including ones whose SQL rows are all gone."""
        with self.session() as client:
            return sorted({
                c.metadata["namespace"]
                for c in client.list_collections()
                if (c.metadata or {}).get("store_id") == self.store_id
            })

    def rebuild(
        self,
        namespace: str,
        rows_after: Callable[[int], Iterable[tuple[int, str]]],
        *,
        still_stored: Callable[[list[int]], set[int]] = set,
        workers: int = 1,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Embed the namespace's ``(fact_id, key)`` rows into a new collection beside the live one, then swap it in.

        ``rows_after(last_id)``: the rows with a larger id, in id order. The build goes in steps
        of :data:`BUILD_STEP` keys, each embedded outside the directory lock (by ``workers``
        processes, each a shard; 1: in this process) and then inserted under it with the last id
        as the step's mark, so readers and writers wait only for an insert, a kill loses at most
        one step and the next build resumes after the mark. Index changes made meanwhile go into
        both collections (:meth:`add`, :meth:`delete`), so rows the build has passed stay right;
        ``still_stored(ids)`` (which of them SQL still has) is asked under the lock before each
        insert, so a row deleted while its step was being embedded is not inserted after its
        removal was applied (the default, ``set``, keeps every row: for callers without SQL).
        The live collection serves queries until the swap. ``progress`` gets each step's key
        count. Returns the number of keys in the new collection.
        """
        name, building = self.collection_name(namespace), self.collection_name(namespace) + BUILDING
        with self.session(write=True) as client:
            col = self._building(client, namespace)
            if col is None:
                col = client.create_collection(building, metadata={**self._metadata(namespace), BUILT_TO: 0},
                                               embedding_function=self._embedding)
            after = int((col.metadata or {}).get(BUILT_TO, 0))
        with _step_embedder(self._embedding, workers) as embed:
            for step in _batches(rows_after(after), BUILD_STEP):
                vectors = embed([k for _, k in step])
                with self.session(write=True) as client:
                    col = self._building(client, namespace)
                    if col is None:
                        raise IndexBusy(f"the build of {namespace!r} was finished or dropped by another process meanwhile")
                    stored = still_stored([i for i, _ in step])
                    kept = [n for n, (i, _) in enumerate(step) if i in stored]
                    for start in range(0, len(kept), BATCH):
                        part = kept[start : start + BATCH]
                        col.upsert(ids=[str(step[n][0]) for n in part], documents=[step[n][1] for n in part],
                                   embeddings=vectors[part])
                    col.modify(metadata={**self._label(namespace), BUILT_TO: step[-1][0]})
                if progress is not None:
                    progress(len(step))
        with self.session(write=True) as client:
            self._collections.pop(namespace, None)
            col = self._building(client, namespace)
            assert col is not None
            col.modify(metadata={**self._label(namespace), "complete": True})
            try:
                client.delete_collection(name)
            except NotFoundError:
                pass
            col.modify(name=name, metadata=self._label(namespace))
            return col.count()

    def compact(self, fact_ids: list[int]) -> None:
        """After deleting ``fact_ids`` (or a rebuild): rewrite a local index's files, so removed keys leave the disk.

        Chroma deletes rows without overwriting them and keeps a write log whose entries hold
        each added key until its vector index is next saved; with the client closed, the
        deleted ids' log entries lose their text, the entries every part of the index has
        consumed are purged, the full-text index is merged, the file is vacuumed, and the
        vector files of dropped collections (which Chroma leaves behind) are removed. A server
        index compacts on its own.
        """
        if not self.local:
            return
        with self.session(write=True):
            self._client.close()
            self._collections.clear()
            db = sqlite3.connect(os.path.join(self.location, "chroma.sqlite3"))
            try:
                for batch in _batches([str(i) for i in fact_ids], BATCH):
                    db.execute(f"UPDATE embeddings_queue SET metadata = NULL WHERE id IN ({','.join('?' * len(batch))})", batch)
                # Only entries every segment has consumed: one that has saved nothing yet (no max_seq_id row) needs them all.
                db.execute("DELETE FROM embeddings_queue WHERE seq_id <= (SELECT coalesce(min(coalesce(m.seq_id, 0)), 0) "
                           "FROM segments s LEFT JOIN max_seq_id m ON m.segment_id = s.id)")
                db.execute("INSERT INTO embedding_fulltext_search(embedding_fulltext_search) VALUES ('optimize')")
                db.commit()
                db.execute("VACUUM")
                live = {row[0] for row in db.execute("SELECT id FROM segments")}
            finally:
                db.close()
            for entry in Path(self.location).iterdir():
                if entry.is_dir() and _SEGMENT_DIR.fullmatch(entry.name) and entry.name not in live:
                    shutil.rmtree(entry)

    def drop(self, namespace: str) -> None:
        """Remove the namespace's collection."""
        with self.session(write=True) as client:
            self._collections.pop(namespace, None)
            try:
                client.delete_collection(self.collection_name(namespace))
            except NotFoundError:
                pass
