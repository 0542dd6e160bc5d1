import json
import time

import pytest

from benchmarks.world import World, generate_world, qa_prompt, special_to_legacy
from lmlm_agent.format import legacy_to_special, list_calls, parse, strip_calls


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(60, seed=3)


def test_tiny_world_is_fast_and_complete():
    start = time.perf_counter()
    w = generate_world(5, seed=0)
    assert time.perf_counter() - start < 0.1
    assert len(w.entities) == 5
    for split in ("forget01", "forget05", "forget10", "retain", "real_authors", "world_facts"):
        assert w.splits[split] and w.qa[split], split
    with pytest.raises(ValueError):
        generate_world(4)


def test_seeded(world):
    again = generate_world(60, seed=3)
    assert [d.annotated for d in again.documents] == [d.annotated for d in world.documents]
    assert again.qa == world.qa
    assert generate_world(60, seed=4).triples != world.triples


def test_documents_state_their_facts_after_each_call(world):
    gold = set(world.triples)
    names = {e.name for e in world.entities}
    assert len(names) == len(world.entities)
    for doc in world.documents:
        parsed = parse(doc.annotated)
        assert not parsed.errors
        assert strip_calls(doc.annotated) == doc.plain
        for call in parsed.calls:
            assert call.triple in gold and call.entity == doc.entity
            # The value is repeated in the text right after the call.
            assert doc.annotated[call.end:].startswith(" " + call.value)
    # Every gold fact is stated in the entity's biographies.
    stated = {c.triple for d in world.documents for c in list_calls(d.annotated)}
    assert stated == gold


def test_general_text_states_no_entity_fact(world):
    for text in world.general_text:
        assert not list_calls(text)
        for e in world.entities:
            assert e.name not in text


def test_legacy_round_trip(world):
    for doc in world.documents:
        legacy = special_to_legacy(doc.annotated)
        conv = legacy_to_special(legacy)
        assert conv.text == doc.annotated
        assert conv.converted == len(list_calls(doc.annotated)) and not conv.dropped


def test_splits_and_qa(world):
    s = world.splits
    assert set(s["forget01"]) <= set(s["forget05"]) <= set(s["forget10"])
    assert not set(s["forget10"]) & set(s["retain"])
    assert not set(s["real_authors"]) & (set(s["retain"]) | set(s["forget10"]))
    people = [e for e in world.entities if e.kind == "person"]
    assert len(s["forget10"]) == round(0.1 * (len(people) - len(s["real_authors"])))
    by_name = {e.name: e for e in world.entities + world.holdout}
    for split, items in world.qa.items():
        for q in items:
            assert q.entity in s[split] and by_name[q.entity].facts[q.relation] == q.value
            assert q.perturbed_answer and q.answer not in q.perturbed_answer
            for text, offset in zip(q.answers[:2], q.value_offsets):
                assert text[offset:].startswith(q.value)
            for text, offset in zip(q.perturbed_answer, q.value_offsets[2:]):
                assert not text[offset:].startswith(q.value + ".")
    drills = [d for d in world.documents if d.plain.startswith("Question:")]
    q = world.qa["retain"][0]
    assert any(f"{qa_prompt(q.question)} {q.answer}" in d.plain for d in drills)


def test_drills_of_an_entity_are_one_document(world):
    """A statement in a drill is followed by the next question, not by end-of-text (short bios otherwise)."""
    drills = [d for d in world.documents if d.plain.startswith("Question:")]
    assert len(drills) == len(world.entities) == len({d.entity for d in drills})
    for d in drills:
        assert d.plain.count("Question:") == len(world.by_name[d.entity].facts)


def test_save_and_load(world, tmp_path):
    world.save(tmp_path)
    assert World.load(tmp_path) == world
    corpus = [json.loads(line) for line in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    assert len(corpus) == len(world.documents) + len(world.general_text)
    assert {"id", "text", "plain"} <= set(corpus[0])
    triples = [json.loads(line) for line in (tmp_path / "triples.jsonl").read_text().splitlines()]
    assert [(t["entity"], t["relation"], t["value"]) for t in triples] == world.triples
    records = json.loads((tmp_path / "teacher_records.json").read_text())
    assert set(records) == {"metadata", "examples"}
    ex = records["examples"][0]
    assert legacy_to_special(ex["annotated_text"]).text == world.documents[0].annotated
    assert ex["text"] == world.documents[0].plain


def test_holdout_people_are_unseen(world):
    assert world.holdout and world.qa["holdout"]
    names = {e.name for e in world.holdout}
    assert names == set(world.splits["holdout"])
    assert not names & {e.name for e in world.entities}
    assert not names & {t[0] for t in world.triples}
    for doc in world.corpus():
        assert not any(n in doc.plain for n in names)


def test_every_question_has_its_perturbed_answers():
    for n in (5, 8, 60):
        w = generate_world(n, seed=1, n_perturbed=3)
        for items in w.qa.values():
            assert all(len(q.perturbed_answer) == 3 for q in items)


def test_retain_corpus_leaves_out_the_forget_entities(world):
    forget = set(world.splits["forget10"])
    kept = world.corpus(without=forget)
    assert not {d.entity for d in kept} & forget
    assert len(kept) == len(world.corpus()) - sum(d.entity in forget for d in world.documents)
