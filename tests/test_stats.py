"""benchmarks/stats.py on hand-made numbers, checked against scipy where scipy has the same method."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from benchmarks.stats import across_seeds, bootstrap, compare, paired_permutation_p, ratio_of_sums, wilson


def test_bootstrap_mean_matches_scipy_percentile_interval():
    values = np.random.default_rng(1).normal(0.4, 0.2, size=60)
    ours = bootstrap(values, resamples=4000)
    theirs = scipy_stats.bootstrap((values,), np.mean, method="percentile", n_resamples=4000,
                                   random_state=2).confidence_interval
    assert ours.value == pytest.approx(values.mean())
    assert ours.n == 60
    assert ours.low == pytest.approx(theirs.low, abs=0.015)
    assert ours.high == pytest.approx(theirs.high, abs=0.015)
    assert ours.low < ours.value < ours.high


def test_bootstrap_of_constant_items_has_no_width_and_empty_is_nan():
    assert bootstrap([1, 1, 1, 1]).low == bootstrap([1, 1, 1, 1]).high == 1.0
    assert math.isnan(bootstrap([]).value)


def test_ratio_of_sums_resamples_pairs_together():
    supported, stated = [1, 2, 0, 3, 2], [2, 2, 1, 3, 4]
    est = ratio_of_sums(supported, stated)
    assert est.value == pytest.approx(8 / 12)
    assert 0 <= est.low <= est.value <= est.high <= 1


def test_permutation_p_is_exact_for_small_n_and_matches_scipy():
    d = np.array([0.3, 0.1, -0.05, 0.2, 0.4, 0.25, -0.1, 0.15, 0.05, 0.35])
    for alternative, scipy_alt in (("two-sided", "two-sided"), ("greater", "greater")):
        theirs = scipy_stats.permutation_test((d,), np.mean, permutation_type="samples",
                                              alternative=scipy_alt, n_resamples=np.inf).pvalue
        assert paired_permutation_p(d, alternative=alternative) == pytest.approx(theirs)


def test_permutation_p_monte_carlo_is_never_zero_and_finds_a_clear_effect():
    d = np.full(40, 0.5) + np.random.default_rng(0).normal(0, 0.1, size=40)
    p = paired_permutation_p(d)
    assert 0 < p < 0.001
    assert paired_permutation_p(np.zeros(40)) == 1.0


def test_compare_paired_difference_ratio_and_direction():
    a = [1, 1, 1, 0, 1, 1, 1, 1, 0, 1] * 3
    b = [0, 1, 0, 0, 0, 1, 0, 0, 0, 1] * 3
    c = compare(a, b)
    assert c.a.value == pytest.approx(0.8) and c.b.value == pytest.approx(0.3)
    assert c.difference.value == pytest.approx(0.5)
    assert c.ratio.value == pytest.approx(0.8 / 0.3)
    assert c.difference.low > 0 and c.holds()
    assert not compare(b, a).holds()  # one-sided: B is not above A
    with pytest.raises(ValueError, match="same items"):
        compare([1, 0], [1])


def test_compare_ratio_of_sums_with_denominators():
    c = compare([2, 3, 1], [1, 1, 0], denominators_a=[2, 4, 1], denominators_b=[3, 3, 2])
    assert c.a.value == pytest.approx(6 / 7)
    assert c.b.value == pytest.approx(2 / 8)


def test_across_seeds_t_interval_matches_scipy():
    values = [0.41, 0.55, 0.38, 0.60]
    s = across_seeds(values)
    low, high = scipy_stats.t.interval(0.95, 3, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (s.low, s.high) == pytest.approx((low, high))
    assert s.std == pytest.approx(np.std(values, ddof=1))
    assert math.isnan(across_seeds([0.5]).std)


def test_wilson_matches_scipy():
    theirs = scipy_stats.binomtest(7, 20).proportion_ci(method="wilson")
    ours = wilson(7, 20)
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high))
    assert wilson(0, 10).low == 0.0 and wilson(0, 10).high > 0.2
