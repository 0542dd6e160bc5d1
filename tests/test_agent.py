"""LMLMAgent: generate / ask / stream over a scripted model, and a checkpoint + real store round trip."""

from __future__ import annotations

import pytest
from runtime_fakes import DictStore, ScriptedLM, tokenizer

from lmlm_agent.agent import LMLMAgent
from lmlm_agent.format import qa_prompt, render_call, strip_values

QUESTION = "Where was Ko Itakura born?"
ANSWER = " Ko Itakura was born in " + render_call("Ko Itakura", "birth place", "Yokohama") + " Yokohama, like " + render_call(
    "Ko Itakura", "birth place", "Yokohama"
) + " Yokohama.\nQuestion: next"
FACTS = {("Ko Itakura", "birth place"): "Yokohama"}


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture
def agent(tok):
    model = ScriptedLM(tok, {qa_prompt(QUESTION): strip_values(ANSWER), "Ko Itakura": strip_values(ANSWER)})
    return LMLMAgent(model, tok, DictStore(FACTS))


def test_ask_strips_calls_cites_each_fact_once_and_stops_at_the_line_end(agent):
    answer = agent.ask(QUESTION)
    assert answer.text == "Ko Itakura was born in Yokohama, like Yokohama."
    assert answer.citations == [
        dict(entity="Ko Itakura", relation="birth place", value="Yokohama", fact_id=1, score=1.0, source="test:1")
    ]
    assert len(answer.trace) == 2 and answer.output.finish_reason == "stop"
    kept = agent.ask(QUESTION, keep_calls=True)
    assert kept.text.startswith("Ko Itakura was born in <|db_entity|> Ko Itakura<|db_relationship|> birth place")


def test_db_off_agent_cites_nothing(tok):
    model = ScriptedLM(tok, {qa_prompt(QUESTION): strip_values(ANSWER)})
    answer = LMLMAgent(model, tok, DictStore(FACTS), db_off=True).ask(QUESTION)
    assert answer.citations == [] and [r.match for r in answer.trace] == ["off", "off"]
    assert answer.output.raw_text.count("<|db_return|> unknown<|db_end|>") == 2


def test_generate_overrides_and_stream(agent):
    (out,) = agent.generate("Ko Itakura", max_new_tokens=4)
    assert out.finish_reason == "length"
    assert agent.config.max_new_tokens == 128  # overrides do not stick
    pieces = list(agent.stream("Ko Itakura", stop_strings=["\n"]))
    assert "".join(pieces) == " Ko Itakura was born in Yokohama, like Yokohama."  # the text ends before the stop string


def test_from_pretrained_with_a_real_store(tmp_path, tok):
    from tools import open_store

    from lmlm_agent.model import build_model, save_checkpoint

    save_checkpoint(tmp_path / "ckpt", build_model("micro", tok), tok, kind="lmlm", preset="micro")
    store = open_store(tmp_path / "kb.sqlite", index=False)
    store.write("Ko Itakura", "birth place", "Yokohama", source="doc:1")
    agent = LMLMAgent.from_pretrained(tmp_path / "ckpt", store=store, max_new_tokens=8)
    answer = agent.ask(QUESTION, force_lookup_start=True)
    assert answer.output.generated_tokens <= 8 and answer.output.raw_text.startswith("<|db_entity|>")
    assert store.read("ko itakura", "birth_place").value == "Yokohama"


def test_a_multi_valued_lookup_cites_each_row_by_its_own_id(tok):
    from tools import open_store

    store = open_store(None, index=False)
    store.declare_multi_valued(["child"])
    first = store.write("Ko Itakura", "child", "Aiko", source="doc:1")
    second = store.write("Ko Itakura", "child", "Ren", source="doc:2")
    answer = " Ko Itakura has " + render_call("Ko Itakura", "child", "Aiko, Ren") + " Aiko, Ren.\n"
    model = ScriptedLM(tok, {qa_prompt("Who are Ko Itakura's children?"): strip_values(answer)})
    result = LMLMAgent(model, tok, store).ask("Who are Ko Itakura's children?")
    assert result.text == "Ko Itakura has Aiko, Ren."
    assert [(c["fact_id"], c["value"], c["source"]) for c in result.citations] == [
        (first.id, "Aiko", "doc:1"), (second.id, "Ren", "doc:2")
    ]
