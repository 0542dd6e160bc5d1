import json
import math

import numpy as np
import pytest
import torch
from bench_setup import gold_store, micro_setup
from scipy.stats import hmean, ks_2samp

from benchmarks.subject import ScoredAnswer, Subject, sequence_nll
from benchmarks.tofu import (
    TofuConfig,
    evaluate_tofu,
    forget_quality,
    load_tofu,
    model_utility,
    normalised_probability,
    probability,
    rouge_l_recall,
    truth_ratio_score,
    truth_ratios,
)


def test_probability_and_normalised_probability():
    assert probability(math.log(2)) == pytest.approx(0.5)
    # P(answer) = 1/2, perturbed 1/4 + 1/4: normalised 0.5 / (0.5 + 0.5).
    assert normalised_probability([math.log(2)], [[math.log(4), math.log(4)]]) == pytest.approx([0.5])


def test_truth_ratio_by_hand():
    # base NLL 1, perturbed NLLs 2 and 3: R = exp(1 - 2.5) = exp(-1.5).
    r = truth_ratios([1.0, 2.0], [[2.0, 3.0], [1.0, 1.0]])
    assert r == pytest.approx([math.exp(-1.5), math.e])
    assert truth_ratio_score(r, forget=True) == pytest.approx((math.exp(-1.5) + 1 / math.e) / 2)
    assert truth_ratio_score(r, forget=False) == pytest.approx((1 - math.exp(-1.5) + 0.0) / 2)


def test_forget_quality_is_the_ks_p_value():
    a, b = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    # Fully separated samples of 3 and 3: exact two-sided p = 2 / C(6, 3) = 0.1.
    assert forget_quality(a, b) == pytest.approx(0.1)
    assert forget_quality(a, a) == pytest.approx(1.0)
    c = [0.15, 0.25, 0.55, 0.9]
    assert forget_quality(a, c) == pytest.approx(ks_2samp(a, c).pvalue)


def test_model_utility_is_the_harmonic_mean():
    values = [0.9, 0.5, 0.7, 0.8, 0.3, 0.6, 0.4, 0.55, 0.65]
    assert model_utility(values) == pytest.approx(hmean(values))
    assert model_utility([1, 2, 4]) == pytest.approx(3 / 1.75)
    assert model_utility([0.5, 0.0]) == 0.0


def test_rouge_l_recall_with_stemming():
    assert rouge_l_recall("the cat sat", "the cat sat on the mat") == pytest.approx(0.5)
    assert rouge_l_recall("she was running home", "she runs home") == pytest.approx(1.0)
    assert rouge_l_recall("", "a b") == 0.0


def test_sequence_nll_by_hand():
    # Two positions predict tokens 1 then 2 from uniform logits over 4 ids: NLL = ln 4 each.
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = math.log(3)  # p(2) = 3/6 at the second position
    labels = torch.tensor([[-100, 1, 2]])
    expected = (math.log(4) + -math.log(0.5)) / 2
    assert sequence_nll(logits, labels).item() == pytest.approx(expected)


def test_load_tofu_json_lines(tmp_path):
    rows = [{"question": "q?", "answer": "a", "paraphrased_answer": "a2", "perturbed_answer": ["b", "c"]}]
    (tmp_path / "forget01_perturbed.json").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "world_facts_perturbed.json").write_text(json.dumps(
        [{"question": "q?", "answer": "a", "perturbed_answer": ["b"]}]))
    qa = load_tofu(tmp_path)
    assert set(qa) == {"forget01", "world_facts"}
    assert qa["forget01"][0].answers == ["a", "a2", "b", "c"]
    assert qa["world_facts"][0].paraphrased_answer == "a"


def test_answer_nll_matches_a_manual_forward():
    world, tok, model = micro_setup()
    q = world.qa["retain"][0]
    subject = Subject("baseline", model, tok)
    (nll,) = subject.answer_nlls([q.question], [ScoredAnswer(q.answer)])
    prompt = tok(f"Question: {q.question}\nAnswer:", add_special_tokens=False)["input_ids"]
    reply = tok(" " + q.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logp = model(torch.tensor([prompt + reply])).logits.log_softmax(-1)[0]
    manual = -np.mean([logp[len(prompt) + i - 1, t].item() for i, t in enumerate(reply)])
    assert nll == pytest.approx(manual, rel=1e-4)


def test_lmlm_answers_carry_the_looked_up_call():
    world, tok, model = micro_setup()
    q = world.qa["retain"][0]
    lmlm = Subject("lmlm", model, tok, store=gold_store(world))
    text = lmlm.answer_text(ScoredAnswer(q.answer, q.entity, q.relation, q.value_offsets[0]))
    assert f"{q.relation}<|db_return|> {q.value}<|db_end|> {q.value}" in text
    off = Subject("lmlm-db-off", model, tok, db_off=True)
    assert "<|db_return|> unknown<|db_end|>" in off.answer_text(ScoredAnswer(q.answer, q.entity, q.relation, q.value_offsets[0]))
    # Batched and one-by-one scoring agree (padding does not leak into the loss).
    answers = [ScoredAnswer(a, q.entity, q.relation, o) for a, o in zip(q.answers, q.value_offsets)]
    batched = lmlm.answer_nlls([q.question] * len(answers), answers)
    single = [lmlm.answer_nlls([q.question], [a])[0] for a in answers]
    assert batched == pytest.approx(single, rel=1e-4)


def test_evaluate_tofu_end_to_end_on_a_micro_model():
    world, tok, model = micro_setup()
    subject = Subject("baseline", model, tok)
    reference = {"forget01": [1.0, 0.5]}
    result = evaluate_tofu(subject, world.qa, TofuConfig(max_questions=3, max_new_tokens=4),
                           forget_splits=("forget01",), reference_ratios=reference)
    assert set(result.splits) == {"forget01", "retain", "real_authors", "world_facts"}
    for r in result.splits.values():
        assert 0 <= r.probability <= 1 and 0 <= r.rouge_l <= 1 and 0 <= r.truth_ratio <= 1
    assert 0 <= result.model_utility <= 1 and 0 <= result.forget_quality["forget01"] <= 1
    assert "ratios" not in json.dumps(result.to_dict())
