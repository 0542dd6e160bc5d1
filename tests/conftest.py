"""Shared test settings: offline model loading, and where the shared data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "lmlm-annotations"


@pytest.fixture(scope="session")
def annotations_dir() -> Path:
    """The real GPT-4o annotations beside the checkout; CI has ../shared, so a missing one fails loudly."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared annotation data not found at {SHARED_DATA}")
    return SHARED_DATA
