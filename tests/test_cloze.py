import numpy as np
import pytest
import torch
from bench_setup import gold_store, micro_setup

from benchmarks.cloze import ClozeConfig, cloze_items, evaluate_cloze, is_hit
from benchmarks.subject import Subject
from benchmarks.world import RELATION_BY_NAME


def test_hit_within_the_first_five_words():
    assert is_hit(" Elton. He was born", "Elton")
    assert is_hit("on 3 December 1922.", "3 December 1922")
    assert not is_hit("a b c d e Elton", "Elton")
    assert not is_hit("3 December 1923", "3 December 1922")
    assert is_hit("the Linfen Trust, as", "Linfen Trust", k=3)
    assert not is_hit("anything", "")


def test_items_are_statement_prefixes():
    world, _, _ = micro_setup()
    items = cloze_items(world, n=10, seed=1)
    assert items == cloze_items(world, n=10, seed=1) and len(items) == 10
    for it in items:
        assert (it.entity, it.relation, it.answer) in set(world.triples)
        statements = [t.format(e=it.entity, v=it.answer) for t in RELATION_BY_NAME[it.relation].statements]
        assert any(s.startswith(f"{it.prompt} {it.answer}") for s in statements)


def test_teacher_forcing_matches_a_manual_forward():
    world, tok, model = micro_setup()
    subject = Subject("baseline", model, tok)
    (hits, n, nll), = subject.teacher_forced(["Elton was founded in"], [" 1820"])
    ctx = tok("Elton was founded in", add_special_tokens=False)["input_ids"]
    tgt = tok(" 1820", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ctx + tgt])).logits.log_softmax(-1)[0]
    rows = [logp[len(ctx) + i - 1] for i in range(len(tgt))]
    assert n == len(tgt)
    assert hits == sum(int(r.argmax() == t) for r, t in zip(rows, tgt))
    assert nll == pytest.approx(-sum(r[t].item() for r, t in zip(rows, tgt)), rel=1e-4)


def test_evaluate_cloze_on_a_micro_model():
    world, tok, model = micro_setup()
    items = cloze_items(world, n=4)
    config = ClozeConfig(max_new_tokens=12)
    results = [evaluate_cloze(s, items, config) for s in (
        Subject("baseline", model, tok),
        Subject("lmlm", model, tok, store=gold_store(world)),
        Subject("lmlm-db-off", model, tok, db_off=True),
    )]
    for r in results:
        assert r.n == 4 and 0 <= r.hit_at_k <= 1 and 0 <= r.precision_at_1 <= 1 and np.isfinite(r.object_nll)
