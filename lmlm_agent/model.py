"""Model presets (transformers Llama configs) and checkpoints as ordinary HF directories."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Sizes by layers and width; the published 176M/382M models use these depths and widths
# with a 32k vocabulary and context 1024 (DESIGN.md section 5).
PRESETS: dict[str, dict[str, int]] = {
    "micro": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=256),
    "small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=344, max_position_embeddings=256),
    "demo": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=704, max_position_embeddings=512),
    "lmlm-176m": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=2048, max_position_embeddings=1024),
    "lmlm-382m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, max_position_embeddings=1024),
}

META_FILE = "lmlm.json"


def build_model(preset: str, tokenizer, **overrides: Any):
    """A freshly initialised LlamaForCausalLM sized by ``preset`` for ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    size = {**PRESETS[preset], **overrides}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=preset in ("micro", "small", "demo"),
        **size,
    )
    return LlamaForCausalLM(config)


@dataclass
class Checkpoint:
    model: Any
    tokenizer: Any
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(path: str | Path, model, tokenizer, **meta: Any) -> Path:
    """Save model + tokenizer + ``lmlm.json`` (kind, preset, anything else worth keeping)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return path


def load_checkpoint(path: str | Path, device: str | None = None) -> Checkpoint:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    if device:
        model.to(device)
    model.eval()
    meta_file = path / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    return Checkpoint(model, tokenizer, meta, path)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
