"""Abstention after a miss: the judge, the benchmark's plumbing, and a micro LMLM trained with abstentions."""

import copy

import pytest
from bench_setup import gold_store, micro_setup

from benchmarks.abstention import ABSTAIN, CORRECT, EMPTY, STATED, AbstentionConfig, evaluate_abstention, judge
from benchmarks.subject import Subject


def test_judge():
    world, _, _ = micro_setup()
    q = next(q for q in world.qa["retain"] if q.relation == "birth place")
    head = f"{q.entity} was born in"
    assert judge(f" {head} {q.value}.\nQuestion: ...", q) == CORRECT
    assert judge(f" {head} unknown.", q) == ABSTAIN
    assert judge(f" {head} unknown. {q.entity} is a painter.", q) == ABSTAIN  # the value ends with its sentence
    assert judge(f" {head} unknown 18.", q) == STATED  # a stray word after the abstention states something
    assert judge(f" {q.entity} was born on unknown?", q) == ABSTAIN  # another relation's head: still no value
    assert judge(f" {q.entity} was born on 3 May 1901.", q) == STATED
    assert judge(f" {q.entity}x was born in unknown.", q) == ABSTAIN  # the name misspelled: still no value
    assert judge(f" {head} Oslo.", q) == STATED
    assert judge(f" {head} Oslo.\n{head} {q.value}.", q) == STATED  # only the first line counts
    assert judge(f" {head}", q) == EMPTY  # the sentence's head states no value
    assert judge("  \n", q) == EMPTY


def test_benchmark_leaves_the_store_alone_and_counts_every_answer():
    world, tok, model = micro_setup()
    store = gold_store(world)
    rows = store.count()
    result = evaluate_abstention(Subject("lmlm", model, tok, store=store), world.qa["forget10"],
                                 AbstentionConfig(questions=3, max_new_tokens=4))
    assert result.n == len(result.answers) == min(3, len(world.qa["forget10"]))
    assert store.count() == rows
    assert 0 <= result.abstain_after["value"] + result.stated_after["value"] <= 1
    with pytest.raises(ValueError):
        evaluate_abstention(Subject("baseline", model, tok), world.qa["forget10"], AbstentionConfig())


def _train(texts, tok, model, steps=150, lr=1e-2, seed=0):
    import torch

    from benchmarks.subject import pad_rows
    from training.data import pack

    torch.manual_seed(seed)
    packed = pack(texts, tok, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = [(step * 8 + i) % len(packed.input_ids) for i in range(8)]
        ids, labels, mask = pad_rows([packed.input_ids[i] for i in batch], [packed.labels[i] for i in batch],
                                     tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def test_a_micro_lmlm_trained_with_abstentions_says_unknown_after_a_deletion():
    """Trained on the drills with half the calls answered unknown, the model repeats `unknown` after a miss
    more often than it states a value (trained without, it says unknown for none: 0 of 6 in a scratch run)."""
    from training.data import with_abstentions

    world, tok, model = micro_setup()
    drills = [d.annotated for d in world.documents if d.plain.startswith("Question:")]
    trained = _train(with_abstentions(drills * 8, 0.5, seed=0), tok, copy.deepcopy(model), steps=400, lr=3e-3)
    result = evaluate_abstention(Subject("lmlm", trained, tok, store=gold_store(world)), world.qa["forget10"],
                                 AbstentionConfig(questions=8, max_new_tokens=24))
    assert result.abstain_after["value"] > result.stated_after["value"]
    assert result.correct_before["value"] > 0  # with the store, it still copies the returned values
