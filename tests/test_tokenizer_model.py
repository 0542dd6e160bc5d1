"""Tokenizer (call tokens are single ids, text round-trips) and model presets / checkpoints."""

from __future__ import annotations

import pytest
import torch
from runtime_fakes import tokenizer

from lmlm_agent.format import SPECIAL_TOKENS, render_call
from lmlm_agent.model import PRESETS, build_model, count_parameters, load_checkpoint, save_checkpoint
from lmlm_agent.tokenizer import call_token_ids

ANNOTATED = "Ada Lovelace was born in " + render_call("Ada Lovelace", "birth year", "1815") + " 1815 in Londön, 日本."


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def test_call_tokens_are_single_ids_and_text_round_trips(tok):
    ids = call_token_ids(tok)
    assert len(set(ids.all)) == 4
    for token, i in zip(SPECIAL_TOKENS, ids.all):
        assert tok.encode(token, add_special_tokens=False) == [i]
    enc = tok.encode(ANNOTATED, add_special_tokens=False)
    assert [i for i in enc if i in ids.all] == [ids.entity, ids.relationship, ids.ret, ids.end]
    assert tok.decode(enc, skip_special_tokens=False) == ANNOTATED


def test_call_token_ids_rejects_a_tokenizer_without_them():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")), unk_token="[UNK]")
    with pytest.raises(ValueError):
        call_token_ids(plain)


def test_presets_and_micro_size(tok):
    assert count_parameters(build_model("micro", tok)) < 1_000_000
    assert {k: (v["num_hidden_layers"], v["hidden_size"]) for k, v in PRESETS.items() if k.startswith("lmlm")} == {
        "lmlm-176m": (8, 512),
        "lmlm-382m": (12, 768),
    }
    with pytest.raises(ValueError):
        build_model("huge", tok)


def test_checkpoint_round_trip(tmp_path, tok):
    model = build_model("micro", tok).eval()
    save_checkpoint(tmp_path, model, tok, kind="lmlm", preset="micro")
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.meta == {"kind": "lmlm", "preset": "micro"}
    ids = torch.tensor([tok.encode(ANNOTATED, add_special_tokens=False)])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ckpt.model(ids).logits, atol=1e-6)
    assert call_token_ids(ckpt.tokenizer) == call_token_ids(tok)
    assert ckpt.tokenizer.decode(ckpt.tokenizer.encode(ANNOTATED, add_special_tokens=False), skip_special_tokens=False) == ANNOTATED
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")
