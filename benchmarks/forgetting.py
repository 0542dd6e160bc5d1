"""TOFU forgetting: the LMLM deletes rows; the same-size baseline unlearns by gradient.

For each forget split (forget01 ⊂ forget05 ⊂ forget10 of the world's authors):

- ``lmlm-delete``: a working copy of the LMLM's store, ``store.delete(entity=...)`` for
  every forget entity (the receipts are kept); the weights are untouched.
- ``grad_ascent`` / ``grad_diff`` / ``npo`` (β = 0.1): a fresh copy of the baseline,
  a few AdamW steps on the forget split's QA (TOFU's unlearning data): ascent on the
  forget loss; ascent on forget plus descent on retain; NPO's
  -2/β · log σ(β · (NLL_θ - NLL_ref)) with the model before unlearning as reference.

Forget quality needs the truth ratios of "a model trained without the forget set". We
use each model's ratios on the world's held-out people (generated like the authors,
never in the corpus or the store): the same model, on questions about people it
never saw, which is what the forget set should look like after forgetting.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from benchmarks.subject import Subject, pad_rows, sequence_nll
from benchmarks.tofu import TofuConfig, TofuResult, evaluate_split, evaluate_tofu
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

    def sample(pool: list[dict]):
        batch = rng.sample(pool, min(config.batch_size, len(pool)))
        return pad_rows([r["input_ids"] for r in batch], [r["labels"] for r in batch], tokenizer.pad_token_id)

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


@dataclass
class ForgettingResult:
    rows: list[ForgetRow]
    receipts: dict[str, dict]  # split -> entities, rows removed, all verified
    reference: str = "each model's truth ratios on the world's held-out (never seen) people"

    def to_dict(self) -> dict:
        return asdict(self)


def copy_store(store):
    """An in-memory working copy of a store's rows, so forgetting never touches the run's database."""
    from tools import open_store

    work = open_store(None, index=False)
    work.write_many(((f.entity, f.relation, f.value, f.source) for f in store.iter_facts()), source=None)
    return work


def _row(method: str, split: str, result: TofuResult, seconds: float) -> ForgetRow:
    forget = result.splits[split]
    return ForgetRow(method, split, result.forget_quality.get(split, float("nan")), result.model_utility,
                     forget.truth_ratio, forget.probability, forget.rouge_l, seconds)


def run_forgetting(
    world: World,
    lmlm: Subject,
    baseline: Subject,
    config: TofuConfig,
    unlearn_config: UnlearnConfig,
    splits: Sequence[str] = FORGET_SPLITS,
    methods: Sequence[str] = GRADIENT_METHODS,
) -> ForgettingResult:
    """The forgetting table: both models before, LMLM deletion and each gradient method, per split."""
    from dataclasses import replace

    from tqdm.auto import tqdm

    jobs = 2 + len(splits) * (1 + len(methods))
    bar = tqdm(total=jobs, desc="forgetting", unit="run")
    holdout_config = replace(config, rouge=False)
    rows: list[ForgetRow] = []
    reference = {}
    for subject in (lmlm, baseline):
        reference[subject.name] = evaluate_split(subject, "holdout", world.qa["holdout"], holdout_config).ratios
        before = evaluate_tofu(subject, world.qa, config, splits, {s: reference[subject.name] for s in splits})
        rows += [_row(f"{subject.name} before", s, before, 0.0) for s in splits]
        bar.update()

    receipts = {}
    for split in splits:
        store = copy_store(lmlm.store)
        start = time.perf_counter()
        done = [store.delete(entity=name) for name in world.splits[split]]
        seconds = time.perf_counter() - start
        receipts[split] = {"entities": len(done), "rows_removed": sum(r.count for r in done),
                           "verified": all(r.verified for r in done)}
        result = evaluate_tofu(replace(lmlm, store=store), world.qa, config, (split,), {split: reference[lmlm.name]})
        rows.append(_row("lmlm-delete", split, result, seconds))
        bar.update()
        for method in methods:
            model = copy.deepcopy(baseline.model)
            start = time.perf_counter()
            unlearn(model, baseline.tokenizer, method, world.qa[split], world.qa["retain"], unlearn_config)
            seconds = time.perf_counter() - start
            result = evaluate_tofu(replace(baseline, model=model), world.qa, config, (split,),
                                   {split: reference[baseline.name]})
            rows.append(_row(method, split, result, seconds))
            bar.update()
    bar.close()
    return ForgettingResult(rows, receipts)
