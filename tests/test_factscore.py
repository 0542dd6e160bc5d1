import math
from types import SimpleNamespace

import pytest
from bench_setup import gold_store, micro_setup

from benchmarks.factscore import (
    AtomicFact,
    FactScoreConfig,
    GoldJudge,
    OpenAIJudge,
    ResponseScore,
    aggregate,
    bio_prompt,
    evaluate_factscore,
    length_penalty,
    parse_statement,
    world_gamma,
)
from benchmarks.subject import Subject


def test_length_penalty_by_hand():
    assert length_penalty(10) == 1.0 and length_penalty(25) == 1.0
    assert length_penalty(5) == pytest.approx(math.exp(-1))
    assert length_penalty(1) == pytest.approx(math.exp(-9))
    with pytest.raises(ValueError):
        length_penalty(0)


def test_scores_and_abstentions():
    facts = [AtomicFact(f"f{i}", i < 4) for i in range(5)]
    r = ResponseScore("X", "...", facts)
    assert r.precision == pytest.approx(0.8) and r.score == pytest.approx(0.8 * math.exp(-1))
    result = aggregate("m", [r, ResponseScore("Y", "", [])])
    assert result.abstention_rate == 0.5 and result.n == 2
    assert result.score == pytest.approx(r.score) and result.precision == pytest.approx(0.8)
    assert result.facts_per_response == 5 and result.supported_per_response == 4
    assert result.intervals["precision"]["n"] == 1  # the abstention is not an item of the intervals


def test_gamma_is_the_worlds_median_facts_per_person_unless_given():
    import statistics

    world, tok, model = micro_setup()
    people = [len(e.facts) for e in world.entities if e.kind == "person"]
    assert world_gamma(world) == round(statistics.median(people)) < 10
    facts = [AtomicFact(f"f{i}", True) for i in range(5)]
    assert ResponseScore("X", "", facts, gamma=5).score == 1.0  # a complete bio is not penalised
    assert ResponseScore("X", "", facts).score == pytest.approx(math.exp(-1))  # published gamma = 10
    subject = Subject("baseline", model, tok)
    topics = world.splits["retain"][:1]
    assert evaluate_factscore(subject, world, topics, FactScoreConfig(max_new_tokens=2)).gamma == world_gamma(world)
    assert evaluate_factscore(subject, world, topics, FactScoreConfig(max_new_tokens=2, gamma=10)).gamma == 10


def test_intervals_bracket_the_means():
    bios = [ResponseScore(f"T{i}", "", [AtomicFact("a", True), AtomicFact("b", i % 3 == 0)], gamma=2)
            for i in range(30)]
    result = aggregate("m", bios)
    for key, value in (("precision", result.precision), ("facts", 2.0), ("supported", result.supported_per_response)):
        iv = result.intervals[key]
        assert iv["low"] <= value <= iv["high"] and iv["n"] == 30
    assert result.intervals["precision"]["low"] < result.precision < result.intervals["precision"]["high"]
    assert [r["precision"] for r in result.responses][:3] == [1.0, 0.5, 0.5]


def test_gold_judge_on_world_text():
    world, _, _ = micro_setup()
    judge = GoldJudge(world)
    bio = next(d for d in world.documents if "#" in d.id)
    facts = judge.facts(bio.entity, bio.plain)
    assert len(facts) == len(world.by_name[bio.entity].facts) and all(f.supported for f in facts)
    q = world.qa["retain"][0]
    (wrong,) = judge.facts(q.entity, q.perturbed_answer[0])
    assert not wrong.supported and wrong.relation == q.relation
    # "unknown" values are no claim; fragments are no fact; free text counts when it states a gold value.
    assert judge.facts(q.entity, f"{q.entity} was born in unknown. ::: ..") == []
    (free,) = judge.facts(q.entity, f"People say {q.entity} likes {q.value} a lot.")
    # A sentence the token budget cut off claims nothing; the same words ended are a (free-text) claim.
    assert judge.facts(q.entity, f"People say {q.entity} likes {q.value}. {q.entity} spent many years working for") \
        == judge.facts(q.entity, f"People say {q.entity} likes {q.value}.")
    assert len(judge.facts(q.entity, f"{q.entity} spent many years working for a while.")) == 1
    assert free.supported and free.relation is None
    # A true fact about another entity is off-topic: not supported by the topic's facts.
    other = next(d for d in world.documents if d.entity != bio.entity and "#" in d.id)
    assert not any(f.supported for f in judge.facts(bio.entity, other.plain))


def test_ambiguous_sentences_take_the_supported_reading():
    readings = parse_statement("Elton was founded in 1820.")
    assert {r[1] for r in readings} == {"founded year"} and len(readings) == 1
    assert ("The Red Tower", "genre", "novel") in parse_statement("The Red Tower is a novel.")


class FakeClient:
    """Answers like a chat endpoint: splits sentences into facts, says True for facts in the knowledge."""

    def __init__(self):
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))
        self.prompts = []

    def create(self, model, messages, temperature):
        prompt = messages[0]["content"]
        self.prompts.append(prompt)
        if prompt.startswith("Please breakdown"):
            sentence = prompt.split("\n\n", 1)[1]
            content = "\n".join(f"- {part.strip()}." for part in sentence.rstrip(".").split(" and "))
        else:
            fact = prompt.split("Input: ")[1].split(" True or False?")[0]
            content = "True" if fact.rstrip(".").split()[-1] in prompt.split("\n\n")[1] else "False"
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=content))])


def test_openai_judge_with_a_fake_endpoint():
    judge = OpenAIJudge(client=FakeClient(), model="fake")
    r = judge.score("Ada", "Ada was born in London and Ada wrote poems.", knowledge="Ada lived in London.")
    assert [f.text for f in r.facts] == ["Ada was born in London.", "Ada wrote poems."]
    assert [f.supported for f in r.facts] == [True, False]
    assert "True or False?" in judge.client.prompts[-1]


def test_evaluate_factscore_on_a_micro_model():
    world, tok, model = micro_setup()
    topics = world.splits["retain"] + world.splits["real_authors"]
    config = FactScoreConfig(max_entities=2, max_new_tokens=8)
    for subject in (Subject("baseline", model, tok), Subject("lmlm", model, tok, store=gold_store(world))):
        result = evaluate_factscore(subject, world, topics, config)
        assert result.n == 2 and len(result.responses) == 2
        assert 0 <= result.abstention_rate <= 1
    assert bio_prompt("X Y") == "Tell me a bio of X Y. X Y is"


def test_repeated_sentences_count_once():
    world, _, _ = micro_setup()
    q = world.qa["retain"][0]
    assert len(GoldJudge(world).facts(q.entity, f"{q.answer} {q.answer} {q.answer}")) == 1
