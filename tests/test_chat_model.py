"""ChatLMLM: the langchain-tests standard unit suite, plus citations, streaming and tool routing on a scripted LM."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_tests.unit_tests import ChatModelUnitTests

from lmlm_agent.agent import LMLMAgent
from lmlm_agent.chat_model import ChatLMLM, render_prompt
from lmlm_agent.format import qa_prompt, strip_values
from runtime_fakes import ScriptedLM, tokenizer

QUESTION = "When was Ada Lovelace born?"
SCRIPT = "<|db_entity|> Ada Lovelace<|db_relationship|> birth year<|db_return|> 1815<|db_end|> Ada Lovelace was born in 1815.\nQuestion: more"


class TestChatLMLMStandard(ChatModelUnitTests):
    """The standard suite. Construction must not load anything, so a path that does not exist is fine."""

    @property
    def chat_model_class(self) -> type[ChatLMLM]:
        return ChatLMLM

    @property
    def chat_model_params(self) -> dict:
        return {"model": "runs/never-loaded/lmlm", "kb": "runs/never-loaded/kb.sqlite", "temperature": 0}

    @property
    def has_tool_calling(self) -> bool:
        return True  # bind_tools binds the typed kb tools (lookups are the model's one tool)

    @property
    def has_structured_output(self) -> bool:
        return False  # an LMLM writes text with lookups, never a JSON object on request


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def scripted_chat(tok, store, script: str = SCRIPT, **kwargs) -> ChatLMLM:
    prompt = render_prompt([HumanMessage(QUESTION)])
    # The model writes the calls as queries; the values come from the store.
    agent = LMLMAgent(ScriptedLM(tok, {prompt: strip_values(script)}), tok, store)
    return ChatLMLM(model="scripted", agent=agent, **kwargs)


@pytest.fixture
def store():
    from tools import open_store

    s = open_store(None, index=False)
    s.write("Ada Lovelace", "birth year", "1815", source="doc:ada@12")
    return s


def test_prompt_is_the_pretraining_qa_form() -> None:
    prompt = render_prompt([SystemMessage("Be brief."), HumanMessage("Q1?"), AIMessage("A1."), HumanMessage("Q2\nlong?")])
    assert prompt == "Be brief.\nQuestion: Q1?\nAnswer: A1.\nQuestion: Q2 long?\nAnswer:"
    assert render_prompt([HumanMessage(QUESTION)]) == qa_prompt(QUESTION)  # what LMLMAgent.ask sends


def test_invoke_returns_text_and_citations(tok, store) -> None:
    msg = scripted_chat(tok, store).invoke(QUESTION)
    assert msg.content == "Ada Lovelace was born in 1815."  # calls stripped, cut before the next turn
    assert msg.response_metadata["finish_reason"] == "stop"
    (cite,) = msg.response_metadata["citations"]
    fact = next(store.iter_facts())
    assert cite == {
        "entity": "Ada Lovelace", "relation": "birth year", "value": "1815", "fact_id": fact.id,
        "score": 1.0, "source": "doc:ada@12", "namespace": "default",
    }
    assert msg.response_metadata["lookups"] == [
        {"entity": "Ada Lovelace", "relation": "birth year", "value": "1815", "match": "exact", "fact_id": fact.id}]
    assert msg.usage_metadata["input_tokens"] > 0 and msg.usage_metadata["output_tokens"] > 0


def test_stream_concatenates_to_invoke(tok, store) -> None:
    chat = scripted_chat(tok, store)
    chunks = list(chat.stream(QUESTION))
    assert len(chunks) > 2
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert merged.content == chat.invoke(QUESTION).content
    assert [c["value"] for c in merged.response_metadata["citations"]] == ["1815"]
    assert "Question" not in merged.content  # the held-back stop string never leaks


def test_delete_changes_the_cited_value(tok, store) -> None:
    chat = scripted_chat(tok, store)
    store.delete(entity="Ada Lovelace")
    meta = chat.invoke(QUESTION).response_metadata
    assert meta["citations"] == []  # a miss cites nothing; the trace still shows the lookup
    assert [(x["value"], x["match"]) for x in meta["lookups"]] == [("unknown", "miss")]


def test_db_off_and_no_store(tok, store) -> None:
    off = scripted_chat(tok, store, db_off=True).invoke(QUESTION)
    assert off.response_metadata["citations"] == []
    assert [x["match"] for x in off.response_metadata["lookups"]] == ["off"]
    assert scripted_chat(tok, None).invoke(QUESTION).response_metadata["citations"] == []


def test_bound_kb_read_tool_routes_lookups(tok) -> None:
    from tools import open_store
    from tools.typed_tools import as_langchain_tools

    other = open_store(None, index=False, namespace="team")
    other.write("Ada Lovelace", "birth year", "1816", source="team-notes")
    chat = scripted_chat(tok, None).bind_tools(as_langchain_tools(other))
    (cite,) = chat.invoke(QUESTION).response_metadata["citations"]
    assert (cite["value"], cite["source"], cite["namespace"]) == ("1816", "team-notes", "team")


def test_tool_choice(tok, store) -> None:
    from tools.typed_tools import as_langchain_tools

    tools = as_langchain_tools(store)
    none = scripted_chat(tok, store).bind_tools(tools, tool_choice="none").invoke(QUESTION)
    assert none.response_metadata["citations"] == []  # the call token is forbidden, so no lookup
    forced = scripted_chat(tok, store).bind_tools(tools, tool_choice="any").invoke(QUESTION)
    assert [c["value"] for c in forced.response_metadata["citations"]] == ["1815"]  # the answer opens with a lookup
    with pytest.raises(ValueError, match="can only call 'kb_read'"):
        scripted_chat(tok, store).bind_tools(tools, tool_choice="kb_write").invoke(QUESTION)


def test_structured_output_is_refused_clearly() -> None:
    with pytest.raises(NotImplementedError, match="structured output"):
        ChatLMLM(model="x").with_structured_output({"type": "object"})
