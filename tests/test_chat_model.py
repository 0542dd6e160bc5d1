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
        return False  # it never returns tool_calls: its one tool (the kb read) it executes inside its text

    @property
    def has_structured_output(self) -> bool:
        return False  # an LMLM writes text with lookups, never a JSON object on request

    @property
    def supports_model_override(self) -> bool:
        return False  # one checkpoint per ChatLMLM; a `model` call argument is refused


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


def test_a_callers_stop_string_ends_invoke_and_stream_alike(tok, store) -> None:
    """The decoder enforces stop strings (the chat model passes them on, it does not cut again)."""
    chat = scripted_chat(tok, store)
    msg = chat.invoke(QUESTION, stop=[" born"])
    assert msg.content == "Ada Lovelace was" and msg.response_metadata["finish_reason"] == "stop"
    assert "".join(c.content for c in chat.stream(QUESTION, stop=[" born"])) == msg.content
    assert scripted_chat(tok, store, stop=[" in 18"]).invoke(QUESTION).content == "Ada Lovelace was born"


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


def test_batch_is_one_decoder_call_with_callbacks_per_input(tok, store) -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    class Ends(BaseCallbackHandler):
        def __init__(self):
            self.ends = 0

        def on_llm_end(self, *args, **kwargs):
            self.ends += 1

    questions = [QUESTION, "Who?", QUESTION]
    prompts = {render_prompt([HumanMessage(q)]): strip_values(SCRIPT) for q in questions}
    model = ScriptedLM(tok, prompts)
    chat = ChatLMLM(model="scripted", agent=LMLMAgent(model, tok, store))
    singles = [chat.invoke(q).content for q in questions]
    model.batch_sizes.clear()
    handler = Ends()
    batched = chat.batch(questions, config={"callbacks": [handler]})
    assert [m.content for m in batched] == singles == ["Ada Lovelace was born in 1815."] * 3
    assert model.batch_sizes[0] == 3 and max(model.batch_sizes) == 3  # the prefill held all three prompts
    assert handler.ends == 3  # LangChain's per-input callbacks still ran


def test_abatch_is_one_decoder_call(tok, store) -> None:
    import asyncio

    model = ScriptedLM(tok, {render_prompt([HumanMessage(QUESTION)]): strip_values(SCRIPT)})
    chat = ChatLMLM(model="scripted", agent=LMLMAgent(model, tok, store))
    out = asyncio.run(chat.abatch([QUESTION, QUESTION]))
    assert [m.content for m in out] == ["Ada Lovelace was born in 1815."] * 2 and model.batch_sizes[0] == 2


def test_unknown_call_arguments_are_refused(tok, store) -> None:
    with pytest.raises(ValueError, match="does not support"):
        scripted_chat(tok, store).invoke(QUESTION, model="another-checkpoint")


def test_lazy_loading_is_once_per_process_under_threads(tmp_path, tok, monkeypatch) -> None:
    """Threads that invoke at once share one load (the unlocked load used to untie lm_head from the embeddings)."""
    import threading
    import time

    import lmlm_agent.agent as agent_module
    from lmlm_agent.model import build_model, save_checkpoint

    save_checkpoint(tmp_path / "ckpt", build_model("micro", tok), tok, kind="lmlm", preset="micro")
    loads = []
    real = agent_module.load_checkpoint

    def slow_load(*args, **kwargs):
        loads.append(threading.get_ident())
        time.sleep(0.2)  # wide open for a race
        return real(*args, **kwargs)

    monkeypatch.setattr(agent_module, "load_checkpoint", slow_load)
    chats = [ChatLMLM(model=str(tmp_path / "ckpt"), max_tokens=3) for _ in range(4)]
    answers = []
    threads = [threading.Thread(target=lambda c=c: answers.append(c.invoke(QUESTION))) for c in chats]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answers += chats[0].batch([QUESTION] * 2)  # LangChain's thread pool, first call of a fresh model in other tests
    assert len(answers) == 6 and len(loads) == 1
    runtime = chats[1]._runtime()
    assert runtime is chats[3]._runtime()
    from tools import open_store

    open_store(tmp_path / "kb.sqlite", index=False).close()  # a reader never creates its knowledge base
    other = ChatLMLM(model=str(tmp_path / "ckpt"), kb=str(tmp_path / "kb.sqlite"), semantic=False)._runtime()
    assert other.model is runtime.model and other.store is not None and len(loads) == 1  # another store, same model
    assert runtime.model.lm_head.weight.data_ptr() == runtime.model.model.embed_tokens.weight.data_ptr()  # still tied
