"""``ChatLMLM``: an LMLM checkpoint plus its knowledge base as a LangChain chat model.

    from lmlm_agent.chat_model import ChatLMLM
    llm = ChatLMLM(model="runs/demo-x/lmlm", kb="runs/demo-x/kb.sqlite")
    msg = llm.invoke("When was Ada Lovelace born?")
    msg.content                            # 'Ada Lovelace was born in 1815.'
    msg.response_metadata["citations"]     # [{'entity': 'Ada Lovelace', 'relation': 'birth year',
                                           #   'value': '1815', 'fact_id': 7, 'source': 'doc:3@12', ...}]

The model writes its lookups itself. Every fact an answer used is a citation
(first use first, each once, as :func:`lmlm_agent.agent.citations`), so each
looked-up span can be traced to a row and its provenance; ``lookups`` in the same
metadata is the full trace, misses included.

Tools. An LMLM has exactly one tool it can call: the knowledge-base read. Binding
the typed tools of :func:`tools.typed_tools.as_langchain_tools` routes the model's
lookups through the bound ``kb_read`` (with its validation and namespace) instead of
the ``kb`` given here; ``tool_choice`` ``"any"``/``"required"``/``"kb_read"`` makes
the answer start with a lookup, ``"none"`` forbids lookups. Other bound tools are
listed for the surrounding agent but never called by the model.

Chat turns are rendered in the question/answer form the LMLM saw in pretraining
(``Question: ...\\nAnswer: ...``); an answer is one line, as with ``LMLMAgent.ask``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from lmlm_agent.agent import LMLMAgent, citations
from lmlm_agent.format import qa_prompt

READ_TOOL = "kb_read"
# An answer is one line, as in `LMLMAgent.ask` and the QA drills the LMLM was pretrained on.
TURN_STOP = "\n"
_FORCE_LOOKUP = {"any", "required", READ_TOOL}


def render_prompt(messages: Sequence[BaseMessage]) -> str:
    """The transcript in the pretraining QA form (``qa_prompt``), ending in ``Answer:`` for the model to continue.

    System text leads as a plain line; each human turn is a question and each AI
    turn its answer. Tool messages carry no text for an LMLM (its lookups are
    inside its own answers), so they are left out.
    """
    lines: list[str] = []
    for m in messages:
        text = " ".join(m.text.split())  # one line per turn: a newline would end the answer early
        if isinstance(m, HumanMessage):
            lines.append(qa_prompt(text))
        elif isinstance(m, AIMessage) and lines and lines[-1].endswith("Answer:"):
            lines[-1] += " " + text
        elif not isinstance(m, ToolMessage):
            lines.append(text)
    if not messages or not isinstance(messages[-1], HumanMessage):
        lines.append(qa_prompt(""))
    return "\n".join(lines)


class _Miss:
    """What a failed tool read gives the decoder: the published runtime's ``unknown``."""

    def __init__(self, entity: str, relation: str, error: str):
        self.entity, self.relation, self.error = entity, relation, error
        self.value, self.fact_id, self.score, self.source, self.match = "unknown", None, None, None, "error"


class _RecordingLookup:
    """The lookup the decoder calls: reads through the store or the bound ``kb_read`` tool and keeps every hit.

    Citations follow :func:`lmlm_agent.agent.citations` (the facts used, first use
    first, each once), so ``ask``, LangChain and the server cite alike.
    """

    def __init__(self, read: Callable[[str, str], Any], namespace: str | None):
        self._read, self.namespace = read, namespace
        self.hits: list[Any] = []
        self.reported = 0

    def read(self, entity: str, relation: str) -> Any:
        hit = self._read(entity, relation)
        self.hits.append(hit)
        return hit

    def new_citations(self) -> list[dict[str, Any]]:
        """The citations not yet reported (what the next stream chunk carries)."""
        cited = citations(self.hits)
        new, self.reported = cited[self.reported :], len(cited)
        # One answer reads through one route, so every hit shares its namespace (a bound tool may have its own).
        namespace = getattr(self.hits[0], "namespace", None) if self.hits else None
        return [{**c, "namespace": namespace or self.namespace} for c in new]


def _tool_read(tool: BaseTool) -> Callable[[str, str], Any]:
    """Read through a typed ``kb_read`` tool; its artifact is the LookupResult, or a ToolError we turn into a miss."""

    def read(entity: str, relation: str) -> Any:
        call = {"name": tool.name, "args": {"entity": entity, "relation": relation}, "id": "lookup", "type": "tool_call"}
        out = tool.invoke(call)
        artifact = getattr(out, "artifact", None)
        if artifact is not None and hasattr(artifact, "value") and hasattr(artifact, "match"):
            return artifact
        return _Miss(entity, relation, getattr(artifact, "message", None) or str(getattr(out, "content", out)))

    return read


class ChatLMLM(BaseChatModel):
    """A Large Memory Language Model (an LM that looks its facts up) as a LangChain chat model.

    Loading is lazy: the checkpoint and the knowledge base open on the first call,
    so constructing (and binding, configuring, serialising the settings of) the
    model is cheap. Pass ``agent`` to share an already loaded model and store.
    """

    model: str = Field(description="checkpoint directory of the LMLM (an `lmlm/` folder of a run)")
    kb: str | None = Field(default=None, description="knowledge base: SQLite file or database URL; None: no store")
    namespace: str = Field(default="default", description="knowledge-base namespace the lookups read")
    semantic: bool = Field(default=True, description="semantic (embedding) fallback after exact lookups")
    temperature: float | None = Field(default=None, description="0 or None: greedy; above 0: sampling")
    top_p: float | None = None
    max_tokens: int | None = Field(default=128, description="tokens the model writes per answer (injected values excluded)")
    stop: list[str] | None = Field(default=None, description="stop strings, besides the end of the answer's line")
    max_lookups: int = Field(default=10, description="lookups per answer")
    db_off: bool = Field(default=False, description="every lookup returns 'unknown' (the database-off ablation)")
    seed: int | None = None
    device: str | None = Field(default=None, description="torch device (default: the checkpoint loads on CPU)")
    agent: LMLMAgent | None = Field(default=None, exclude=True, description="a loaded agent to use instead of `model`/`kb`")

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    _loaded: Any = PrivateAttr(default=None)

    # ------------------------------------------------------------------ LangChain identity
    @property
    def _llm_type(self) -> str:
        return "lmlm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "kb": self.kb, "namespace": self.namespace, "db_off": self.db_off}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "lmlm"
        params["ls_model_name"] = kwargs.get("model", self.model)
        if self.temperature is not None:
            params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        if self.max_tokens is not None:
            params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # ------------------------------------------------------------------ loading
    def _runtime(self) -> LMLMAgent:
        """``agent`` if given, else the checkpoint and store loaded once from ``model`` and ``kb``."""
        if self.agent is not None:
            return self.agent
        if self._loaded is None:
            store = None
            if self.kb:
                from tools import open_store

                store = open_store(self.kb, namespace=self.namespace, **({} if self.semantic else {"index": False}))
            self._loaded = LMLMAgent.from_pretrained(self.model, store=store, device=self.device)
        return self._loaded

    # ------------------------------------------------------------------ tools
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; the model's lookups go through a bound ``kb_read`` (see the module notes).

        Every tool is checked to convert to the OpenAI tool schema (so a broken one
        fails here, not mid-answer); the schemas travel as ``tools`` and the
        callable ``kb_read``, if bound, as the lookup route.
        """
        schemas = [convert_to_openai_tool(t) for t in tools]
        reader = next((t for t in tools if isinstance(t, BaseTool) and t.name == READ_TOOL), None)
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=schemas, read_tool=reader, **kwargs)

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        """Not available: an LMLM writes free text with lookups; it has no way to emit a JSON object on request."""
        raise NotImplementedError(
            "ChatLMLM cannot produce structured output: an LMLM writes text (with lookups), not JSON or tool arguments"
        )

    # ------------------------------------------------------------------ generation
    def complete(self, prompt: str, stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        """Continue ``prompt`` as plain text: no chat rendering, no turn stop, spacing kept (``/v1/completions``)."""
        return _merge(self._pieces(prompt, self._stops(stop, chat=False), kwargs, chat=False))

    def stream_complete(self, prompt: str, stop: list[str] | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        for chunk in self._pieces(prompt, self._stops(stop, chat=False), kwargs, chat=False):
            yield chunk.message

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # One decoding path for both: a non-streamed answer is its stream, merged.
        message = _merge(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._pieces(render_prompt(messages), self._stops(stop, chat=True), kwargs, chat=True):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _stops(self, stop: list[str] | None, chat: bool) -> list[str]:
        """A call's stop strings replace the configured ones; a chat answer also ends at the next turn."""
        chosen = list(stop if stop is not None else self.stop or [])
        return [TURN_STOP, *chosen] if chat else chosen

    def _decoding(self, stops: list[str], kwargs: dict[str, Any]) -> tuple[Any, _RecordingLookup | None]:
        """The agent's decoding settings with this call's overrides, and the lookup route (None: nothing to look in)."""
        runtime = self._runtime()
        temperature = kwargs.get("temperature", self.temperature)
        top_p = kwargs.get("top_p", self.top_p)
        tool_choice = _choice_name(kwargs.get("tool_choice"))
        if tool_choice not in (None, "auto", "none") and tool_choice not in _FORCE_LOOKUP:
            raise ValueError(f"tool_choice {tool_choice!r}: an LMLM can only call {READ_TOOL!r}")
        namespace = kwargs.get("namespace", self.namespace)
        if kwargs.get("read_tool") is not None:
            route = _tool_read(kwargs["read_tool"])
        elif runtime.store is not None:
            route = partial(runtime.store.read, namespace=namespace)
        else:
            route = None
        config = dataclasses.replace(
            runtime.config,
            max_new_tokens=int(kwargs.get("max_tokens", self.max_tokens) or 128),
            do_sample=bool(temperature),
            temperature=temperature or 1.0,
            top_p=top_p if top_p is not None else 1.0,
            seed=kwargs.get("seed", self.seed),
            max_lookups=0 if tool_choice == "none" else self.max_lookups,
            stop_strings=tuple(stops),
            force_lookup_start=tool_choice in _FORCE_LOOKUP,
            db_off=self.db_off or runtime.config.db_off,
        )
        return config, _RecordingLookup(route, namespace) if route is not None else None

    def _pieces(self, prompt: str, stops: list[str], kwargs: dict[str, Any], chat: bool) -> Iterator[ChatGenerationChunk]:
        """Decode ``prompt``; each chunk carries new text and the citations of lookups made since the last one."""
        from lmlm_agent.decoding import stream_generate

        runtime = self._runtime()
        config, lookup = self._decoding(stops, kwargs)
        stream = stream_generate(runtime.model, runtime.tokenizer, prompt, lookup, config)
        held = _StopHold(config.stop_strings, strip=chat)
        while True:
            try:
                piece = next(stream)
            except StopIteration as done:
                out = done.value
                break
            text = held.feed(piece)
            cites = lookup.new_citations() if lookup else []
            if text or cites:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata={"citations": cites} if cites else {}))
        tail, reason = held.finish(out.finish_reason)
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=tail,
                response_metadata=self._metadata(lookup.new_citations() if lookup else [], reason, out),
                usage_metadata=_usage(runtime.tokenizer, prompt, out),
                chunk_position="last",
            )
        )

    def _metadata(self, cited: list[dict[str, Any]], finish_reason: str, out: Any) -> dict[str, Any]:
        return {
            "model_name": self.model,
            "model_provider": "lmlm",
            "finish_reason": finish_reason,
            "citations": cited,
            "lookups": [
                {"entity": r.entity, "relation": r.relation, "value": r.value, "match": r.match, "fact_id": r.fact_id}
                for r in out.lookups
            ],
            "db_off": self.db_off,
        }


def _merge(chunks: Iterator[ChatGenerationChunk]) -> AIMessage:
    """The whole answer of a stream: text joined, citations in order, metadata and usage of the last chunk."""
    merged: AIMessageChunk | None = None
    for chunk in chunks:
        merged = chunk.message if merged is None else merged + chunk.message
    assert merged is not None  # _pieces always ends with a final chunk
    return AIMessage(
        content=merged.content,
        response_metadata=merged.response_metadata,
        usage_metadata=merged.usage_metadata,
        id=merged.id,
    )


def _choice_name(choice: Any) -> str | None:
    """``tool_choice`` in any of LangChain's spellings, as a name (``"any"``, ``"none"``, a tool name)."""
    if choice is None or choice is False:
        return None
    if choice is True:
        return "any"
    if isinstance(choice, dict):
        return (choice.get("function") or {}).get("name") or choice.get("name") or choice.get("type")
    return str(choice)


class _StopHold:
    """Streams text while holding back any tail that could still grow into a stop string."""

    def __init__(self, stops: Sequence[str], strip: bool = True):
        self.stops = [s for s in stops if s]
        self.strip = strip  # a chat answer drops the layout spaces around it; a completion keeps them
        self.text = ""  # everything received
        self.sent = 0  # characters already released
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._release(cut)
        # Keep back the longest suffix that is a prefix of some stop string.
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._release(len(self.text) - hold)

    def _release(self, upto: int) -> str:
        # The answer starts after "Answer:"; leading spaces of the first piece are layout, not content.
        out = self.text[self.sent : upto]
        if self.sent == 0 and self.strip:
            out = out.lstrip()
            if not out:
                return ""
        self.sent = upto
        return out

    def finish(self, reason: str) -> tuple[str, str]:
        if self.stopped:
            return "", "stop"
        tail = self._release(len(self.text))
        return (tail.rstrip() if self.strip else tail), reason


def _usage(tokenizer: Any, prompt: str, out: Any) -> UsageMetadata:
    prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False))
    completion = out.generated_tokens + out.injected_tokens
    return UsageMetadata(input_tokens=prompt_tokens, output_tokens=completion, total_tokens=prompt_tokens + completion)


__all__ = ["ChatLMLM", "render_prompt", "READ_TOOL"]
