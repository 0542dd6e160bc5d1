"""QA fine-tuning with TRL: question -> answer, the answer free to contain lookup calls.

    from training.finetune import finetune, QAExample
    finetune(load_config(FinetuneConfig, "finetune-demo", ["checkpoint=runs/demo/lmlm"]),
             [QAExample("When was Ada Lovelace born?",
                        "<|db_entity|> Ada Lovelace<|db_relationship|> birth year<|db_return|> 1815<|db_end|> In 1815.")])

Each row is ``QA_PROMPT`` + " " + answer + EOS. The prompt is masked, and so are the
looked-up values and ``<|db_end|>`` in the answer (the same value mask as in
pretraining); the model learns to ask, not to recall. A baseline checkpoint is
fine-tuned on the answers with the calls stripped, since it cannot look anything up.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from lmlm_agent.format import QA_PROMPT, strip_calls
from lmlm_agent.model import load_checkpoint
from training.config import FinetuneConfig
from training.corpus import iter_jsonl
from training.data import qa_example
from training.pretrain import resume_path, run_trainer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QAExample:
    question: str
    answer: str


def read_qa(path: str | Path) -> list[QAExample]:
    """JSONL rows with ``question`` and ``answer`` (TOFU-style)."""
    return [QAExample(row["question"], row["answer"]) for row in iter_jsonl(path)]


def qa_dataset(examples: Iterable[QAExample], tokenizer, max_length: int, strip: bool = False):
    """Tokenised, masked rows as a ``datasets.Dataset``; ``strip`` removes calls from the answers."""
    from datasets import Dataset

    rows = []
    for ex in examples:
        answer = strip_calls(ex.answer) if strip else ex.answer
        row = qa_example(ex.question, answer, tokenizer, max_length)
        if row is not None:
            rows.append(row)
    if not rows:
        raise ValueError("no fine-tuning example has a trained token")
    return Dataset.from_dict({k: [r[k] for r in rows] for k in ("input_ids", "labels")})


def finetune(config: FinetuneConfig, examples: Sequence[QAExample] | None = None) -> Path:
    """Fine-tune ``config.checkpoint`` on QA pairs; returns the new checkpoint directory."""
    from transformers import set_seed

    if not config.checkpoint:
        raise ValueError("finetune needs a checkpoint to start from")
    examples = list(examples) if examples is not None else read_qa(config.data)
    set_seed(config.seed)
    base = load_checkpoint(config.checkpoint)
    base.model.train()
    kind = base.meta.get("kind", "lmlm")
    dataset = qa_dataset(examples, base.tokenizer, config.context_length, strip=kind == "baseline")
    logger.info("finetune %s (%s): %d QA rows", config.checkpoint, kind, len(dataset))
    meta = {
        **base.meta,  # preset, data, ...; this run's steps, tokens and loss replace the base's
        "kind": kind,
        "finetuned": "qa",
        "base_checkpoint": str(config.checkpoint),
        "base_steps": base.meta.get("steps"),
        "qa_prompt": QA_PROMPT,
        "qa_examples": len(dataset),
        "config": asdict(config),
    }
    return run_trainer(base.model, base.tokenizer, dataset, config, meta, resume=resume_path(config))


__all__ = ["QAExample", "finetune", "qa_dataset", "read_qa"]
