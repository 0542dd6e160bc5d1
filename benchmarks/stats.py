"""Uncertainty for every figure a benchmark prints.

Each claim is a point estimate over items (bios, cloze prompts, QA pairs) with a
95 % interval from a bootstrap over those items; a comparison of two models on
the same items resamples the items once for both (paired), so the interval of a
difference or ratio keeps the items' shared difficulty out of it. The p-value of
a paired comparison is a sign-flip permutation test on the per-item differences
(exact for up to 16 items, Monte Carlo above), which needs no normality.
Across seeds, ``across_seeds`` reports mean, standard deviation and a t interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval and the number of items it rests on."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of model A against model B on the same items."""

    a: Estimate
    b: Estimate
    difference: Estimate  # a - b
    ratio: Estimate  # a / b (inf where b's resample is 0 and a's is not)
    p_value: float  # two-sided, H0: no difference
    alternative_p: float  # one-sided, H1: a > b

    def holds(self, alpha: float = 0.05) -> bool:
        """A > B at level ``alpha`` (one-sided)."""
        return self.alternative_p < alpha

    def to_dict(self) -> dict:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "difference": self.difference.to_dict(),
                "ratio": self.ratio.to_dict(), "p_value": self.p_value, "alternative_p": self.alternative_p}


def _as_array(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"expected one value per item, got shape {array.shape}")
    return array


def _nan_estimate(n: int, confidence: float) -> Estimate:
    return Estimate(math.nan, math.nan, math.nan, n, confidence)


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    finite = samples[~np.isnan(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean, *,
              confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """Percentile bootstrap over items of ``statistic`` (the mean by default)."""
    array = _as_array(values)
    if array.size == 0:
        return _nan_estimate(0, confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, array.size, size=(resamples, array.size))
    samples = np.array([statistic(array[row]) for row in idx], dtype=float)
    low, high = _percentiles(samples, confidence)
    return Estimate(float(statistic(array)), low, high, int(array.size), confidence)


def ratio_of_sums(numerators: Sequence[float], denominators: Sequence[float], *, confidence: float = CONFIDENCE,
                  resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """sum(num) / sum(den) with a bootstrap over items that resamples each pair together
    (e.g. precision = supported facts / stated facts over bios)."""
    num, den = _as_array(numerators), _as_array(denominators)
    if num.size != den.size:
        raise ValueError(f"{num.size} numerators for {den.size} denominators")
    if num.size == 0:
        return _nan_estimate(0, confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, size=(resamples, num.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        samples = num[idx].sum(axis=1) / den[idx].sum(axis=1)
        value = num.sum() / den.sum() if den.sum() else math.nan
    low, high = _percentiles(samples, confidence)
    return Estimate(float(value), low, high, int(num.size), confidence)


def paired_permutation_p(differences: Sequence[float], *, resamples: int = 10000, seed: int = 0,
                         alternative: str = "two-sided") -> float:
    """Sign-flip permutation test of mean(differences) = 0.

    Exact (all 2**n sign patterns) for n <= 16, else ``resamples`` random patterns with
    the observed one counted, so p is never 0. ``alternative``: "two-sided" or "greater".
    """
    d = _as_array(differences)
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative must be 'two-sided' or 'greater', not {alternative!r}")
    if d.size == 0 or not np.any(d):
        return 1.0
    observed = d.mean()
    if d.size <= 16:
        signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
        means = (signs * d).mean(axis=1)
        extra = 0
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice([-1.0, 1.0], size=(resamples, d.size))
        means = (signs * d).mean(axis=1)
        extra = 1  # the observed pattern itself
    tol = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        hits = np.sum(means >= observed - tol)
    else:
        hits = np.sum(np.abs(means) >= abs(observed) - tol)
    return float((hits + extra) / (means.size + extra))


def compare(a: Sequence[float], b: Sequence[float], *, denominators_a: Sequence[float] | None = None,
            denominators_b: Sequence[float] | None = None, confidence: float = CONFIDENCE,
            resamples: int = RESAMPLES, seed: int = 0) -> Comparison:
    """Model A vs model B on the same items: both estimates, the paired difference and
    ratio intervals (one resample of the items for both models), and permutation p-values.

    Per-item values are averaged; with ``denominators_*`` each model's figure is a ratio
    of sums (e.g. supported / stated facts), and the test is on per-item ratios where
    both denominators are non-zero.
    """
    xa, xb = _as_array(a), _as_array(b)
    if xa.size != xb.size:
        raise ValueError(f"paired comparison needs the same items: {xa.size} vs {xb.size}")
    n = int(xa.size)
    if n == 0:
        nan = _nan_estimate(0, confidence)
        return Comparison(nan, nan, nan, nan, math.nan, math.nan)
    da = np.ones(n) if denominators_a is None else _as_array(denominators_a)
    db = np.ones(n) if denominators_b is None else _as_array(denominators_b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        ra = xa[idx].sum(axis=1) / da[idx].sum(axis=1)
        rb = xb[idx].sum(axis=1) / db[idx].sum(axis=1)
        va = xa.sum() / da.sum() if da.sum() else math.nan
        vb = xb.sum() / db.sum() if db.sum() else math.nan
        ratio_samples = np.where(rb == 0, np.where(ra == 0, np.nan, np.inf), ra / np.where(rb == 0, 1, rb))
        ratio_value = (math.inf if va else math.nan) if vb == 0 else va / vb

    def estimate(value: float, samples: np.ndarray) -> Estimate:
        finite = samples[np.isfinite(samples)]
        if finite.size < samples[~np.isnan(samples)].size:  # some resamples are ±inf: keep them in the order
            low, high = _percentiles(np.where(np.isinf(samples), np.sign(samples) * 1e300, samples), confidence)
            low, high = (math.inf if low >= 1e299 else low), (math.inf if high >= 1e299 else high)
        else:
            low, high = _percentiles(samples, confidence)
        return Estimate(float(value), low, high, n, confidence)

    if denominators_a is None and denominators_b is None:
        per_item = xa - xb
    else:
        keep = (da > 0) & (db > 0)
        per_item = xa[keep] / da[keep] - xb[keep] / db[keep]
    return Comparison(
        a=estimate(va, ra), b=estimate(vb, rb), difference=estimate(va - vb, ra - rb),
        ratio=estimate(ratio_value, ratio_samples),
        p_value=paired_permutation_p(per_item, seed=seed),
        alternative_p=paired_permutation_p(per_item, seed=seed, alternative="greater"),
    )


@dataclass(frozen=True)
class SeedSummary:
    """One figure over several seeds: mean, standard deviation and a t interval of the mean."""

    mean: float
    std: float
    low: float
    high: float
    seeds: int
    values: tuple[float, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "values": list(self.values)}

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f} over {self.seeds} seeds"


def across_seeds(values: Sequence[float], confidence: float = CONFIDENCE) -> SeedSummary:
    from scipy import stats as scipy_stats

    array = _as_array(values)
    if array.size == 0:
        return SeedSummary(math.nan, math.nan, math.nan, math.nan, 0, ())
    mean = float(array.mean())
    if array.size == 1:
        return SeedSummary(mean, math.nan, math.nan, math.nan, 1, (mean,))
    std = float(array.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, array.size - 1)) * std / math.sqrt(array.size)
    return SeedSummary(mean, std, mean - half, mean + half, int(array.size), tuple(float(v) for v in array))


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> Estimate:
    """A proportion with its Wilson score interval (better than a bootstrap for 0 or n successes)."""
    from scipy import stats as scipy_stats

    if trials <= 0:
        return _nan_estimate(0, confidence)
    z = float(scipy_stats.norm.ppf(0.5 + confidence / 2))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), trials, confidence)
