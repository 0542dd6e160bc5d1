"""The claims table on hand-made benchmark results: intervals, tests and whether each claim holds."""

import math

import pytest

from benchmarks import claims


def _factscore(lmlm_precision, base_precision):
    def result(subject, precisions):
        return {"subject": subject, "gamma": 6, "responses": [
            {"precision": p, "score": None if p is None else p * 0.9} for p in precisions]}

    return [result("lmlm", lmlm_precision), result("baseline", base_precision)]


def test_a_clear_twofold_gain_holds_and_a_small_one_does_not():
    clear = claims.factscore_claims(_factscore([0.9, 0.8, 1.0, 0.9] * 8, [0.3, 0.2, 0.4, 0.3] * 8))
    precision = next(c for c in clear if c.claim.startswith("FactScore precision"))
    assert precision.value == pytest.approx(3.0) and precision.low <= 3.0 <= precision.high
    assert precision.holds and precision.p_value < 0.05 and precision.n == 32
    small = claims.factscore_claims(_factscore([0.5, 0.6, 0.55, 0.45] * 8, [0.3, 0.35, 0.3, 0.25] * 8))
    precision = next(c for c in small if c.claim.startswith("FactScore precision"))
    assert precision.value < 2 and not precision.holds  # LMLM is better, but not twice as good


def test_abstentions_are_left_out_of_the_pairs():
    result = claims.factscore_claims(_factscore([0.9, None, 1.0], [0.3, 0.2, None]))
    assert all(c.n == 1 for c in result)


def test_cloze_and_db_off():
    results = [{"subject": "lmlm", "hits": [1] * 30 + [0] * 10}, {"subject": "baseline", "hits": [1] * 5 + [0] * 35},
               {"subject": "lmlm-db-off", "hits": [1] * 4 + [0] * 36}]
    ratio, loss = claims.cloze_claims(results)
    assert ratio.value == pytest.approx(6.0) and ratio.holds
    assert loss.value == pytest.approx(1 - 4 / 30) and loss.low <= loss.value <= loss.high and loss.holds
    results[2]["hits"] = [1] * 25 + [0] * 15  # DB off keeps most of the hits: the claim fails
    assert not claims.cloze_claims(results)[1].holds


def test_forgetting_thresholds_and_across_seeds():
    rows = [{"method": "lmlm before", "split": "forget10", "model_utility": 0.5},
            {"method": "lmlm-delete", "split": "forget10", "model_utility": 0.5, "forget_quality": 0.7,
             "forget_quality_low": 0.2, "forget_quality_high": 0.99, "forget_quality_proxy": 0.01, "forget_items": 60}]
    quality, utility = claims.forgetting_claims({"rows": rows, "reference": "retain models trained without ..."})
    assert quality.holds and quality.p_value is None and "retain" in quality.measure and quality.n == 60
    assert utility.value == 0 and utility.holds
    rows[1]["forget_quality"] = 0.3
    summary = claims.across([[quality], claims.forgetting_claims({"rows": rows, "reference": "retain models"})[:1]])
    (both,) = summary
    assert both.value == pytest.approx(0.5) and both.n == 2 and not both.holds  # held on one seed of two
    assert both.low < 0.5 < both.high and not math.isnan(both.low)
    assert both.low == 0.0 and both.high == 1.0  # the t interval (about -2.0 to 3.0) cut to a p-value's range
    reloaded = claims.across([[claims.Claim(**quality.to_dict())], [claims.Claim(**both.to_dict())]])  # as from JSON
    assert reloaded[0].low >= 0.0
    assert "| yes |" not in claims.markdown(summary) and "| no |" in claims.markdown(summary)


def test_abstention_claims_with_a_reference():
    def answers(correct_before, n=50):
        return [{"verdict_before": "correct" if i < correct_before else "stated"} for i in range(n)]

    result = {"n": 50, "abstain_after": {"value": 0.8}, "stated_after": {"value": 0.2}, "answers": answers(40),
              "abstain_vs_stated": {"difference": {"value": 0.6, "low": 0.4, "high": 0.8}, "alternative_p": 0.001}}
    abstains, cost = claims.abstention_claims(result, {"training": {"answers": answers(40)}})
    assert abstains.holds and cost.value == 0 and cost.p_value < 0.05 and cost.holds
    assert cost.claim.startswith("abstention training costs")
    _, cost = claims.abstention_claims(result, {"decoding": {"answers": answers(48)}})  # 16 points fewer correct
    assert cost.value == pytest.approx(0.16) and not cost.holds and "(decoding)" in cost.claim
