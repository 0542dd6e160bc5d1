"""Training speed: the masked-loss trainer against plain TRL SFT, same model, same rows, one run.

- ``masked``: what ``lmlm train pretrain`` runs: TRL ``SFTTrainer`` on rows with
  ``input_ids`` and ``labels`` (values and ``<|db_end|>`` at -100).
- ``plain``: TRL ``SFTTrainer`` on the same ``input_ids`` without labels (TRL's
  collator then trains every token): ordinary causal-LM fine-tuning.

Both start from the same initial weights and see the same rows in the same order.
Throughput counts input tokens per second of optimiser steps, after ``warmup``
untimed steps; the two arms alternate for ``rounds`` rounds in ABBA order (the
machine may be shared) and each arm's figure is its total tokens over its total
time; the per-round ratios show the noise. The one-off
cost of building the mask (in data preparation) is measured separately.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmlm_agent.model import build_model, count_parameters
from lmlm_agent.tokenizer import train_tokenizer
from training.config import TrainingOptions
from training.corpus import read_documents
from training.data import pack

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/lmlm-annotations/squad-train1k.gpt4o.json"


@dataclass
class TrainSpeedConfig:
    data: str = field(default=str(DEFAULT_DATA), metadata={"help": "Annotated documents to train on."})
    preset: str = field(default="demo", metadata={"help": "Model preset."})
    vocab_size: int = field(default=4096, metadata={"help": "Tokenizer vocabulary."})
    context_length: int = field(default=256, metadata={"help": "Tokens per row."})
    batch_size: int = field(default=8, metadata={"help": "Rows per step."})
    steps: int = field(default=8, metadata={"help": "Timed steps per arm and round."})
    warmup: int = field(default=2, metadata={"help": "Untimed steps before timing, per arm and round."})
    rounds: int = field(default=4, metadata={"help": "Rounds of the two arms, in ABBA order."})
    max_documents: int = field(default=300, metadata={"help": "Documents used (enough rows for every step)."})


def _timed_train(model, tokenizer, dataset, cfg: TrainSpeedConfig, out: Path) -> tuple[int, float]:
    """Train ``warmup + steps`` steps; return (tokens, seconds) of the timed steps."""
    from transformers import TrainerCallback
    from trl import SFTTrainer

    class Timer(TrainerCallback):
        def __init__(self):
            self.seconds, self.tokens, self.start, self.seen = 0.0, 0, 0.0, 0

        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()
            self.seen = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kw):
            if state.global_step > cfg.warmup:
                self.seconds += time.perf_counter() - self.start
                self.tokens += state.num_input_tokens_seen - self.seen

    options = TrainingOptions(
        output_dir=str(out),
        context_length=cfg.context_length,
        per_device_batch_size=cfg.batch_size,
        max_steps=cfg.warmup + cfg.steps,
        learning_rate=1e-3,
        lr_scheduler="constant",
        logging_steps=10_000,
        progress=False,
    )
    timer = Timer()
    trainer = SFTTrainer(model=model, args=options.sft_config(), train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return timer.tokens, timer.seconds


def run(cfg: TrainSpeedConfig, out_dir: str | Path) -> dict:
    import torch
    from transformers import set_seed

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = read_documents(cfg.data)[: cfg.max_documents]
    texts = [d.annotated for d in docs]
    tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size)

    start = time.perf_counter()
    masked_rows = pack(texts, tokenizer, cfg.context_length, mask_values=True)
    prep_masked = time.perf_counter() - start
    start = time.perf_counter()
    pack(texts, tokenizer, cfg.context_length, mask_values=False)
    prep_plain = time.perf_counter() - start

    needed = (cfg.warmup + cfg.steps) * cfg.batch_size
    if len(masked_rows.input_ids) < needed:
        raise ValueError(f"{len(masked_rows.input_ids)} rows, {needed} needed: raise max_documents")
    masked_ds = masked_rows.to_dataset().select(range(needed))
    plain_ds = masked_ds.remove_columns("labels")

    set_seed(0)
    init = build_model(cfg.preset, tokenizer).state_dict()
    totals = {"masked": [0, 0.0], "plain": [0, 0.0]}
    per_round = []
    arms = [("masked", masked_ds), ("plain", plain_ds)]
    for r in range(cfg.rounds):
        speeds = {}
        # ABBA order: neither arm always runs first (the shared machine's load drifts).
        for arm, dataset in arms if r % 2 == 0 else arms[::-1]:
            model = build_model(cfg.preset, tokenizer)
            model.load_state_dict(init)
            tokens, seconds = _timed_train(model, tokenizer, dataset, cfg, out / f"_{arm}")
            totals[arm][0] += tokens
            totals[arm][1] += seconds
            speeds[arm] = tokens / seconds
        per_round.append({**{a: round(v, 1) for a, v in speeds.items()}, "ratio": round(speeds["masked"] / speeds["plain"], 3)})

    speed = {arm: t / s for arm, (t, s) in totals.items()}
    result = {
        "benchmark": "train_speed",
        "config": asdict(cfg),
        "parameters": count_parameters(build_model(cfg.preset, tokenizer)),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "tokens_per_second": {arm: round(v, 1) for arm, v in speed.items()},
        "timed_tokens": {arm: t for arm, (t, _) in totals.items()},
        "ratio_masked_over_plain": round(speed["masked"] / speed["plain"], 3),
        "rounds": per_round,
        "target_ratio": 0.95,
        "masked_fraction_of_tokens": round(1 - masked_rows.trained_tokens / masked_rows.tokens, 3),
        "data_prep_tokens_per_second": {"with_value_mask": round(masked_rows.tokens / prep_masked),
                                        "without_mask": round(masked_rows.tokens / prep_plain)},
    }
    (out / "train_speed.json").write_text(json.dumps(result, indent=2))
    (out / "train_speed.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    c, tps, prep = r["config"], r["tokens_per_second"], r["data_prep_tokens_per_second"]
    verdict = "meets" if r["ratio_masked_over_plain"] >= r["target_ratio"] else "misses"
    return "\n".join([
        "# Training speed: masked-loss trainer vs plain TRL SFT",
        "",
        f"Model `{c['preset']}` ({r['parameters']:,} parameters), rows of {c['context_length']} tokens, batch {c['batch_size']}, "
        f"{c['steps']} timed steps per arm x {c['rounds']} rounds (after {c['warmup']} warm-up steps); "
        f"{r['machine']['cuda'] or 'CPU'}, {r['machine']['threads']} threads.",
        "",
        "| arm | tokens/s | timed tokens |",
        "|---|---|---|",
        f"| masked (values at -100) | {tps['masked']:.1f} | {r['timed_tokens']['masked']} |",
        f"| plain TRL SFT | {tps['plain']:.1f} | {r['timed_tokens']['plain']} |",
        "",
        f"Ratio masked / plain: **{r['ratio_masked_over_plain']:.3f}** ({verdict} the {r['target_ratio']} target); "
        f"per round: {', '.join(str(x['ratio']) for x in r['rounds'])}. "
        f"{r['masked_fraction_of_tokens']:.1%} of the tokens are masked.",
        "",
        f"Data preparation (once): {prep['with_value_mask']:,} tokens/s with the value mask, "
        f"{prep['without_mask']:,} without.",
        "",
    ])


__all__ = ["TrainSpeedConfig", "markdown", "run"]
