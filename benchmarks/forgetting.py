"""TOFU forgetting: the LMLM deletes rows; the same-size baseline unlearns by gradient.

For each forget split (forget01 ⊂ forget05 ⊂ forget10 of the world's authors):

- ``lmlm-delete``: a working copy of the LMLM's store, ``store.delete(entity=...)`` for
  every forget entity (the receipts are kept); the weights are untouched.
- ``grad_ascent`` / ``grad_diff`` / ``npo`` (β = 0.1): a fresh copy of the baseline,
  a few AdamW steps on the forget split's QA (TOFU's unlearning data): ascent on the
  forget loss; ascent on forget plus descent on retain; NPO's
  -2/β · log σ(β · (NLL_θ - NLL_ref)) with the model before unlearning as reference.

Forget quality needs the truth ratios of "a model trained without the forget set":

- TOFU's reference, when given: retain models trained on ``world.corpus(without=forget10)``
  (the LMLM's with a store lacking forget10's rows), scored on each forget split;
- always, as a second, labelled column (the only one without retain models): a proxy, each
  model's own ratios on the world's held-out people (generated like the authors, never in
  the corpus or the store). It is stricter than TOFU's: the forget entities' names were
  still seen in training, the held-out names never.

Forget quality carries a 95 % percentile-bootstrap interval (both samples of truth ratios
resampled): how far the p-value moves with the questions drawn.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from benchmarks.subject import Subject, pad_rows, sequence_nll
from benchmarks.tofu import SplitResult, TofuConfig, TofuResult, evaluate_split, evaluate_tofu, forget_quality
from benchmarks.world import QAItem, World
from training.data import qa_example

GRADIENT_METHODS = ("grad_ascent", "grad_diff", "npo")
FORGET_SPLITS = ("forget01", "forget05", "forget10")


@dataclass
class UnlearnConfig:
    steps: int = field(default=20, metadata={"help": "optimizer steps per method and split"})
    lr: float = field(default=5e-5, metadata={"help": "AdamW learning rate (TOFU: 1e-5 for 7B models)"})
    batch_size: int = field(default=8, metadata={"help": "forget (and retain) QA pairs per step"})
    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature"})
    seed: int = field(default=0, metadata={"help": "batch sampling seed"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up of the learning rate, then linear decay to 0 "
                              "over the remaining steps (TOFU's forget.py: one epoch); 0: a constant learning rate"})


def unlearn(model, tokenizer, method: str, forget: Sequence[QAItem], retain: Sequence[QAItem], config: UnlearnConfig):
    """Unlearn ``forget`` in place with a gradient method; returns the model."""
    import torch
    import torch.nn.functional as F

    if method not in GRADIENT_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(GRADIENT_METHODS)}")
    max_length = model.config.max_position_embeddings
    rows = lambda items: [r for q in items if (r := qa_example(q.question, q.answer, tokenizer, max_length))]  # noqa: E731
    forget_rows, retain_rows = rows(forget), rows(retain)
    reference = copy.deepcopy(model).eval() if method == "npo" else None
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    schedule = None
    if config.warmup_steps > 0:
        from transformers import get_linear_schedule_with_warmup

        schedule = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)

    def sample(pool: list[dict]):
        batch = rng.sample(pool, min(config.batch_size, len(pool)))
        return pad_rows([r["input_ids"] for r in batch], [r["labels"] for r in batch], tokenizer.pad_token_id,
                        model.device)

    model.train()
    for _ in range(config.steps):
        ids, labels, mask = sample(forget_rows)
        logits = model(input_ids=ids, attention_mask=mask).logits
        if method == "grad_ascent":
            loss = -sequence_nll(logits, labels).mean()
        elif method == "grad_diff":
            r_ids, r_labels, r_mask = sample(retain_rows)
            retain_nll = sequence_nll(model(input_ids=r_ids, attention_mask=r_mask).logits, r_labels)
            loss = -sequence_nll(logits, labels).mean() + retain_nll.mean()
        else:
            with torch.no_grad():
                ref_nll = sequence_nll(reference(input_ids=ids, attention_mask=mask).logits, labels, "sum")
            log_ratio = ref_nll - sequence_nll(logits, labels, "sum")  # log π_θ(y|x) - log π_ref(y|x)
            loss = -F.logsigmoid(-config.beta * log_ratio).mean() * 2 / config.beta
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    model.eval()
    return model


@dataclass
class ForgetRow:
    method: str  # lmlm-delete, a gradient method, or "<model> before"
    split: str
    forget_quality: float
    model_utility: float
    forget_truth_ratio: float
    forget_probability: float
    forget_rouge_l: float
    seconds: float  # time the forgetting itself took (deletes or optimizer steps)
    forget_quality_low: float = float("nan")  # 95 % bootstrap interval of forget quality
    forget_quality_high: float = float("nan")
    forget_quality_proxy: float = float("nan")  # against the held-out-people proxy (the second column)
    forget_items: int = 0
    forget_quality_values: float = float("nan")  # KS on the value's tokens only (tofu.value_truth_ratios), same reference
    forget_quality_values_low: float = float("nan")  # its 95 % bootstrap interval
    forget_quality_values_high: float = float("nan")


PROXY_REFERENCE = "each model's own truth ratios on the world's held-out (never seen) people"
RETAIN_REFERENCE = "retain models trained without forget10's documents (and, for the LMLM, its rows)"


@dataclass
class ForgettingResult:
    rows: list[ForgetRow]
    receipts: dict[str, dict]  # split -> entities, rows removed, all verified
    reference: str = PROXY_REFERENCE

    def to_dict(self) -> dict:
        return asdict(self)


def copy_store(store, without: Sequence[str] = ()):
    """An in-memory copy of a store's rows (the run's database is never touched), less ``without``'s entities."""
    from tools import open_store

    semantic = getattr(store, "relation_vectors", None) is not None  # match relations as the source store does
    work = open_store(None, index=False, relation_match="semantic" if semantic else "exact")
    work.write_many(((f.entity, f.relation, f.value, f.source) for f in store.iter_facts()), source=None)
    for entity in without:
        work.delete(entity=entity)
    return work


def forget_quality_interval(ratios: Sequence[float], reference: Sequence[float], resamples: int = 1000,
                            seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of the KS p-value, both samples resampled."""
    a, b = np.asarray(ratios, dtype=float), np.asarray(reference, dtype=float)
    if not a.size or not b.size:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ps = [forget_quality(a[rng.integers(0, a.size, a.size)], b[rng.integers(0, b.size, b.size)])
          for _ in range(resamples)]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ps, [tail, 100 - tail])
    return float(low), float(high)


def _row(method: str, split: str, result: TofuResult, seconds: float, reference: dict, proxy: dict) -> ForgetRow:
    """``reference``, ``proxy``: split -> the reference's SplitResult on it."""
    forget, ref = result.splits[split], reference[split]
    quality = forget_quality(forget.ratios, ref.ratios)
    low, high = forget_quality_interval(forget.ratios, ref.ratios)
    values = (float("nan"),) * 3
    if forget.value_ratios and ref.value_ratios:
        values = (forget_quality(forget.value_ratios, ref.value_ratios),
                  *forget_quality_interval(forget.value_ratios, ref.value_ratios))
    return ForgetRow(method, split, quality, result.model_utility, forget.truth_ratio, forget.probability,
                     forget.rouge_l, seconds, low, high, forget_quality(forget.ratios, proxy[split].ratios), forget.n,
                     *values)


def run_forgetting(
    world: World,
    lmlm: Subject,
    baseline: Subject,
    config: TofuConfig,
    unlearn_config: UnlearnConfig,
    splits: Sequence[str] = FORGET_SPLITS,
    methods: Sequence[str] = GRADIENT_METHODS,
    retain_models: tuple[Subject, Subject] | None = None,
) -> ForgettingResult:
    """The forgetting table: both models before, LMLM deletion and each gradient method, per split.

    ``retain_models``: (LMLM, baseline) trained without forget10, the LMLM's store
    already without forget10's rows; None uses the held-out-people proxy.
    """
    from dataclasses import replace

    from tqdm.auto import tqdm

    jobs = 2 + len(splits) * (1 + len(methods))
    bar = tqdm(total=jobs, desc="forgetting", unit="run")
    ratio_config = replace(config, rouge=False)  # the reference needs truth ratios only
    rows: list[ForgetRow] = []
    reference: dict[str, dict[str, SplitResult]] = {}  # subject -> split -> the reference's result on it
    proxies: dict[str, dict[str, SplitResult]] = {}
    for i, subject in enumerate((lmlm, baseline)):
        own_holdout = evaluate_split(subject, "holdout", world.qa["holdout"], ratio_config)
        proxies[subject.name] = {s: own_holdout for s in splits}
        if retain_models is None:
            reference[subject.name] = proxies[subject.name]
        else:
            reference[subject.name] = {s: evaluate_split(retain_models[i], s, world.qa[s], ratio_config)
                                       for s in splits}
        before = evaluate_tofu(subject, world.qa, config, splits)
        rows += [_row(f"{subject.name} before", s, before, 0.0, reference[subject.name], proxies[subject.name])
                 for s in splits]
        bar.update()

    receipts = {}
    for split in splits:
        store = copy_store(lmlm.store)
        start = time.perf_counter()
        done = [store.delete(entity=name) for name in world.splits[split]]
        seconds = time.perf_counter() - start
        receipts[split] = {"entities": len(done), "rows_removed": sum(r.count for r in done),
                           "verified": all(r.verified for r in done)}
        result = evaluate_tofu(replace(lmlm, store=store), world.qa, config, (split,))
        rows.append(_row("lmlm-delete", split, result, seconds, reference[lmlm.name], proxies[lmlm.name]))
        bar.update()
        for method in methods:
            model = copy.deepcopy(baseline.model)
            start = time.perf_counter()
            unlearn(model, baseline.tokenizer, method, world.qa[split], world.qa["retain"], unlearn_config)
            seconds = time.perf_counter() - start
            result = evaluate_tofu(replace(baseline, model=model), world.qa, config, (split,))
            rows.append(_row(method, split, result, seconds, reference[baseline.name], proxies[baseline.name]))
            bar.update()
    bar.close()
    return ForgettingResult(rows, receipts, PROXY_REFERENCE if retain_models is None else RETAIN_REFERENCE)
