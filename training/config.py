"""Configuration of the training commands: one dataclass each, loaded from YAML with overrides.

    config = load_config(PretrainConfig, "demo", ["max_steps=50", "output_dir=runs/x"])

A config source is a YAML file or the name of a preset in ``training/configs/``
(``micro``, ``demo``, ``lmlm-176m``, ``lmlm-382m``, ``finetune-demo``). Unknown keys are
an error, so a typo never trains with a silent default. The loading is the project's one
configuration path (:mod:`tools.settings`); what is the trainer's own is the presets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

from tools.settings import load_settings

CONFIG_DIR = Path(__file__).parent / "configs"


def launched_processes() -> int:
    """How many processes the launcher started: torchrun / `accelerate launch` set WORLD_SIZE, mpirun its own."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


@dataclass
class TrainingOptions:
    """What every training command shares: optimisation, logging, checkpoints."""

    output_dir: str = field(default="runs/lmlm", metadata={"help": "Directory of the final checkpoint (and of intermediate trainer checkpoints)."})
    context_length: int = field(default=512, metadata={"help": "Tokens per training row; documents are packed to this length."})
    per_device_batch_size: int = field(default=8, metadata={"help": "Rows per device per forward pass."})
    effective_batch_size: int | None = field(
        default=None,
        metadata={"help": "Rows per optimiser step over all devices; sets gradient accumulation. None: no accumulation."},
    )
    max_steps: int = field(default=100, metadata={"help": "Optimiser steps; -1 trains for num_epochs instead. Fixes the token budget."})
    num_epochs: float = field(default=1.0, metadata={"help": "Epochs over the packed data when max_steps is -1."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate of AdamW."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name (cosine, linear, constant, ...)."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss, learning rate and token counts every N steps."})
    save_steps: int = field(default=0, metadata={"help": "Save a resumable trainer checkpoint every N steps; 0: only the final model."})
    save_total_limit: int = field(default=2, metadata={"help": "Intermediate trainer checkpoints to keep."})
    seed: int = field(default=42, metadata={"help": "Seed of model initialisation and data order."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; None: on when a CUDA device supports it."})
    device: str = field(
        default="auto",
        metadata={"help": "auto (CUDA when available, else CPU), cuda or cpu. Under `accelerate launch` / torchrun "
                          "each process takes one GPU (NCCL) or, on CPU, the processes talk over gloo."},
    )
    resume: str | None = field(
        default=None,
        metadata={"help": "Resume from a trainer checkpoint: its path, or 'last' for the newest one in output_dir."},
    )
    report_to: str = field(default="none", metadata={"help": "transformers integrations to log to (none, tensorboard, wandb, ...)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def uses_cpu(self) -> bool:
        """Whether to train on the CPU; a CPU run under several processes is then data-parallel over gloo."""
        import torch

        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, not {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device=cuda but torch sees no CUDA device")
        # Telling the trainer "cpu" explicitly matters: without it, processes started by
        # `accelerate launch`/torchrun on a machine without GPUs each train alone.
        return self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available())

    def gradient_accumulation_steps(self) -> int:
        if not self.effective_batch_size:
            return 1
        world = launched_processes()
        steps, rest = divmod(self.effective_batch_size, self.per_device_batch_size * world)
        if steps < 1 or rest:
            raise ValueError(
                f"effective_batch_size {self.effective_batch_size} is not a multiple of "
                f"per_device_batch_size {self.per_device_batch_size} x {world} processes"
            )
        return steps

    def sft_config(self, **overrides: Any):
        """The TRL ``SFTConfig`` for these options (data is pre-tokenised, so preparation is skipped)."""
        import torch
        from trl import SFTConfig

        cpu = self.uses_cpu()
        bf16 = self.bf16
        if bf16 is None:
            bf16 = not cpu and torch.cuda.is_bf16_supported()
        return SFTConfig(
            output_dir=self.output_dir,
            max_length=self.context_length,
            per_device_train_batch_size=self.per_device_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps(),
            max_steps=self.max_steps,
            num_train_epochs=self.num_epochs,
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            logging_steps=self.logging_steps,
            save_strategy="steps" if self.save_steps else "no",
            save_steps=self.save_steps or 500,
            save_total_limit=self.save_total_limit,
            seed=self.seed,
            bf16=bf16,
            report_to=self.report_to,
            disable_tqdm=not self.progress,
            # Small models: recomputing activations costs more than it saves (TRL turns it on by default).
            activation_checkpointing=False,
            use_cpu=cpu,
            dataloader_pin_memory=not cpu,
            # Rows are already tokenised, masked and packed; the collator only pads.
            dataset_kwargs={"skip_prepare_dataset": True},
            include_num_input_tokens_seen="non_padding",
            **overrides,
        )


@dataclass
class PretrainConfig(TrainingOptions):
    """`lmlm train pretrain` (values masked) and `lmlm train baseline` (same text, calls removed)."""

    data: str = field(default="", metadata={"help": "Annotated documents: our JSONL or the published annotation JSON."})
    preset: str = field(default="demo", metadata={"help": "Model size: micro, small, demo, lmlm-176m, lmlm-382m (lmlm_agent.model.PRESETS)."})
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Directory of a tokenizer (e.g. the LMLM checkpoint, for its baseline); None: train one on the data."},
    )
    vocab_size: int = field(default=4096, metadata={"help": "Vocabulary of a newly trained tokenizer (the four call tokens included)."})
    baseline: bool = field(default=False, metadata={"help": "Train the baseline: the calls are stripped from the text."})
    abstention_share: float = field(default=0.0, metadata={"help": "LMLM only: share of calls answered `unknown` and repeated as `unknown` (training.data.with_abstentions), so that the model says unknown after a miss."})


@dataclass
class FinetuneConfig(TrainingOptions):
    """`lmlm train finetune`: question -> answer fine-tuning; prompt and looked-up values masked."""

    checkpoint: str = field(default="", metadata={"help": "The pretrained checkpoint to start from."})
    data: str = field(default="", metadata={"help": "JSONL of {question, answer}; answers may contain lookup calls."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate of AdamW."})


C = TypeVar("C")  # any config dataclass (the annotator's too)


def config_path(source: str | Path) -> Path:
    """A YAML file, or the preset of that name in training/configs/."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    preset = CONFIG_DIR / f"{source}.yaml"
    if not preset.exists():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no config file {source!r} and no preset of that name (presets: {names})")
    return preset


def load_config(cls: type[C], source: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Build ``cls`` from a YAML file or preset, then ``key=value`` overrides (values parsed as YAML);
    :func:`tools.settings.load_settings` with the presets of training/configs/."""
    return load_settings(cls, None if source is None else config_path(source), overrides)


__all__ = [
    "CONFIG_DIR", "FinetuneConfig", "PretrainConfig", "TrainingOptions", "config_path", "launched_processes", "load_config",
]
