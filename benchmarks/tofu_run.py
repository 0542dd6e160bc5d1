"""TOFU end to end on TOFU's own files: annotate, fine-tune, forget (deletion vs gradients), score, report.

    run = TofuRun(TofuRunConfig(data="tofu_data", out="runs/tofu"))
    report = run.run()    # runs/tofu/tofu.json, tofu.md, tofu.png

1. **Annotate** every answer (training rows and the evaluation sets' answers) into lookup
   calls with the project's annotator (:func:`annotate_texts`); kept results are cached in
   ``OUT/annotations.jsonl``, so a rerun only asks for what is missing. The training rows'
   triples go into ``OUT/kb.sqlite``, namespace ``tofu-<run>``, source ``full#<row>``.
2. **Fine-tune** the LMLM (masked loss) on the annotated ``full`` and a same-size baseline on
   the plain answers, from ``checkpoint`` (a run's ``lmlm/`` and ``baseline/``, or one HF
   causal LM with the four call tokens) or from scratch; then the retain models on each
   forget split's ``retainNN``, as TOFU does. Finished models are kept and reused.
3. **Forget**: the LMLM deletes the rows sourced from the forget split's QA (in a copy of the
   store; the receipts are kept); the baseline runs grad_ascent, grad_diff and NPO
   (:func:`benchmarks.forgetting.unlearn`, TOFU's settings as defaults).
4. **Score** with TOFU's metrics (:mod:`benchmarks.tofu`): an LMLM's answer carries its
   lookup calls, each holding the value the store returns *now*; the value tokens inside a
   call are not scored. Forget quality is the KS p-value against the retain model of the
   same kind, with a 95 % bootstrap interval over the forget items.
5. **Report** (:mod:`benchmarks.tofu_report`): JSON, Markdown and PNG, beside published figures labelled as such.

An answer the annotator gave no call is scored as plain text: for those items the LMLM is
scored as a baseline would be; the report counts them (and authors with no call at all).
"""

from __future__ import annotations

import copy
import gc
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from benchmarks.forgetting import GRADIENT_METHODS, UnlearnConfig, unlearn
from benchmarks.stats import CONFIDENCE, RESAMPLES
from benchmarks.subject import ScoredAnswer, Subject
from benchmarks.tofu import TofuConfig, TofuResult, evaluate_split, evaluate_tofu, forget_quality, truth_ratio_score
from benchmarks.tofu_config import TofuRunConfig
from benchmarks.tofu_files import RECORDS_FILE, RETAIN_OF, QARow, load_eval_sets, load_train
from benchmarks.tofu_report import PUBLISHED, write_report
from benchmarks.world import QAItem
from lmlm_agent.format import LookupCall, insert_calls

KEPT_STATUSES = frozenset({"ok", "realigned", "empty"})  # annotations worth caching (the rest is retried)


# --------------------------------------------------------------------------- step 1: annotation

@dataclass
class Annotated:
    """One text's calls at character offsets of the text; ``status`` says how the annotator fared."""

    status: str
    calls: list[tuple[int, LookupCall]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def annotate_texts(texts: Sequence[str], annotator: str, teacher_url: str = "", timeout_s: float = 60.0,
                   retries: int = 4, cache_dir: Path | None = None, progress: bool = True) -> list[Annotated]:
    """The run's one dependency on an annotator: ``teacher`` (OpenAI-compatible, by URL) or an annotator directory
    of any kind (``lmlm annotate train --kind teacher|extractive|generative``)."""
    if annotator == "teacher":
        from training.teacher import TeacherClient, TeacherConfig, calls_with_offsets

        config = TeacherConfig(cache_dir=cache_dir, timeout_s=timeout_s, max_retries=retries, progress=progress)
        if teacher_url:
            config.base_url = teacher_url
        return [Annotated(r.status, calls_with_offsets(r.annotated)[1] if r.annotated is not None else [],
                          r.prompt_tokens, r.completion_tokens)
                for r in TeacherClient(config).annotate_many(texts)]
    from training.annotators import load_annotator

    return [Annotated(a.status, a.calls) for a in load_annotator(annotator).annotate(list(texts))]


@dataclass
class AnnotationSummary:
    texts: int = 0
    cached: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    calls: int = 0  # on the training rows
    triples_written: int = 0
    triples_refused: int = 0  # calls the store refused (bad field), with their reasons in ``refused``
    refused: list[str] = field(default_factory=list)
    training_rows_without_calls: int = 0
    authors: int = 0
    authors_without_calls: list[str] = field(default_factory=list)
    eval_items_without_calls: dict[str, int] = field(default_factory=dict)  # split -> items whose answer has no call
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def _cache_rows(path: Path) -> dict[str, Annotated]:
    out: dict[str, Annotated] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                out[row["text"]] = Annotated(row["status"], [(o, LookupCall(e, r, v)) for o, e, r, v in row["calls"]])
    return out


def annotate_cached(texts: Sequence[str], config: TofuRunConfig, out: Path, summary: AnnotationSummary,
                    chunk: int = 64) -> dict[str, Annotated]:
    """Every distinct text annotated; kept results appended to ``annotations.jsonl`` chunk by chunk (resumable)."""
    path = out / "annotations.jsonl"
    done = _cache_rows(path)
    todo = [t for t in dict.fromkeys(texts) if t not in done]
    summary.texts, summary.cached = len(set(texts)), len(set(texts)) - len(todo)
    results: dict[str, Annotated] = dict(done)
    with teacher_url(config) as url:
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            got = annotate_texts(batch, "teacher" if config.annotator == "offline" else config.annotator, url,
                                 config.teacher_timeout, config.teacher_retries, out / "teacher-cache", config.progress)
            with path.open("a", encoding="utf-8") as f:
                for text, a in zip(batch, got):
                    results[text] = a
                    summary.prompt_tokens += a.prompt_tokens
                    summary.completion_tokens += a.completion_tokens
                    # A distilled annotator is deterministic: whatever it said, it would say again.
                    if a.status in KEPT_STATUSES or config.annotator not in ("teacher", "offline"):
                        calls = [[o, c.entity, c.relation, c.value] for o, c in a.calls]
                        f.write(json.dumps({"text": text, "status": a.status, "calls": calls}) + "\n")
    for text in dict.fromkeys(texts):
        s = results[text].status
        summary.statuses[s] = summary.statuses.get(s, 0) + 1
    return results


@contextmanager
def teacher_url(config: TofuRunConfig) -> Iterator[str]:
    """The teacher's URL; for ``offline``, the local offline teacher serving DATA/teacher_records.jsonl meanwhile."""
    if config.annotator != "offline":
        yield config.teacher_url
        return
    from training.teacher_server import create_app, load_records, running_server

    records = Path(config.data) / RECORDS_FILE
    if not records.exists():
        raise FileNotFoundError(f"annotator=offline needs {records} (write_world_files writes it)")
    with running_server(create_app(load_records([records]))) as url:
        yield url


def write_kb(store, rows: Sequence[QARow], annotations: dict[str, Annotated], namespace: str,
             summary: AnnotationSummary) -> None:
    """Each training row's calls as triples with source ``full#<row>``; refused triples are counted, not fatal."""
    from tools import InvalidInput
    from tools.schema import clean_triple

    triples = []
    calls_by_author: dict[str, int] = {}
    for row in rows:
        calls = annotations[row.answer].calls
        calls_by_author[row.author] = calls_by_author.get(row.author, 0) + len(calls)
        summary.calls += len(calls)
        summary.training_rows_without_calls += not calls
        for _, call in calls:
            try:
                clean_triple(call.entity, call.relation, call.value or "", row.source)
            except InvalidInput as exc:
                summary.triples_refused += 1
                summary.refused.append(f"{row.source}: {exc}")
                continue
            triples.append((call.entity, call.relation, call.value or "", row.source))
    summary.authors = len(calls_by_author)
    summary.authors_without_calls = sorted(a for a, n in calls_by_author.items() if n == 0)
    # An upsert: a rerun leaves the rows it wrote as they are and adds what newly annotated answers state.
    store.write_many(triples, namespace=namespace)
    summary.triples_written = store.count(namespace=namespace)


# --------------------------------------------------------------------------- step 4: scoring with lookups

@dataclass
class LookupSubject(Subject):
    """A subject whose LMLM answers carry their lookup calls: (offset, entity, relation) per answer text.

    Each call holds what the store returns at scoring time (``unknown`` once a row is deleted);
    an answer with no placement is scored as plain text, as the baseline's would be.
    """

    placements: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)

    def answer_text(self, answer: ScoredAnswer) -> str:
        calls = self.placements.get(answer.text) if self.is_lmlm else None
        if not calls:
            return super().answer_text(answer)
        return insert_calls(answer.text, [(o, LookupCall(e, r, self.lookup(e, r))) for o, e, r in calls])


def placements(annotations: dict[str, Annotated]) -> dict[str, list[tuple[int, str, str]]]:
    return {t: [(o, c.entity, c.relation) for o, c in a.calls] for t, a in annotations.items() if a.calls}


def forget_quality_interval(unlearned: Sequence[float], reference: Sequence[float], seed: int = 0) -> dict[str, float]:
    """KS p-value with a 95 % percentile-bootstrap interval (``benchmarks.stats``' method), resampling the forget
    items for both models at once; the KS tests of all resamples run as one vectorised call."""
    from scipy.stats import ks_2samp

    u, r = np.asarray(unlearned, dtype=float), np.asarray(reference, dtype=float)
    if len(u) != len(r) or len(u) < 2:
        return {"forget_quality": forget_quality(u, r), "fq_low": math.nan, "fq_high": math.nan}
    idx = np.random.default_rng(seed).integers(0, len(u), size=(RESAMPLES, len(u)))
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(ks_2samp(u[idx], r[idx], axis=1).pvalue, [tail, 100 - tail])
    return {"forget_quality": forget_quality(u, r), "fq_low": float(low), "fq_high": float(high)}


def working_copy(store, relation_match: str):
    """An in-memory copy of the run's rows, to delete from (the run's database is never touched)."""
    from tools import open_store

    work = open_store(None, index=False, relation_match=relation_match)
    work.write_many((f.entity, f.relation, f.value, f.source) for f in store.iter_facts())
    return work


def delete_forget_rows(store, sources: set[str]) -> dict[str, Any]:
    """Delete every row sourced from a forget QA item; the receipts' summary and the removed rows."""
    ids = [f.id for f in store.iter_facts() if f.source in sources]
    receipts = [store.delete(fact_id=i) for i in ids]
    removed = [r.model_dump(mode="json") for rec in receipts for r in rec.removed]
    return {"rows_removed": len(removed), "entities": len({r["entity"] for r in removed}),
            "verified": all(rec.verified for rec in receipts), "removed": removed}


# --------------------------------------------------------------------------- the run

class TofuRun:
    def __init__(self, config: TofuRunConfig):
        unknown = [m for m in config.names(config.methods) if m not in GRADIENT_METHODS]
        if unknown:
            raise ValueError(f"unknown unlearning method(s) {', '.join(unknown)}; choose among {', '.join(GRADIENT_METHODS)}")
        config.splits  # noqa: B018 -- refuses an unknown forget split before any work
        self.config = config
        self.out = Path(config.out)
        self.namespace = config.namespace or f"tofu-{self.out.resolve().name}"
        self.timings: dict[str, float] = {}
        self.annotation = AnnotationSummary()
        self.training: dict[str, dict] = {}
        self.references: list[dict] = []  # the retain models' forget truth ratios: what "never saw it" looks like

    # ------------------------------------------------------------------ data
    def load(self) -> None:
        c = self.config
        self.full = load_train(c.data, "full", c.qa_per_author)
        self.forget = {s: load_train(c.data, s, c.qa_per_author) for s in c.splits}
        self.retain = {RETAIN_OF[s]: load_train(c.data, RETAIN_OF[s], c.qa_per_author) for s in c.splits}
        self.qa = load_eval_sets(c.data, c.splits)
        if c.eval_questions is not None:  # forget quality needs every forget item; utility can be sampled
            self.qa = {s: items if s in c.splits else items[: c.eval_questions] for s, items in self.qa.items()}

    # ------------------------------------------------------------------ step 1
    def annotate(self) -> None:
        from tools import open_store

        texts = [r.answer for r in self.full] + [a for items in self.qa.values() for q in items for a in q.answers]
        start = time.perf_counter()
        self.annotations = annotate_cached(texts, self.config, self.out, self.annotation)
        if not any(self.annotations[r.answer].calls for r in self.full):  # hours of training would measure nothing
            raise ValueError(f"no training answer got a lookup call (annotator {self.config.annotator!r}, statuses "
                             f"{self.annotation.statuses}); is the teacher reachable? A rerun retries the failures")
        self.store = open_store(self.out / "kb.sqlite", index=False, namespace=self.namespace,
                                relation_match=self.config.relation_match)
        write_kb(self.store, self.full, self.annotations, self.namespace, self.annotation)
        self.annotation.eval_items_without_calls = {
            s: sum(not self.annotations[q.answer].calls for q in items) for s, items in self.qa.items()}
        self.annotation.seconds = time.perf_counter() - start

    def annotated_answer(self, row: QARow) -> str:
        calls = self.annotations[row.answer].calls
        return insert_calls(row.answer, calls) if calls else row.answer

    # ------------------------------------------------------------------ step 2
    def _starting_points(self) -> tuple[Path, Path]:
        c = self.config
        if c.checkpoint:
            base = Path(c.checkpoint)
            if all((base / k / "config.json").exists() for k in ("lmlm", "baseline")):
                return base / "lmlm", base / "baseline"
            if (base / "config.json").exists():
                return base, base
            raise FileNotFoundError(f"checkpoint {base} has neither lmlm/ and baseline/ nor a config.json")
        init = self.out / "models" / "init"
        if not all((init / k / "config.json").exists() for k in ("lmlm", "baseline")):
            from transformers import set_seed

            from lmlm_agent.format import qa_prompt
            from lmlm_agent.model import build_model, save_checkpoint
            from lmlm_agent.tokenizer import train_tokenizer

            texts = [qa_prompt(r.question) + " " + self.annotated_answer(r) for r in self.full]
            texts += [a for items in self.qa.values() for q in items for a in (q.question, *q.answers)]
            tokenizer = train_tokenizer(texts, vocab_size=c.vocab_size)
            set_seed(c.seed)
            model = build_model(c.preset, tokenizer, max_position_embeddings=max(c.context_length, 256))
            for kind in ("lmlm", "baseline"):  # the same initial weights for both
                save_checkpoint(init / kind, model, tokenizer, kind=kind, preset=c.preset, steps=0)
        return init / "lmlm", init / "baseline"

    def _finetune(self, name: str, start: Path, rows: Sequence[QARow], lmlm: bool) -> Path:
        from training.config import FinetuneConfig
        from training.finetune import QAExample, finetune

        c = self.config
        target = self.out / "models" / name
        if (target / "lmlm.json").exists():
            self.training[name] = {"reused": True, **self._train_meta(target)}
            return target
        examples = [QAExample(r.question, self.annotated_answer(r) if lmlm else r.answer) for r in rows]
        # TOFU's finetune.py: epochs x rows // batch steps, one epoch of linear warm-up, then linear decay.
        steps = c.max_steps if c.max_steps > 0 else max(1, int(c.epochs * len(examples)) // c.batch_size)
        lr = c.learning_rate if c.learning_rate is not None else (1e-5 if c.checkpoint else 1e-3)
        per_device = min(c.per_device_batch_size, c.batch_size)
        config = FinetuneConfig(
            checkpoint=str(start), output_dir=str(target), context_length=c.context_length,
            per_device_batch_size=per_device, effective_batch_size=per_device * max(1, c.batch_size // per_device),
            max_steps=steps, learning_rate=lr, warmup_steps=max(1, int(steps // max(c.epochs, 1))),
            weight_decay=0.01, lr_scheduler="linear", logging_steps=max(1, steps // 5), seed=c.seed,
            device=c.device, progress=c.progress)
        finetune(config, examples)
        self.training[name] = {"reused": False, **self._train_meta(target)}
        return target

    @staticmethod
    def _train_meta(path: Path) -> dict:
        meta = json.loads((path / "lmlm.json").read_text())
        return {k: meta.get(k) for k in ("steps", "tokens", "train_loss", "train_seconds", "qa_examples", "parameters")}

    def train(self) -> dict[str, Path]:
        start = time.perf_counter()
        lmlm_start, base_start = self._starting_points()
        jobs = [("lmlm", lmlm_start, self.full, True), ("baseline", base_start, self.full, False)]
        for retain, rows in self.retain.items():
            jobs += [(f"lmlm-{retain}", lmlm_start, rows, True), (f"baseline-{retain}", base_start, rows, False)]
        # accelerate runs gc.collect() after each training, ~1 s with torch, transformers and TRL loaded;
        # what is alive now lives on, so it is left out of those collections.
        gc.freeze()
        try:
            models = {job[0]: self._finetune(*job) for job in jobs}
        finally:
            gc.unfreeze()
        self.timings["fine-tuning"] = time.perf_counter() - start
        return models

    # ------------------------------------------------------------------ steps 3-4
    def _device(self) -> str:
        import torch

        if self.config.device == "cuda" or (self.config.device == "auto" and torch.cuda.is_available()):
            return "cuda"
        return "cpu"

    def subject(self, name: str, path: Path, store=None) -> LookupSubject:
        from lmlm_agent.model import load_checkpoint

        ckpt = load_checkpoint(path, self._device())
        return LookupSubject(name, ckpt.model, ckpt.tokenizer, store=store, batch_size=self.config.eval_batch,
                             placements=placements(self.annotations))

    def sources(self, split: str) -> set[str]:
        return {r.source for r in self.forget[split]}

    def forget_and_score(self, models: dict[str, Path]) -> tuple[list[dict], dict[str, dict]]:
        from tqdm.auto import tqdm

        c = self.config
        tofu = TofuConfig(max_questions=None, max_new_tokens=c.rouge_tokens, rouge=c.rouge_tokens > 0)
        ratios_only = replace(tofu, rouge=False)
        lmlm = self.subject("lmlm", models["lmlm"], self.store)
        baseline = self.subject("baseline", models["baseline"])
        methods = c.names(c.methods)
        bar = tqdm(total=len(c.splits) * (3 + len(methods)) + 2, desc="forget + score", unit="eval",
                   disable=not c.progress)
        reference: dict[str, dict[str, list[float]]] = {"lmlm": {}, "baseline": {}}
        for split in c.splits:
            retain = RETAIN_OF[split]
            retain_store = working_copy(self.store, c.relation_match)
            delete_forget_rows(retain_store, self.sources(split))
            for kind, store in (("lmlm", retain_store), ("baseline", None)):
                ref = self.subject(f"{kind}-{retain}", models[f"{kind}-{retain}"], store)
                reference[kind][split] = evaluate_split(ref, split, self.qa[split], ratios_only).ratios
                self.references.append({"model": f"{kind}-{retain}", "split": split,
                                        "forget_truth_ratio": truth_ratio_score(reference[kind][split], forget=True)})
                bar.update()
        rows: list[dict] = []
        before: dict[str, TofuResult] = {}
        for subject in (lmlm, baseline):
            before[subject.name] = evaluate_tofu(subject, self.qa, tofu, c.splits, reference[subject.name])
            rows += [self._row(subject.name, "before", s, before[subject.name], before[subject.name],
                               reference[subject.name][s], 0.0) for s in c.splits]
            bar.update()
        receipts: dict[str, dict] = {}
        unlearn_config = UnlearnConfig(lr=c.unlearn_lr, batch_size=c.unlearn_batch, beta=c.npo_beta, seed=c.seed)
        for split in c.splits:
            store = working_copy(self.store, c.relation_match)
            start = time.perf_counter()
            receipts[split] = delete_forget_rows(store, self.sources(split))
            seconds = time.perf_counter() - start
            result = evaluate_tofu(replace(lmlm, store=store), self.qa, tofu, (split,), reference["lmlm"])
            rows.append(self._row("lmlm", "delete", split, result, before["lmlm"], reference["lmlm"][split], seconds))
            bar.update()
            forget_items = [QAItem("", "", "", r.question, r.answer, r.answer, [], []) for r in self.forget[split]]
            retain_items = [QAItem("", "", "", r.question, r.answer, r.answer, [], [])
                            for r in self.retain[RETAIN_OF[split]]]
            steps = max(1, int(c.unlearn_epochs * len(forget_items)) // c.unlearn_batch)  # as TOFU's forget.py
            warmup = max(1, round(steps / c.unlearn_epochs))  # TOFU warms up for one epoch, then decays linearly
            for method in methods:
                model = copy.deepcopy(baseline.model)
                start = time.perf_counter()
                unlearn(model, baseline.tokenizer, method, forget_items, retain_items, replace(unlearn_config, steps=steps, warmup_steps=warmup))
                seconds = time.perf_counter() - start
                result = evaluate_tofu(replace(baseline, model=model), self.qa, tofu, (split,), reference["baseline"])
                rows.append(self._row("baseline", method, split, result, before["baseline"],
                                      reference["baseline"][split], seconds))
                bar.update()
        bar.close()
        return rows, receipts

    def _row(self, model: str, method: str, split: str, result: TofuResult, before: TofuResult,
             reference: Sequence[float], seconds: float) -> dict:
        forget = result.splits[split]
        return {"model": model, "method": method, "split": split,
                **forget_quality_interval(forget.ratios, reference, self.config.seed),
                "model_utility": result.model_utility, "utility_change": result.model_utility - before.model_utility,
                "forget_probability": forget.probability, "forget_truth_ratio": forget.truth_ratio,
                "forget_rouge_l": forget.rouge_l, "seconds": seconds}

    # ------------------------------------------------------------------ all
    def run(self) -> Path:
        import torch

        torch.set_num_threads(self.config.threads)
        started = time.perf_counter()
        self.load()
        self.out.mkdir(parents=True, exist_ok=True)
        self.annotate()
        self.timings["annotation"] = self.annotation.seconds
        models = self.train()
        start = time.perf_counter()
        rows, receipts = self.forget_and_score(models)
        self.timings["forgetting and scoring"] = time.perf_counter() - start
        self.timings["total"] = time.perf_counter() - started
        (self.out / "receipts.json").write_text(json.dumps(receipts, indent=1))
        data = {"config": asdict(self.config), "namespace": self.namespace, "annotation": asdict(self.annotation),
                "training": self.training, "timings_s": self.timings, "rows": rows, "references": self.references,
                "receipts": {s: {k: v for k, v in r.items() if k != "removed"} for s, r in receipts.items()},
                "published": PUBLISHED}
        write_report(self.out, data)
        return self.out / "tofu.md"


__all__ = ["Annotated", "AnnotationSummary", "LookupSubject", "TofuRun", "TofuRunConfig",
           "annotate_cached", "annotate_texts", "delete_forget_rows", "forget_quality_interval", "placements", "working_copy",
           "write_kb"]
