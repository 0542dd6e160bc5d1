"""The settings of `lmlm tofu` (benchmarks.tofu_run), importable without torch so the CLI's help stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.tofu_files import RETAIN_OF


@dataclass
class TofuRunConfig:
    data: str = field(default="", metadata={"help": "Directory of TOFU files (full, forgetNN, retainNN, *_perturbed), JSON list or JSON lines."})
    out: str = field(default="runs/tofu", metadata={"help": "Run directory: annotations, kb.sqlite, models/, tofu.json/.md/.png. Rerunning resumes."})
    forget_splits: str = field(default="forget01,forget05,forget10", metadata={"help": "Forget splits to run, comma-separated."})
    methods: str = field(default="grad_ascent,grad_diff,npo", metadata={"help": "Gradient unlearning methods for the baseline, comma-separated."})
    annotator: str = field(default="teacher", metadata={"help": "teacher (OpenAI-compatible, teacher_url), offline (the local offline teacher on DATA/teacher_records.jsonl), or a distilled annotator directory."})
    teacher_url: str = field(default="", metadata={"help": "Teacher base URL (empty: env LMLM_TEACHER_BASE_URL or the default)."})
    teacher_timeout: float = field(default=60.0, metadata={"help": "Seconds per teacher request; an answer still timed out after the retries is counted as failed (and asked again on a rerun)."})
    teacher_retries: int = field(default=4, metadata={"help": "Retries of a timed-out or failed teacher request."})
    relation_match: str = field(default="semantic", metadata={"help": "How a lookup matches relation names: semantic (MiniLM; a teacher may name one relation two ways across answers) or exact."})
    namespace: str = field(default="", metadata={"help": "Knowledge-base namespace (empty: tofu-<name of out>)."})
    qa_per_author: int = field(default=20, metadata={"help": "QA per author in full, for rows without an author field (TOFU: 20)."})
    checkpoint: str = field(default="", metadata={"help": "Start from: a run directory with lmlm/ and baseline/, or one HF causal LM with the four call tokens; empty: from scratch."})
    preset: str = field(default="small", metadata={"help": "Model size from scratch (micro, small, demo, lmlm-176m, ...)."})
    vocab_size: int = field(default=1024, metadata={"help": "Tokenizer vocabulary from scratch."})
    context_length: int = field(default=256, metadata={"help": "Tokens per QA row (longer rows are cut)."})
    epochs: float = field(default=5.0, metadata={"help": "Fine-tuning epochs (TOFU: 5)."})
    max_steps: int = field(default=-1, metadata={"help": "Fine-tuning steps per model; -1: epochs decide."})
    learning_rate: float | None = field(default=None, metadata={"help": "Fine-tuning learning rate; None: TOFU's 1e-5 from a checkpoint, 1e-3 from scratch."})
    batch_size: int = field(default=32, metadata={"help": "QA rows per optimiser step (TOFU: 32)."})
    per_device_batch_size: int = field(default=8, metadata={"help": "QA rows per forward pass; the rest is gradient accumulation."})
    unlearn_epochs: float = field(default=5.0, metadata={"help": "Unlearning epochs over the forget split (TOFU: 5)."})
    unlearn_lr: float = field(default=1e-5, metadata={"help": "Unlearning learning rate (TOFU: 1e-5)."})
    unlearn_batch: int = field(default=32, metadata={"help": "Forget (and retain) QA per unlearning step (TOFU: 32)."})
    npo_beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature (TOFU/NPO: 0.1)."})
    eval_questions: int | None = field(default=None, metadata={"help": "Questions per utility split (retain, real authors, world facts; None: all). The forget splits are always scored whole."})
    rouge_tokens: int = field(default=200, metadata={"help": "Greedy tokens per answer for ROUGE-L (TOFU: 200; 0 skips ROUGE)."})
    eval_batch: int = field(default=16, metadata={"help": "Answers per scoring forward pass."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda (training through the trainer's accelerate, scoring and unlearning on that device)."})
    threads: int = field(default=1, metadata={"help": "torch CPU threads."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, data order and unlearning batches."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})

    def names(self, csv: str) -> list[str]:
        return [n.strip() for n in csv.split(",") if n.strip()]

    @property
    def splits(self) -> list[str]:
        bad = [s for s in self.names(self.forget_splits) if s not in RETAIN_OF]
        if bad:
            raise ValueError(f"unknown forget split(s) {', '.join(bad)}; choose among {', '.join(RETAIN_OF)}")
        return self.names(self.forget_splits)
