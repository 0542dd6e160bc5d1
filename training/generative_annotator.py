"""The generative annotator: a causal LM fine-tuned with TRL to rewrite a paragraph with its lookup calls.

Training (``train_generative``): each teacher record becomes a prompt (the paragraph's
tokens, then the end-of-text token) and a completion (the same tokens with the call
blocks inserted before the token where each call's value begins, then end-of-text).
TRL's ``SFTTrainer`` fine-tunes any HF causal LM directory on them, fully or with LoRA
(``peft``), with the loss on the completion only. Long paragraphs are cut into windows
that fit the base model's context twice over; records that fail the teacher's checks
are counted and skipped; a base without the four call tokens gets them added.

Decoding cannot change the text. Outside a call the only tokens allowed are the next
input token and ``<|db_entity|>``; inside a call, field text until ``<|db_relationship|>``,
``<|db_return|>`` and ``<|db_end|>``, each field at most ``max_field_tokens`` long (a call
past its budget, or with an empty field, is dropped and counted, and the copy goes on
where it stopped). Since most of the output is a copy of the input, the input is a free
draft: ``draft_tokens`` input tokens are verified in one forward pass and the longest
prefix the model agrees with is kept, instead of one forward pass per token. The result
is the same as token-by-token greedy decoding (``draft_tokens=1``), which the tests check.

The calls come back as character offsets of the input (the first non-space character
of the token they precede) and are rendered with ``insert_calls``, so stripping them
gives the input back exactly.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from lmlm_agent.format import SPECIAL_TOKENS, LookupCall, clean_field
from training.annotators import Annotation, config_from, finish, screen

_SENTENCE_END = (".", "!", "?")


@dataclass
class GenerativeConfig:
    """The base model, the SFT budget and the decoding settings of a generative annotator."""

    base: str = field(default="", metadata={"help": "HF causal LM directory to fine-tune (the call tokens are added if missing)."})
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank (peft); 0: full fine-tuning."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training windows."})
    max_steps: int = field(default=0, metadata={"help": "Stop after this many optimiser steps (0: no limit)."})
    max_documents: int = field(default=0, metadata={"help": "Train on at most this many records (0: all)."})
    batch_size: int = field(default=8, metadata={"help": "Windows per optimiser step."})
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate (1e-4 suits LoRA on a pretrained base)."})
    warmup: float = field(default=0.05, metadata={"help": "Fraction of steps with a linear warm-up."})
    window_tokens: int = field(
        default=0, metadata={"help": "Input tokens per window; 0: what fits the base's context with the copy and its calls."}
    )
    max_field_tokens: int = field(default=16, metadata={"help": "Longest entity, relation or value a call may write, in tokens."})
    max_calls_in_a_row: int = field(default=4, metadata={"help": "Calls allowed before one input token; then it is copied."})
    copy_values: bool = field(
        default=False,
        metadata={"help": "A value may only be the input's next tokens (as the extractive annotator's); off: free text, as the teacher's."},
    )
    draft_tokens: int = field(default=16, metadata={"help": "Input tokens verified per forward pass (1: token by token)."})
    threads: int = field(default=2, metadata={"help": "torch CPU threads."})
    device: str = field(default="", metadata={"help": "cpu or cuda; empty: cuda when available."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})


# --------------------------------------------------------------------------- the base model


def new_base(texts: Iterable[str], out: str | Path, preset: str = "small", vocab_size: int = 4096, context: int = 0) -> Path:
    """A causal LM trained from nothing: this project's byte-level BPE on ``texts`` (with the call tokens) and a
    freshly initialised model of ``preset`` (``context``: its positions, 0: the preset's). For users without a pretrained base; any HF directory works as well."""
    from lmlm_agent.model import build_model
    from lmlm_agent.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    model = build_model(preset, tokenizer, **({"max_position_embeddings": context} if context else {}))
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def ensure_call_tokens(model, tokenizer) -> int:
    """Give a base the four call tokens (and a pad token) if it lacks them; returns how many tokens were added."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the base tokenizer has no end-of-text token; the annotator needs one to end its prompt")
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return len(missing)


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)


def call_budget(config: GenerativeConfig) -> int:
    """Tokens one call may take: three fields and four special tokens."""
    return 3 * config.max_field_tokens + 4


def window_size(model, config: GenerativeConfig) -> int:
    """Input tokens per window: prompt and copy fit the context, with room for a few calls."""
    if config.window_tokens:
        return config.window_tokens
    return max(16, (context_length(model) - 3 - 2 * call_budget(config)) // 2)


# --------------------------------------------------------------------------- text <-> tokens


@dataclass
class Encoded:
    """A text's tokens, and per token the character offset where a call before it goes (past its leading spaces)."""

    ids: list[int]
    at: list[int]
    ends: list[int]


def encode(tokenizer, text: str) -> Encoded:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    at, ends = [], []
    for s, e in enc["offset_mapping"]:
        while s < e and text[s].isspace():
            s += 1
        at.append(s)
        ends.append(e)
    return Encoded(list(enc["input_ids"]), at, ends)


def split_windows(enc: Encoded, text: str, size: int) -> list[tuple[int, int]]:
    """Token ranges of at most ``size`` tokens covering the text once, cut after a sentence end where one is near."""
    out, start, n = [], 0, len(enc.ids)
    while start < n:
        end = min(n, start + size)
        if end < n:
            for i in range(end - 1, start + size // 2, -1):
                if text[enc.at[i] : enc.ends[i]].rstrip().endswith(_SENTENCE_END):
                    end = i + 1
                    break
        out.append((start, end))
        start = end
    return out


def prompt_ids(tokenizer, source: Sequence[int]) -> list[int]:
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return head + list(source) + [tokenizer.eos_token_id]


def call_token_ids(tokenizer, call: LookupCall) -> list[int]:
    """The block of a call as ``render_call`` writes it: each field after one space."""
    ent, rel, ret, end = (tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS)

    def words(s: str) -> list[int]:
        return tokenizer(" " + s, add_special_tokens=False)["input_ids"]

    return [ent, *words(call.entity), rel, *words(call.relation), ret, *words(call.value or ""), end]


def training_windows(tokenizer, text: str, placed: list[tuple[int, LookupCall]], size: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, completion) token lists of one checked record, one pair per window."""
    enc = encode(tokenizer, text)
    before: dict[int, list[LookupCall]] = {}
    for offset, call in sorted(placed, key=lambda p: p[0]):
        # The token holding the value's first character; a call at the very end precedes nothing and is dropped.
        k = next((i for i, e in enumerate(enc.ends) if e > offset), None)
        if k is not None:
            before.setdefault(k, []).append(call)
    out = []
    for a, b in split_windows(enc, text, size):
        completion: list[int] = []
        for i in range(a, b):
            for call in before.get(i, []):
                completion += call_token_ids(tokenizer, call)
            completion.append(enc.ids[i])
        out.append((prompt_ids(tokenizer, enc.ids[a:b]), completion + [tokenizer.eos_token_id]))
    return out


# --------------------------------------------------------------------------- training


@dataclass
class GenerativeReport:
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # records failing the teacher's checks, windows too long
    windows: int = 0
    calls: int = 0
    added_tokens: int = 0
    window_tokens: int = 0
    parameters: int = 0
    trainable_parameters: int = 0
    steps: int = 0
    mean_loss: float = 0.0  # over all steps (the trainer's training_loss)
    seconds: float = 0.0
    device: str = ""


def _device(config: GenerativeConfig) -> str:
    import torch

    return config.device or ("cuda" if torch.cuda.is_available() else "cpu")


def sft_rows(tokenizer, model, documents: Iterable[tuple[str, str]], config: GenerativeConfig, report: GenerativeReport) -> list[dict]:
    """Pre-tokenized SFT rows (``input_ids``, ``completion_mask``) from (plain, annotated) teacher records."""
    from training.teacher import check_answer

    size, limit = window_size(model, config), context_length(model)
    report.window_tokens = size
    skipped: Counter = Counter()
    rows = []
    for plain, annotated in documents:
        if config.max_documents and report.records >= config.max_documents:
            break
        checked = check_answer(plain, annotated)
        if checked.annotated is None or not plain.strip() or any(t in plain for t in SPECIAL_TOKENS):
            skipped[f"records_{checked.status if checked.annotated is None else 'unusable'}"] += 1
            continue
        report.records += 1
        report.calls += len(checked.placed)
        for prompt, completion in training_windows(tokenizer, plain, checked.placed, size):
            if len(prompt) + len(completion) > limit:
                skipped["windows_too_long"] += 1  # more calls than the context holds: never truncated into a lesson
                continue
            rows.append({"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)})
    report.skipped, report.windows = dict(skipped), len(rows)
    return rows


def build_trainer(model, tokenizer, rows: list[dict], config: GenerativeConfig, output_dir: str | Path, train_embeddings: bool = False):
    """TRL's SFTTrainer on pre-tokenized rows; its labels are -100 outside the completion (the paragraph given)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.lr,
        warmup_steps=config.warmup,
        lr_scheduler_type="cosine",
        completion_only_loss=True,
        max_length=context_length(model),
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        use_cpu=_device(config) == "cpu",
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
    )
    peft_config = None
    if config.lora_rank:
        from peft import LoraConfig

        # Call tokens just added start untrained: then the embeddings learn too, beside the adapters. (peft's
        # trainable_token_indices would train only their rows, but TRL's fused loss head cannot read a wrapped head.)
        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM",
                                 modules_to_save=["embed_tokens", "lm_head"] if train_embeddings else None)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=peft_config)


def train_generative(documents: Iterable[tuple[str, str]], config: GenerativeConfig, work_dir: str | Path) -> tuple["GenerativeAnnotator", GenerativeReport]:
    """Fine-tune ``config.base`` on (plain, annotated) teacher records; ``work_dir`` holds the trainer's scratch files."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not config.base:
        raise ValueError("no base model: give the directory of an HF causal LM (or make one with new_base)")
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    model = AutoModelForCausalLM.from_pretrained(config.base, dtype=torch.float32)
    report = GenerativeReport(device=_device(config))
    report.added_tokens = ensure_call_tokens(model, tokenizer)
    rows = sft_rows(tokenizer, model, documents, config, report)
    if not rows:
        raise ValueError(f"no usable training windows ({report.skipped or 'no records'})")
    trainer = build_trainer(model, tokenizer, rows, config, work_dir, train_embeddings=report.added_tokens > 0)
    result = trainer.train()
    model = trainer.model
    report.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if config.lora_rank:
        model = model.merge_and_unload()
    report.parameters = sum(p.numel() for p in model.parameters())
    report.steps, report.mean_loss = result.global_step, float(result.training_loss)
    report.seconds = time.perf_counter() - started
    model.eval()
    return GenerativeAnnotator(model, tokenizer, config, asdict(report)), report


# --------------------------------------------------------------------------- copy-verified decoding


def _cut(cache, length: int) -> None:
    """Keep the first ``length`` positions of a KV cache (transformers 5 crops by a negative count)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class _Decoder:
    """Greedy decoding constrained to copy the input; ``draft`` input tokens are verified per forward pass."""

    def __init__(self, model, tokenizer, config: GenerativeConfig):
        import torch

        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.ent, rel, ret, end = (tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS)
        self.closing = (rel, ret, end)  # the token that ends the entity, the relation, the value
        self.limit = context_length(model)
        vocab = model.get_output_embeddings().weight.shape[0]
        never = {self.ent, rel, ret, end, *tokenizer.all_special_ids}
        self.masks = []
        for close in self.closing:  # per field: every special token but its closing one is forbidden
            mask = torch.zeros(vocab)
            mask[[t for t in never if t != close and t < vocab]] = float("-inf")
            self.masks.append(mask)

    def _forward(self, ids: list[int], cache):
        import torch

        out = self.model(torch.tensor([ids], device=self.model.device), cache=cache, use_cache=True)
        return out.logits[0].float(), out.cache

    def _may_call(self, length: int, remaining: int, in_row: int) -> bool:
        """A call needs room for itself and for the rest of the copy; after a few in a row, the input goes on."""
        return in_row < self.config.max_calls_in_a_row and length + call_budget(self.config) + remaining <= self.limit

    def window(self, source: list[int], draft: int) -> tuple[list[tuple[int, tuple[str, str, str]]], int]:
        """Calls as (index of the input token they precede, (entity, relation, value)), and the count dropped."""
        logits, cache = self._forward(prompt_ids(self.tokenizer, source), None)
        last, length = logits[-1], cache.get_seq_length()
        calls, dropped, in_row, i, n = [], 0, 0, 0, len(source)
        while i < n:
            if self._may_call(length, n - i, in_row) and last[self.ent] > last[source[i]]:
                call, cache, length, after = self._call(cache, length, last, source[i:])
                if call is None:
                    dropped, in_row = dropped + 1, self.config.max_calls_in_a_row  # copy the next token instead
                else:
                    calls.append((i, call))
                    in_row, last = in_row + 1, after
                continue
            chunk = source[i : i + draft]
            logits, cache = self._forward(chunk, cache)
            take = len(chunk)
            for j in range(1, len(chunk)):  # the model's choice after chunk[:j]: the next input token or a call?
                if self._may_call(length + j, n - i - j, 0) and logits[j - 1, self.ent] > logits[j - 1, chunk[j]]:
                    take = j
                    break
            _cut(cache, length + take)
            length, last, i, in_row = length + take, logits[take - 1], i + take, 0
        return calls, dropped

    def _call(self, cache, length: int, last, ahead: list[int]):
        """Write one call after ``<|db_entity|>``; on failure the cache is cut back to before it."""
        start, fields_ids, f, feed = length, [[], [], []], 0, self.ent
        while True:
            logits, cache = self._forward([feed], cache)
            length += 1
            if f == 3:  # <|db_end|> is in: the logits after it choose the next input token
                texts = [clean_field(self.tokenizer.decode(x)) for x in fields_ids]
                if all(texts):
                    return tuple(texts), cache, length, logits[-1]
                break
            scores = logits[-1] + self.masks[f]
            if f == 2 and self.config.copy_values:  # the value so far is a prefix of the input ahead: go on with it, or end
                allowed = [self.closing[2]] + ahead[len(fields_ids[2]) : len(fields_ids[2]) + 1]
                tok = allowed[int(scores[allowed].argmax())]
            else:
                tok = int(scores.argmax())
            if tok == self.closing[f]:
                f += 1
            elif len(fields_ids[f]) == self.config.max_field_tokens:
                break  # past its budget: the call is dropped, the text is not
            else:
                fields_ids[f].append(tok)
            feed = tok
        _cut(cache, start)
        return None, cache, start, last


class GenerativeAnnotator:
    """A fine-tuned causal LM that writes calls into a copy of its input (``kind`` generative)."""

    kind = "generative"

    def __init__(self, model, tokenizer, config: GenerativeConfig, report: dict | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.report = report or {}
        self._decoder = _Decoder(model, tokenizer, config)

    def annotate(self, texts: Sequence[str], batch_size: int = 32, draft_tokens: int | None = None) -> list[Annotation]:
        """Annotate texts one window at a time; stripping the calls of each result gives back its text exactly."""
        import torch

        draft = draft_tokens or self.config.draft_tokens
        size = window_size(self.model, self.config)
        results, todo = screen(texts)
        with torch.inference_mode():
            for i in todo:
                r, enc = results[i], encode(self.tokenizer, texts[i])
                spans = split_windows(enc, texts[i], size)
                r.windows = len(spans)
                for a, b in spans:
                    calls, dropped = self._decoder.window(enc.ids[a:b], draft)
                    r.calls += [(enc.at[a + k], LookupCall(*fields_)) for k, fields_ in calls]
                    r.dropped_calls += dropped
                finish(r)
        return results

    def describe(self) -> dict[str, Any]:
        c = self.model.config
        return {
            "kind": self.kind,
            "model": f"{c.model_type}, {getattr(c, 'num_hidden_layers', '?')} layers, width {getattr(c, 'hidden_size', '?')}, "
                     f"context {context_length(self.model)}, base {self.config.base}",
            "model_parameters": sum(p.numel() for p in self.model.parameters()),
            "train_seconds": round(self.report.get("seconds", 0.0), 1),
            "train_documents": self.report.get("records"),
            "train_steps": self.report.get("steps"),
            "lora_rank": self.config.lora_rank,
            "draft_tokens": self.config.draft_tokens,
            "cpu_threads": self.config.threads,
        }

    def save(self, directory: str | Path) -> Path:
        from training.annotators import META_FILE

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(d / "model")
        self.tokenizer.save_pretrained(d / "model")
        meta = {"kind": self.kind, "config": asdict(self.config), "train": self.report}
        (d / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        return d

    @classmethod
    def load(cls, directory: str | Path, threads: int | None = None) -> "GenerativeAnnotator":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from training.annotators import read_meta

        d = Path(directory)
        meta = read_meta(d)
        config = config_from(GenerativeConfig, meta.get("config", {}))
        if threads:
            config.threads = threads
        torch.set_num_threads(config.threads)
        model = AutoModelForCausalLM.from_pretrained(d / "model", dtype=torch.float32).to(_device(config))
        model.eval()
        return cls(model, AutoTokenizer.from_pretrained(d / "model"), config, meta.get("train"))


def decoding_speed(annotator: GenerativeAnnotator, texts: Sequence[str], drafts: Sequence[int] = (1, 16)) -> dict[str, Any]:
    """Paragraphs per second token by token and with copy-verified drafts, and whether their outputs agree."""
    out: dict[str, Any] = {"paragraphs": len(texts)}
    outputs = []
    for draft in drafts:
        started = time.perf_counter()
        results = annotator.annotate(texts, draft_tokens=draft)
        seconds = time.perf_counter() - started
        out[f"draft_{draft}_paragraphs_per_second"] = round(len(texts) / seconds, 2) if seconds else None
        outputs.append([r.annotated for r in results])
    out["identical_outputs"] = all(o == outputs[0] for o in outputs)
    first, last = out[f"draft_{drafts[0]}_paragraphs_per_second"], out[f"draft_{drafts[-1]}_paragraphs_per_second"]
    out["speed_up"] = round(last / first, 2) if first and last else None
    return out


__all__ = [
    "GenerativeConfig",
    "GenerativeAnnotator",
    "GenerativeReport",
    "Encoded",
    "encode",
    "split_windows",
    "training_windows",
    "ensure_call_tokens",
    "new_base",
    "sft_rows",
    "build_trainer",
    "train_generative",
    "decoding_speed",
]
