"""A cheap stand-in for MiniLM in tests of the index's plumbing (loading MiniLM takes 20 s per process on a
busy 2-core machine): a bag of character trigrams hashed into 64 dimensions, so a key's own embedding is
its nearest neighbour. Subprocesses call :func:`install`; a test process uses the ``cheap_embedding`` fixture."""

from __future__ import annotations

import hashlib

import numpy as np

DIMENSIONS = 64


def vector(text: str) -> np.ndarray:
    v = np.zeros(DIMENSIONS)
    for i in range(len(text) - 2):
        v[int(hashlib.md5(text[i : i + 3].encode()).hexdigest()[:8], 16) % DIMENSIONS] += 1.0
    return v / (np.linalg.norm(v) or 1.0)


def embed(self: object, input: list[str]) -> list[np.ndarray]:  # Chroma checks the parameter names
    return [vector(t) for t in input]


def install() -> None:
    from tools.index import MiniLMEmbedding

    MiniLMEmbedding.__call__ = embed  # type: ignore[method-assign]
    MiniLMEmbedding.embed_query = embed  # type: ignore[method-assign]
