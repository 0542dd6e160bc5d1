import copy
import math

import pytest
from bench_setup import gold_store, micro_setup

from benchmarks.forgetting import ForgettingResult, UnlearnConfig, copy_store, run_forgetting, unlearn
from benchmarks.subject import ScoredAnswer, Subject
from benchmarks.tofu import TofuConfig


def _forget_nll(model, tok, items):
    subject = Subject("m", model, tok)
    return sum(subject.answer_nlls([q.question for q in items], [ScoredAnswer(q.answer) for q in items])) / len(items)


@pytest.mark.parametrize("method", ["grad_ascent", "grad_diff", "npo"])
def test_gradient_methods_raise_the_forget_loss(method):
    world, tok, model = micro_setup()
    forget, retain = world.qa["forget10"], world.qa["retain"]
    before = _forget_nll(model, tok, forget)
    unlearned = unlearn(copy.deepcopy(model), tok, method, forget, retain, UnlearnConfig(steps=3, lr=1e-2, batch_size=4))
    assert _forget_nll(unlearned, tok, forget) > before
    assert _forget_nll(model, tok, forget) == pytest.approx(before)  # the original is untouched


def test_warm_up_starts_the_learning_rate_at_zero():
    """TOFU's schedule: the first step of a warm-up moves nothing; without one, the first step does."""
    world, tok, model = micro_setup()
    forget, retain = world.qa["forget10"], world.qa["retain"]
    before = _forget_nll(model, tok, forget)
    warm = unlearn(copy.deepcopy(model), tok, "grad_ascent", forget, retain,
                   UnlearnConfig(steps=1, lr=1e-2, batch_size=4, warmup_steps=3))
    assert _forget_nll(warm, tok, forget) == pytest.approx(before)
    constant = unlearn(copy.deepcopy(model), tok, "grad_ascent", forget, retain, UnlearnConfig(steps=1, lr=1e-2, batch_size=4))
    assert _forget_nll(constant, tok, forget) > before


def test_unknown_method():
    world, tok, model = micro_setup()
    with pytest.raises(ValueError):
        unlearn(model, tok, "magic", world.qa["forget01"], [], UnlearnConfig())


def test_forgetting_table_on_a_micro_model():
    world, tok, model = micro_setup()
    store = gold_store(world)
    rows_before = store.count()
    lmlm = Subject("lmlm", model, tok, store=store)
    baseline = Subject("baseline", copy.deepcopy(model), tok)
    result = run_forgetting(world, lmlm, baseline, TofuConfig(max_questions=2, max_new_tokens=3),
                            UnlearnConfig(steps=1, batch_size=2), splits=("forget01", "forget10"))
    assert isinstance(result, ForgettingResult)
    methods = [(r.method, r.split) for r in result.rows]
    assert ("lmlm-delete", "forget10") in methods and ("npo", "forget01") in methods
    assert len(result.rows) == 2 * 2 + 2 * 4
    for r in result.rows:
        assert 0 <= r.forget_quality <= 1 and r.seconds >= 0 and not math.isnan(r.model_utility)
    forget = world.splits["forget10"]
    assert result.receipts["forget10"]["entities"] == len(forget)
    assert result.receipts["forget10"]["rows_removed"] == sum(len(world.by_name[n].facts) for n in forget)
    assert result.receipts["forget10"]["verified"]
    assert store.count() == rows_before  # the run's store is never modified
    assert copy_store(store).count() == rows_before


def test_retain_models_as_the_reference():
    world, tok, model = micro_setup()
    store = gold_store(world)
    forget = world.splits["forget10"]
    retain_store = copy_store(store, without=forget)
    assert retain_store.count() == store.count() - sum(len(world.by_name[n].facts) for n in forget)
    refs = (Subject("lmlm-retain", model, tok, store=retain_store), Subject("baseline-retain", model, tok))
    result = run_forgetting(world, Subject("lmlm", model, tok, store=store), Subject("baseline", model, tok),
                            TofuConfig(max_questions=2, rouge=False), UnlearnConfig(steps=1, batch_size=2),
                            splits=("forget05",), methods=("grad_diff",), retain_models=refs)
    assert "retain models" in result.reference
    # Deleting the rows leaves exactly the retain reference's state (same weights here): p = 1.
    delete = next(r for r in result.rows if r.method == "lmlm-delete")
    assert delete.forget_quality == 1.0 and delete.forget_quality_high == 1.0
    assert 0 <= delete.forget_quality_low <= 1 and delete.forget_items == 2
    assert 0 <= delete.forget_quality_proxy <= 1  # the never-seen proxy, kept as a second column
    assert delete.forget_quality_values == 1.0 == delete.forget_quality_values_high  # on the values' tokens too
    assert 0 <= delete.forget_quality_values_low <= 1
    grad = next(r for r in result.rows if r.method == "grad_diff")
    assert 0 <= grad.forget_quality_values <= 1


def test_value_truth_ratios_one_per_question_none_without_value_offsets():
    from dataclasses import replace

    from benchmarks.tofu import value_truth_ratios

    world, tok, model = micro_setup()
    items = world.qa["forget05"][:3]
    subject = Subject("baseline", model, tok)
    ratios = value_truth_ratios(subject, items)
    assert len(ratios) == 3 and all(r > 0 for r in ratios)
    assert value_truth_ratios(subject, [replace(q, value_offsets=[]) for q in items]) == []  # TOFU's own files


def test_forget_quality_interval_brackets_the_p_value():
    from benchmarks.forgetting import forget_quality_interval
    from benchmarks.tofu import forget_quality

    rng = __import__("random").Random(0)
    same = [rng.random() for _ in range(60)]
    shifted = [x + 0.5 for x in same]
    low, high = forget_quality_interval(same, shifted, resamples=200)
    assert low <= forget_quality(same, shifted) <= high < 0.05
    low, high = forget_quality_interval(same, same, resamples=200)
    assert low < forget_quality(same, same) == 1.0 and high > 0.9
