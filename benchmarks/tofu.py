"""TOFU metrics exactly as published (Maini et al. 2024, locuslab/tofu ``aggregate_stat.py``).

Per split, from each question's answer losses (mean NLL per token, EOS included):

- probability: exp(-NLL) of the answer; for real_authors / world_facts (the sets with
  options) normalised: P(answer) / (P(answer) + Σ P(perturbed)).
- ROUGE-L recall of the greedy answer (rouge-score, stemming) against the answer.
- truth ratio R = geometric mean of P(perturbed) ÷ P(base), base = paraphrased answer
  (forget, retain) or the answer (others); score: forget mean min(R, 1/R),
  others mean max(0, 1 - R).
- forget quality: KS-test p-value between the forget-set truth ratios of the unlearned
  model and of a model that never trained on the forget set.
- model utility: harmonic mean of the nine retain / real_authors / world_facts values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.subject import ScoredAnswer, Subject
from benchmarks.world import QAItem, qa_prompt

UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
OPTION_SPLITS = ("real_authors", "world_facts")  # probability normalised over the options


def is_forget(split: str) -> bool:
    return split.startswith("forget")


# --------------------------------------------------------------------------- pure metrics

def probability(nll: float | np.ndarray) -> np.ndarray:
    """exp(-mean NLL): the per-token probability of an answer."""
    return np.exp(-np.asarray(nll, dtype=float))


def normalised_probability(answer_nll: Sequence[float], perturbed_nll: Sequence[Sequence[float]]) -> np.ndarray:
    """P(answer) / (P(answer) + Σ P(perturbed)), per question."""
    p = probability(answer_nll)
    return p / (p + np.array([probability(row).sum() for row in perturbed_nll]))


def truth_ratios(base_nll: Sequence[float], perturbed_nll: Sequence[Sequence[float]]) -> np.ndarray:
    """R = geometric mean of P(perturbed) / P(base) = exp(NLL(base) - mean NLL(perturbed))."""
    mean_perturbed = np.array([np.mean(row) for row in perturbed_nll])
    return np.exp(np.asarray(base_nll, dtype=float) - mean_perturbed)


def truth_ratio_score(ratios: Sequence[float], forget: bool) -> float:
    """Forget: mean min(R, 1/R) (1 = can't tell true from false); others: mean max(0, 1 - R)."""
    r = np.asarray(ratios, dtype=float)
    return float(np.mean(np.minimum(r, 1 / r)) if forget else np.mean(np.maximum(0.0, 1 - r)))


def forget_quality(unlearned_ratios: Sequence[float], reference_ratios: Sequence[float]) -> float:
    """KS-test p-value: high when the unlearned model looks like one never trained on the forget set."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(unlearned_ratios, reference_ratios).pvalue)


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean (0 when any value is 0)."""
    v = np.asarray(values, dtype=float)
    return 0.0 if np.any(v <= 0) else float(len(v) / np.sum(1 / v))


_SCORER = None


def rouge_l_recall(prediction: str, reference: str) -> float:
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_SCORER.score(reference, prediction)["rougeL"].recall)


# --------------------------------------------------------------------------- real TOFU files

def load_tofu(directory: str | Path) -> dict[str, list[QAItem]]:
    """The TOFU evaluation sets present in ``directory`` (``<split>_perturbed.json``, JSON lines or a JSON list).

    Real TOFU has no entity annotations: its items carry no value offsets, so an LMLM
    is scored on the plain answers (``benchmarks.tofu_run`` annotates them to score with lookups).
    """
    from benchmarks.tofu_files import EVAL_STEMS, MissingSplit, load_eval

    out: dict[str, list[QAItem]] = {}
    for split in EVAL_STEMS:
        try:
            out[split] = load_eval(directory, split)
        except MissingSplit:
            continue
    return out


# --------------------------------------------------------------------------- model-facing

@dataclass
class TofuConfig:
    max_questions: int | None = field(default=100, metadata={"help": "Questions per split (None: all); generation dominates the cost on CPU."})
    max_new_tokens: int = field(default=200, metadata={"help": "Greedy tokens per answer for ROUGE-L (TOFU: 200)."})
    rouge: bool = field(default=True, metadata={"help": "Generate for ROUGE-L; off: probability and truth ratio only (utility over 6 values)."})


@dataclass
class SplitResult:
    split: str
    n: int
    probability: float
    rouge_l: float
    truth_ratio: float  # the split's score: forget min(R,1/R), others max(0, 1-R)
    ratios: list[float] = field(repr=False, default_factory=list)  # per-question R (for forget quality)
    value_ratios: list[float] = field(repr=False, default_factory=list)  # R on the value's tokens (forget splits)


@dataclass
class TofuResult:
    subject: str
    splits: dict[str, SplitResult]
    model_utility: float
    forget_quality: dict[str, float] = field(default_factory=dict)  # forget split -> KS p-value

    def to_dict(self) -> dict:
        d = asdict(self)
        for s in d["splits"].values():  # per-question lists: the JSON keeps the summaries
            s.pop("ratios")
            s.pop("value_ratios")
        return d


def _answers(item: QAItem) -> list[ScoredAnswer]:
    offsets = item.value_offsets or [-1] * len(item.answers)
    return [ScoredAnswer(t, item.entity, item.relation, o) for t, o in zip(item.answers, offsets)]


def value_truth_ratios(subject: Subject, items: Sequence[QAItem]) -> list[float]:
    """Truth ratios on the value's tokens only: the paraphrased answer's value against the perturbed ones, each
    teacher-forced after the question, the answer's head and (an LMLM's) call. Whole-answer ratios also score the
    person's name, which an LMLM has seen after its rows are deleted (its calls need it) and a model never trained
    on the person has not; these compare what each model says the fact is. [] when a value cannot be located
    (TOFU's own files carry no value offsets)."""
    if not items or any(not item.value_offsets or min(item.value_offsets) < 0 for item in items):
        return []
    contexts, targets, owner = [], [], []
    for i, item in enumerate(items):
        for answer in _answers(item)[1:]:  # paraphrased, then perturbed
            text = subject.answer_text(answer)
            value = answer.text[answer.value_offset:]  # the call goes in before it: the text after is unchanged
            contexts.append(qa_prompt(item.question) + " " + text[: len(text) - len(value)].strip())
            targets.append(" " + value.strip())
            owner.append(i)
    per_item: list[list[float]] = [[] for _ in items]
    for i, (_, n, nll) in zip(owner, subject.teacher_forced(contexts, targets)):
        per_item[i].append(nll / max(n, 1))
    return truth_ratios([row[0] for row in per_item], [row[1:] for row in per_item]).tolist()


def evaluate_split(subject: Subject, split: str, items: Sequence[QAItem], config: TofuConfig) -> SplitResult:
    items = list(items)[: config.max_questions]
    if not items:
        return SplitResult(split, 0, math.nan, math.nan, math.nan)
    questions, answers, owner = [], [], []
    for i, item in enumerate(items):
        for a in _answers(item):
            questions.append(item.question)
            answers.append(a)
            owner.append(i)
    flat = subject.answer_nlls(questions, answers)
    per_item: list[list[float]] = [[] for _ in items]
    for i, nll in zip(owner, flat):
        per_item[i].append(nll)
    answer_nll = [row[0] for row in per_item]
    para_nll = [row[1] for row in per_item]
    perturbed = [row[2:] for row in per_item]
    if split in OPTION_SPLITS:
        prob = float(np.mean(normalised_probability(answer_nll, perturbed)))
    else:
        prob = float(np.mean(probability(answer_nll)))
    base = answer_nll if split in OPTION_SPLITS else para_nll
    ratios = truth_ratios(base, perturbed)
    rouge = math.nan
    if config.rouge:
        # TOFU generates greedily without a repetition penalty.
        outputs = subject.generate([qa_prompt(it.question) for it in items], config.max_new_tokens,
                                   repetition_penalty=1.0)
        rouge = float(np.mean([rouge_l_recall(o, it.answer) for o, it in zip(outputs, items)]))
    return SplitResult(split, len(items), prob, rouge, truth_ratio_score(ratios, is_forget(split)), ratios.tolist(),
                       value_truth_ratios(subject, items) if is_forget(split) else [])


def evaluate_tofu(
    subject: Subject,
    qa: dict[str, list[QAItem]],
    config: TofuConfig,
    forget_splits: Sequence[str] = ("forget01", "forget05", "forget10"),
    reference_ratios: dict[str, Sequence[float]] | None = None,
) -> TofuResult:
    """Forget splits + the utility splits; forget quality where reference ratios are given."""
    splits = {s: evaluate_split(subject, s, qa[s], config) for s in (*forget_splits, *UTILITY_SPLITS) if s in qa}
    values = []
    for s in UTILITY_SPLITS:
        r = splits.get(s)
        if r is not None:
            values += [r.probability, r.truth_ratio] + ([r.rouge_l] if config.rouge else [])
    result = TofuResult(subject.name, splits, model_utility(values))
    for s in forget_splits:
        if reference_ratios and s in reference_ratios and s in splits:
            result.forget_quality[s] = forget_quality(splits[s].ratios, reference_ratios[s])
    return result
