"""Memory writes: ingested text changes what a running agent answers; deleting it changes it back."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lmlm_agent.agent import LMLMAgent
from lmlm_agent.chat_model import ChatLMLM
from tools.ingest import ingest_texts, read_texts
from lmlm_agent.format import LookupCall, qa_prompt, strip_values
from runtime_fakes import ScriptedLM, tokenizer

QUESTION = "Where was Ko Itakura born?"
# The micro LMLM's answer: it asks the database, then repeats what came back.
ANSWER = "<|db_entity|> Ko Itakura<|db_relationship|> birth place<|db_return|> Yokohama<|db_end|> Ko Itakura was born in Yokohama."
NEW_TEXT = "Ko Itakura was born in Yokohama. He plays football for Japan."


@dataclass
class _Result:
    calls: list[tuple[int, LookupCall]] = field(default_factory=list)


class ScriptedAnnotator:
    """Finds the calls a trained annotator would: a value it knows, where it occurs in the text."""

    def __init__(self, facts: list[tuple[str, str, str]]):
        self.facts = facts

    def annotate(self, texts: list[str]) -> list[_Result]:
        return [_Result([(t.find(v), LookupCall(e, r, v)) for e, r, v in self.facts if v in t]) for t in texts]


@pytest.fixture
def agent():
    from tools import open_store

    tok = tokenizer()
    model = ScriptedLM(tok, {qa_prompt(QUESTION): strip_values(ANSWER)})
    return LMLMAgent(model, tok, open_store(None, index=False), max_new_tokens=40)


def test_ask_changes_after_ingest_and_after_delete(agent) -> None:
    before = agent.ask(QUESTION)
    assert before.citations == [] and [r.value for r in before.trace] == ["unknown"]

    annotator = ScriptedAnnotator([("Ko Itakura", "birth place", "Yokohama"), ("Ko Itakura", "national team", "Japan")])
    report = ingest_texts(annotator, agent.store, [("news.txt#p0", NEW_TEXT)])
    assert (report.documents, report.calls, report.written) == (1, 2, 2)
    assert [f["source"] for f in report.facts] == ["news.txt#p0@23", "news.txt#p0@55"]  # provenance: file, paragraph, offset

    after = agent.ask(QUESTION)
    (cite,) = after.citations
    assert (cite["value"], cite["source"], cite["fact_id"]) == ("Yokohama", "news.txt#p0@23", report.facts[0]["fact_id"])

    receipt = agent.store.delete(fact_id=cite["fact_id"])
    assert receipt.verified
    gone = agent.ask(QUESTION)
    assert gone.citations == [] and [r.value for r in gone.trace] == ["unknown"]


def test_chat_model_sees_ingested_facts_without_reloading(agent) -> None:
    chat = ChatLMLM(model="micro", agent=agent)
    assert chat.invoke(QUESTION).response_metadata["citations"] == []
    ingest_texts(ScriptedAnnotator([("Ko Itakura", "birth place", "Yokohama")]), agent.store, [("doc#0", NEW_TEXT)])
    assert [c["value"] for c in chat.invoke(QUESTION).response_metadata["citations"]] == ["Yokohama"]


def test_refused_triples_are_reported_not_fatal(agent) -> None:
    bad = ScriptedAnnotator([("Ko Itakura", "birth place", "Yokohama"), ("Ko Itakura", "x" * 300, "Japan")])
    report = ingest_texts(bad, agent.store, [("doc#0", NEW_TEXT)])
    assert report.written == 1 and len(report.invalid) == 1 and "relation" in report.invalid[0]


def test_read_texts(tmp_path) -> None:
    txt = tmp_path / "news.txt"
    txt.write_text("First paragraph.\n\n\nSecond one.\n")
    assert read_texts(txt) == [("news.txt#p0", "First paragraph."), ("news.txt#p1", "Second one.")]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"id": "a", "text": "Alpha."}\n\n{"text": "Beta."}\n')
    assert read_texts(jsonl) == [("docs.jsonl#a", "Alpha."), ("docs.jsonl#1", "Beta.")]
