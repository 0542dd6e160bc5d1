"""Pretraining from scratch with TRL: the LMLM (values masked from the loss) and its baseline.

    from training.pretrain import pretrain, train_pair
    from training.config import PretrainConfig, load_config

    ckpt = pretrain(load_config(PretrainConfig, "demo", ["data=corpus.jsonl"]))
    pair = train_pair(load_config(PretrainConfig, "demo"), documents, "runs/x")  # LMLM + baseline

The trainer is TRL's ``SFTTrainer`` unchanged: rows arrive tokenised, packed and
labelled (``training.data``), and TRL's collator pads ``labels`` with -100, so the
masked loss needs no subclass. The baseline shares the LMLM's tokenizer and
architecture and sees the same documents with the calls removed, for the same
number of optimiser steps (the same token budget: steps x batch x context).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from lmlm_agent.model import build_model, count_parameters, save_checkpoint
from lmlm_agent.tokenizer import train_tokenizer
from training.config import PretrainConfig, TrainingOptions, launched_processes
from training.corpus import AnnotatedDocument, read_documents
from training.data import baseline_texts, pack, with_abstentions

logger = logging.getLogger(__name__)


def pretrain(
    config: PretrainConfig,
    documents: Sequence[AnnotatedDocument] | None = None,
    tokenizer: Any = None,
) -> Path:
    """Train an LMLM (or, with ``config.baseline``, the baseline) and return the checkpoint directory.

    ``documents`` default to ``config.data``; the tokenizer to ``config.tokenizer``,
    else (LMLM only) one trained on the annotated text. A baseline needs the LMLM's
    tokenizer (``tokenizer`` or ``config.tokenizer``); :func:`train_pair` passes it.
    """
    from transformers import set_seed

    docs = list(documents) if documents is not None else read_documents(config.data)
    if not docs:
        raise ValueError("no training documents")
    resume = resume_path(config)
    if config.baseline and tokenizer is None and not (config.tokenizer or resume):
        # BPE training is not bit-reproducible across processes: a baseline must be given the LMLM's.
        raise ValueError("the baseline needs the LMLM's tokenizer: set `tokenizer` to the LMLM checkpoint")
    args = config.sft_config()
    if tokenizer is None:
        tokenizer = _load_or_train_tokenizer(resume or config.tokenizer, docs, config, args)
    annotated = [d.annotated for d in docs]
    if config.baseline:
        texts = baseline_texts(annotated)
    else:
        texts = with_abstentions(annotated, config.abstention_share, config.seed) if config.abstention_share else annotated
    packed = pack(texts, tokenizer, config.context_length, mask_values=not config.baseline)
    kind = "baseline" if config.baseline else "lmlm"
    logger.info(
        "%s: %d documents -> %d rows of %d tokens (%d tokens, %d trained)",
        kind, len(docs), len(packed.input_ids), config.context_length, packed.tokens, packed.trained_tokens,
    )
    set_seed(config.seed)  # the initial weights, as well as the data order
    model = build_model(config.preset, tokenizer, **_position_override(config))
    meta = {
        "kind": kind,
        "preset": config.preset,
        "data": config.data or f"{len(docs)} documents",
        "documents": len(docs),
        "data_tokens": packed.tokens,
        "data_trained_tokens": packed.trained_tokens,
        "config": asdict(config),
    }
    return run_trainer(model, tokenizer, packed.to_dataset(), config, meta, resume=resume, args=args)


@dataclass
class TrainedPair:
    lmlm: Path
    baseline: Path


def train_pair(
    config: PretrainConfig,
    documents: Sequence[AnnotatedDocument],
    output_dir: str | Path,
) -> TrainedPair:
    """The LMLM and its baseline on the same documents: same tokenizer, size, steps and batch.

    Written to ``output_dir/lmlm`` and ``output_dir/baseline``.
    """
    out = Path(output_dir)
    docs = list(documents)
    tokenizer = train_tokenizer([d.annotated for d in docs], vocab_size=config.vocab_size)
    lmlm = pretrain(replace(config, output_dir=str(out / "lmlm"), baseline=False, resume=None), docs, tokenizer)
    baseline = pretrain(replace(config, output_dir=str(out / "baseline"), baseline=True, resume=None), docs, tokenizer)
    return TrainedPair(lmlm, baseline)


def run_trainer(
    model, tokenizer, dataset, options: TrainingOptions, meta: dict[str, Any], resume: str | None = None, args=None
) -> Path:
    """Train with TRL's SFTTrainer, then save model + tokenizer + lmlm.json in ``options.output_dir``.

    Under ``accelerate launch`` / torchrun every process trains on its share of each
    global batch (``args`` defaults to ``options.sft_config()``); only process 0 writes.
    """
    from trl import SFTTrainer

    args = args if args is not None else options.sft_config()
    launched = launched_processes()
    if args.world_size != launched:
        raise RuntimeError(
            f"launched as {launched} processes but the trainer runs as {args.world_size}: each process would train "
            "alone and all would write the checkpoint (on a machine without GPUs use device=cpu)"
        )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    state = trainer.state
    out = Path(options.output_dir)
    run_meta = {
        "parameters": count_parameters(trainer.model),
        "steps": state.global_step,
        "tokens": state.num_input_tokens_seen,  # summed over all processes
        "train_loss": result.training_loss,
        "train_seconds": round(seconds, 1),
        "processes": args.world_size,
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
    }
    logger.info("process %d of %d trained %d steps", args.process_index, args.world_size, state.global_step)
    if trainer.is_world_process_zero():  # under `accelerate launch`, one process writes
        save_checkpoint(out, trainer.model, tokenizer, **{**meta, **run_meta})
        (out / "train_log.json").write_text(json.dumps(state.log_history, indent=1))
        logger.info(
            "process %d saved %s (%d steps, %d tokens, loss %.3f)",
            args.process_index, out, state.global_step, state.num_input_tokens_seen, result.training_loss,
        )
    return out


def resume_path(options: TrainingOptions) -> str | None:
    """The trainer checkpoint to resume from: ``options.resume``, with 'last' resolved; None for a fresh run."""
    if not options.resume:
        return None
    if options.resume != "last":
        return options.resume
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(options.output_dir) if Path(options.output_dir).is_dir() else None
    if last is None:
        raise FileNotFoundError(f"resume=last but {options.output_dir} holds no trainer checkpoint")
    return last


def _load_or_train_tokenizer(path: str | None, docs: Sequence[AnnotatedDocument], config: PretrainConfig, args):
    from transformers import AutoTokenizer

    if path:
        return AutoTokenizer.from_pretrained(path)
    if args.world_size == 1:
        return train_tokenizer([d.annotated for d in docs], vocab_size=config.vocab_size)
    # Several processes must share one vocabulary, and BPE training is not guaranteed to be
    # bit-identical across processes: process 0 trains it and writes it where the checkpoint
    # will hold it; the others wait for it and read it.
    with args.main_process_first(local=False, desc="tokenizer training"):
        if args.process_index == 0:
            tokenizer = train_tokenizer([d.annotated for d in docs], vocab_size=config.vocab_size)
            tokenizer.save_pretrained(config.output_dir)
        else:
            tokenizer = AutoTokenizer.from_pretrained(config.output_dir)
    return tokenizer


def _position_override(config: PretrainConfig) -> dict[str, int]:
    # A preset's position range must cover the context; widen it rather than fail.
    from lmlm_agent.model import PRESETS

    preset_positions = PRESETS.get(config.preset, {}).get("max_position_embeddings", 0)
    if config.context_length > preset_positions:
        return {"max_position_embeddings": config.context_length}
    return {}


__all__ = ["TrainedPair", "pretrain", "resume_path", "run_trainer", "train_pair"]
