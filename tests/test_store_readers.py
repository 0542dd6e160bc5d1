"""Readers open the knowledge base with create=False: the agent given a store path creates no file (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import open_store


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_agent_from_pretrained_with_a_store_path_creates_nothing(tmp_path: Path) -> None:
    from lmlm_agent.agent import LMLMAgent
    from lmlm_agent.model import build_model, save_checkpoint
    from runtime_fakes import tokenizer

    tok = tokenizer()
    save_checkpoint(tmp_path / "ckpt", build_model("micro", tok), tok, kind="lmlm", preset="micro")
    run = tmp_path / "run"
    with open_store(run / "kb.sqlite", index=False) as s:
        s.write("Ko Itakura", "birth place", "Yokohama", source="doc:1")
    before = _listing(run)
    agent = LMLMAgent.from_pretrained(tmp_path / "ckpt", store=run / "kb.sqlite")
    assert agent.store.read("ko itakra", "birth place").value == "Yokohama"  # a typo of the entity is forgiven
    agent.store.close()
    assert _listing(run) == before and not (run / "kb.chroma").exists()
    with pytest.raises(FileNotFoundError, match="create=False"):
        LMLMAgent.from_pretrained(tmp_path / "ckpt", store=run / "other.sqlite")
    assert _listing(run) == before
