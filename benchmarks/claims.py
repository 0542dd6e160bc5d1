"""The project's headline claims, each a measured statement with its interval and test.

A claim is checked on one run's benchmark results (``run_all`` writes them); the
comparisons are paired on the same items (``benchmarks.stats.compare``), and a claim
of the form "A is at least k times B" is tested as H1: A - k·B > 0 (one-sided sign-flip
permutation test), so "holds" means the data reject the claim's negation at p < 0.05.
Forget quality and model utility are thresholds on a figure, not tests (``p`` is None):
forget quality is itself a KS p-value, "holds" means it is at least 0.5.
Over several seeds (``across``) each claim reports the mean with a t interval, and
holds only where it held on every seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from benchmarks.report import fmt, table
from benchmarks.stats import Estimate, across_seeds, compare

ALPHA = 0.05


@dataclass
class Claim:
    claim: str
    measure: str  # what ``value`` is
    value: float
    low: float  # 95 % interval (bootstrap over items, or over seeds)
    high: float
    n: int  # items (or seeds)
    p_value: float | None  # one-sided p of the claim's test; None: a threshold on a figure
    holds: bool
    note: str = ""
    bounds: tuple[float | None, float | None] = (None, None)  # the measure's range (None: unbounded), for seed intervals

    def to_dict(self) -> dict:
        return asdict(self)


RATIO = (0.0, None)
DIFFERENCE_OF_SHARES = (-1.0, 1.0)


def _tested(claim: str, measure: str, estimate, p: float, bounds: tuple[float | None, float | None],
            note: str = "") -> Claim:
    return Claim(claim, measure, estimate.value, estimate.low, estimate.high, estimate.n, p, p < ALPHA, note, bounds)


def _paired(results: Sequence[dict], key: str, a: str, b: str) -> tuple[list[float], list[float]]:
    """Per-item values of subjects ``a`` and ``b`` on the items both have a value for."""
    by = {r["subject"]: r for r in results}
    if a not in by or b not in by:
        return [], []
    if key == "hits":
        return [float(x) for x in by[a]["hits"]], [float(x) for x in by[b]["hits"]]
    pairs = [(x[key], y[key]) for x, y in zip(by[a]["responses"], by[b]["responses"])
             if x[key] is not None and y[key] is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def at_least_times(claim: str, measure: str, a: Sequence[float], b: Sequence[float], k: float) -> Claim:
    """A >= k·B: the ratio A/B with its paired interval, tested as A - k·B > 0."""
    ratio = compare(a, b).ratio
    return _tested(claim, measure, ratio, compare(a, [k * x for x in b]).alternative_p, RATIO)


def factscore_claims(results: Sequence[dict]) -> list[Claim]:
    if not results:
        return []
    gamma = results[0]["gamma"]
    a, b = _paired(results, "precision", "lmlm", "baseline")
    out = [at_least_times("FactScore precision: LMLM >= 2x baseline", "precision ratio LMLM / baseline", a, b, 2)]
    a, b = _paired(results, "score", "lmlm", "baseline")
    out.append(_tested(f"FactScore (gamma {gamma}): LMLM > baseline", "FactScore difference LMLM - baseline",
                       compare(a, b).difference, compare(a, b).alternative_p, DIFFERENCE_OF_SHARES,
                       "bios both models answered (abstentions have no score)"))
    return out


def cloze_claims(results: Sequence[dict]) -> list[Claim]:
    if not results:
        return []
    a, b = _paired(results, "hits", "lmlm", "baseline")
    out = [at_least_times("cloze hit@5: LMLM >= 2x baseline", "hit@5 ratio LMLM / baseline", a, b, 2)]
    lmlm, off = _paired(results, "hits", "lmlm", "lmlm-db-off")
    if lmlm:
        kept = compare(off, lmlm).ratio  # DB off / LMLM
        loss = Estimate(1 - kept.value, 1 - kept.high, 1 - kept.low, kept.n)
        out.append(_tested("DB off loses >= 50 % of the LMLM's cloze hit@5", "share lost, 1 - DB-off / LMLM", loss,
                           compare([0.5 * x for x in lmlm], off).alternative_p, (None, 1.0)))
    return out


def forgetting_claims(result: dict | None) -> list[Claim]:
    if not result:
        return []
    rows = result["rows"]
    before = {r["split"]: r["model_utility"] for r in rows if r["method"] == "lmlm before"}
    retain = "retain models" in result["reference"]
    out = []
    for r in rows:
        if r["method"] != "lmlm-delete":
            continue
        split, quality = r["split"], r["forget_quality"]
        out.append(Claim(f"{split}: forget quality by deletion >= 0.5", "KS p-value vs "
                         + ("the retain models" if retain else "the never-seen proxy (no retain models)"),
                         quality, r["forget_quality_low"], r["forget_quality_high"], r["forget_items"], None,
                         quality >= 0.5, f"never-seen proxy: {fmt(r['forget_quality_proxy'])}", (0.0, 1.0)))
        drop = abs(1 - r["model_utility"] / before[split]) if before.get(split) else math.nan
        out.append(Claim(f"{split}: model utility after deletion within 1 % of before", "|1 - after / before|",
                         drop, drop, drop, 1, None, drop <= 0.01, "same weights: no sampling error", (0.0, None)))
    return out


def abstention_claims(result: dict | None, references: dict[str, dict] | None = None) -> list[Claim]:
    """``references``: what abstaining is compared with, by what it is: ``"training"``, the same benchmark on an
    LMLM trained without abstentions; ``"decoding"``, the same LMLM decoding without ``abstain_on_unknown``.
    Each gives the 2-point check: correct answers before deletion, paired on the same questions."""
    if not result:
        return []
    c = result["abstain_vs_stated"]
    out = [Claim("after deletion the LMLM abstains more often than it states a value",
                 "abstain share - stated share", c["difference"]["value"], c["difference"]["low"],
                 c["difference"]["high"], result["n"], c["alternative_p"], c["alternative_p"] < ALPHA,
                 f"abstain {fmt(result['abstain_after']['value'])}, state {fmt(result['stated_after']['value'])}",
                 DIFFERENCE_OF_SHARES)]
    labels = {"training": ("abstention training", "without - with abstention training"),
              "decoding": ("abstaining on unknown (decoding)", "without - with abstain_on_unknown, same weights")}
    for kind, reference in (references or {}).items():
        ours = [float(x["verdict_before"] == "correct") for x in result["answers"]]
        theirs = [float(x["verdict_before"] == "correct") for x in reference["answers"]]
        drop = compare(theirs, ours).difference
        what, measure = labels[kind]
        out.append(_tested(f"{what} costs <= 2 points of correct answers before deletion",
                           f"correct share {measure}", drop, compare([x + 0.02 for x in ours], theirs).alternative_p,
                           DIFFERENCE_OF_SHARES))
    return out


def across(per_seed: Sequence[Sequence[Claim]]) -> list[Claim]:
    """One claim per name: the mean over seeds with a t interval (cut to the measure's range: with 3 seeds a forget
    quality of 0.52, 0.08, 0.02 has a t interval from -0.48); holds where it held on every seed."""
    names = list(dict.fromkeys(c.claim for claims in per_seed for c in claims))
    out = []
    for name in names:
        got = [c for claims in per_seed for c in claims if c.claim == name]
        if len(got) == 1:  # one seed: the claim as measured, its interval over the items
            out.append(got[0])
            continue
        summary = across_seeds([c.value for c in got])
        ps = [c.p_value for c in got if c.p_value is not None]
        least, most = got[0].bounds
        low = summary.low if least is None else max(least, summary.low)
        high = summary.high if most is None else min(most, summary.high)
        out.append(Claim(name, got[0].measure, summary.mean, low, high, len(got), max(ps) if ps else None,
                         all(c.holds for c in got), f"{len(got)} seeds: " + ", ".join(fmt(c.value) for c in got),
                         got[0].bounds))
    return out


def markdown(claims: Sequence[Claim], title: str = "Claims on this run") -> str:
    rows = [(c.claim, c.measure, f"{fmt(c.value)} [{fmt(c.low)}, {fmt(c.high)}]", c.n,
             "-" if c.p_value is None else fmt(c.p_value, 4), "yes" if c.holds else "no", c.note) for c in claims]
    return "\n".join([f"# {title}", "",
                      "Each value with its 95 % interval; p: one-sided paired permutation test of the claim "
                      f"(holds at p < {ALPHA}); '-': a threshold on the figure, not a test.", "",
                      table(["claim", "measure", "value [95 % interval]", "n", "p", "holds", "note"], rows), ""])
