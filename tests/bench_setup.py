"""A tiny world, tokenizer and untrained micro model shared by the benchmark tests (built once)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def micro_setup(seed: int = 0):
    """(world, tokenizer, model): 8 entities, a 400-id BPE, the `micro` preset (~60k parameters)."""
    import torch

    from benchmarks.world import generate_world
    from lmlm_agent.model import build_model
    from lmlm_agent.tokenizer import train_tokenizer

    # On this shared 2-core machine, two intra-op threads run a micro model ~30x slower than one.
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    world = generate_world(8, seed=seed)
    texts = [t for d in world.corpus() for t in (d.annotated, d.plain)]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    model = build_model("micro", tokenizer)
    model.eval()
    return world, tokenizer, model


def gold_store(world):
    """An in-memory exact-lookup store holding the world's gold triples."""
    from tools import open_store

    store = open_store(None, index=False)
    store.write_many(world.triples, source="world")
    return store
