"""``ChatLMLM``: an LMLM checkpoint plus its knowledge base as a LangChain chat model.

    from lmlm_agent.chat_model import ChatLMLM
    llm = ChatLMLM(model="runs/demo-x/lmlm", kb="runs/demo-x/kb.sqlite")
    msg = llm.invoke("When was Ada Lovelace born?")
    msg.content                            # 'Ada Lovelace was born in 1815.'
    msg.response_metadata["citations"]     # [{'entity': 'Ada Lovelace', 'relation': 'birth year',
                                           #   'value': '1815', 'fact_id': 7, 'source': 'doc:3@12', ...}]

A thin adapter over :class:`lmlm_agent.agent.LMLMAgent`: the prompt is the agent's
:func:`~lmlm_agent.agent.chat_prompt`, decoding (stop strings included) is the
agent's decoder, streams follow it with :class:`~lmlm_agent.agent.RowFollower`.

The model writes its lookups itself. Every fact an answer used is a citation
(first use first, each once, as :func:`lmlm_agent.agent.citations`), so each
looked-up span can be traced to a row and its provenance; ``lookups`` in the same
metadata is the full trace, misses included.

What it does, exactly (the flags langchain-tests reads say the same):

- ``invoke``/``stream``/``batch`` and their async forms. ``batch``/``abatch``
  decode all inputs in **one** decoder call (callbacks and tracing still run per
  input). Loading is lazy, once per process per (checkpoint, store) even when
  threads ask at the same time (:meth:`LMLMAgent.shared`).
- Usage metadata (prompt tokens; written + injected tokens), stop strings.
- **No tool calling** in LangChain's sense: an LMLM never returns ``tool_calls``
  (its one tool, the knowledge-base read, it executes itself, inside its text).
  ``bind_tools`` is still useful: a bound typed ``kb_read``
  (:func:`tools.typed_tools.as_langchain_tools`) becomes the route of the
  model's lookups (with its validation and namespace) instead of ``kb``;
  ``tool_choice`` ``"any"``/``"required"``/``"kb_read"`` makes the answer start with
  a lookup, ``"none"`` forbids lookups, another tool's name is refused. Other bound
  tools (``kb_write``, ...) are for the surrounding agent: the model never calls them.
- No structured output, JSON mode, images, audio or PDFs; no model override per call.

Chat turns are rendered in the question/answer form the LMLM saw in pretraining
(``Question: ...\nAnswer: ...``); an answer is one line, as with ``LMLMAgent.ask``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

from lmlm_agent.agent import CHAT_STOP, LMLMAgent, RowFollower, chat_prompt, citations
from lmlm_agent.decoding import GenerationOutput
from tools.schema import Lookup, LookupResult
from tools.typed_tools import ToolError

READ_TOOL = "kb_read"
_FORCE_LOOKUP = {"any", "required", READ_TOOL}
# Call keyword arguments a ChatLMLM understands; any other is refused, never ignored.
_CALL_KWARGS = {"temperature", "top_p", "max_tokens", "seed", "namespace", "tool_choice", "tools", "read_tool"}
# Answers decoded together by `batch`, waiting for the per-input `invoke` that LangChain runs (prompt -> messages).
_BATCHED: ContextVar[dict[str, list[AIMessage]] | None] = ContextVar("lmlm_batched_answers", default=None)
_BATCHED_LOCK = threading.Lock()


def render_prompt(messages: Sequence[BaseMessage]) -> str:
    """LangChain messages as the agent's :func:`~lmlm_agent.agent.chat_prompt` (the pretraining QA form)."""
    turns = []
    for m in messages:
        if isinstance(m, HumanMessage):
            role = "user"
        elif isinstance(m, AIMessage):
            role = "assistant"
        elif isinstance(m, ToolMessage):
            role = "tool"
        elif isinstance(m, SystemMessage):
            role = "system"
        else:
            role = {"human": "user", "ai": "assistant"}.get(m.type, "system")
        turns.append((role, m.text))
    return chat_prompt(turns)


class _ToolLookup:
    """The decoder's lookups through a typed ``kb_read`` tool: its artifact is the LookupResult, or a ToolError (a miss)."""

    def __init__(self, tool: BaseTool):
        self.tool = tool
        self.namespace: str | None = None  # the namespace the tool read in, from its first answer

    def read(self, entity: str, relation: str) -> LookupResult:
        call = {"name": self.tool.name, "args": {"entity": entity, "relation": relation}, "id": "lookup", "type": "tool_call"}
        out = self.tool.invoke(call)
        artifact = getattr(out, "artifact", None)
        if isinstance(artifact, LookupResult):
            self.namespace = self.namespace or artifact.namespace
            return artifact
        error = artifact.message if isinstance(artifact, ToolError) else str(getattr(out, "content", out))
        return LookupResult.miss(entity, relation, error=error)


class ChatLMLM(BaseChatModel):
    """A Large Memory Language Model (an LM that looks its facts up) as a LangChain chat model.

    Loading is lazy: the checkpoint and the knowledge base open on the first call
    (once per process, shared by every ChatLMLM of the same checkpoint and store),
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
        params["ls_model_name"] = kwargs.get("model", self.model)  # what the call asked for (a `model` argument is then refused)
        if self.temperature is not None:
            params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        if self.max_tokens is not None:
            params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # ------------------------------------------------------------------ loading
    def _runtime(self) -> LMLMAgent:
        """``agent`` if given, else the process-wide agent of ``model`` and ``kb`` (loaded once, under a lock)."""
        if self.agent is not None:
            return self.agent
        options = {"namespace": self.namespace, **({} if self.semantic else {"index": False})}
        return LMLMAgent.shared(self.model, self.kb, self.device, store_options=options if self.kb else None)

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
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt = render_prompt(messages)
        ready = _take_batched(prompt)
        if ready is None:
            (ready,) = self._decode_all([prompt], stop, kwargs)
        return ChatResult(generations=[ChatGeneration(message=ready)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        prompt = render_prompt(messages)
        runtime = self._runtime()
        decoder, namespace_of = self._decoder([prompt], stop, kwargs)
        for deltas in RowFollower(decoder, chat=True):
            for delta in deltas:
                cites = citations(delta.lookups, namespace_of())
                if delta.output is not None:
                    message = AIMessageChunk(
                        content=delta.text,
                        response_metadata=self._metadata(cites, delta.output),
                        usage_metadata=_usage(runtime.tokenizer, prompt, delta.output),
                        chunk_position="last",
                    )
                elif delta.text or cites:
                    message = AIMessageChunk(content=delta.text, response_metadata={"citations": cites} if cites else {})
                else:
                    continue
                chunk = ChatGenerationChunk(message=message)
                if run_manager and chunk.text:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """All inputs in one decoder call; LangChain then runs each input's ``invoke`` (callbacks, tracing), which takes its answer."""
        with _answers_ready(self._decode_batch(inputs, kwargs) if len(inputs) > 1 else {}):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        answers = await asyncio.to_thread(self._decode_batch, inputs, kwargs) if len(inputs) > 1 else {}
        with _answers_ready(answers):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _decode_batch(self, inputs: list[LanguageModelInput], kwargs: dict[str, Any]) -> dict[str, list[AIMessage]]:
        prompts = [render_prompt(self._convert_input(i).to_messages()) for i in inputs]
        answers: dict[str, list[AIMessage]] = {}
        for prompt, message in zip(prompts, self._decode_all(prompts, kwargs.get("stop"), kwargs)):
            answers.setdefault(prompt, []).append(message)
        return answers

    def _decode_all(self, prompts: list[str], stop: list[str] | None, kwargs: dict[str, Any]) -> list[AIMessage]:
        """The answers to ``prompts``, from one decoder call."""
        runtime = self._runtime()
        decoder, namespace_of = self._decoder(prompts, stop, kwargs)
        outputs = decoder.run()
        return [
            AIMessage(
                content=out.text.strip(),
                response_metadata=self._metadata(citations(out.lookups, namespace_of()), out),
                usage_metadata=_usage(runtime.tokenizer, prompt, out),
            )
            for prompt, out in zip(prompts, outputs)
        ]

    def _decoder(self, prompts: list[str], stop: list[str] | None, kwargs: dict[str, Any]):
        """The agent's decoder for ``prompts`` with this call's settings, and how to name the namespace it read."""
        unknown = set(kwargs) - _CALL_KWARGS - {"stop"}
        if unknown:
            raise ValueError(f"ChatLMLM does not support {sorted(unknown)}; it takes {sorted(_CALL_KWARGS)}")
        runtime = self._runtime()
        temperature = kwargs.get("temperature", self.temperature)
        top_p = kwargs.get("top_p", self.top_p)
        tool_choice = _choice_name(kwargs.get("tool_choice"))
        if tool_choice not in (None, "auto", "none") and tool_choice not in _FORCE_LOOKUP:
            raise ValueError(f"tool_choice {tool_choice!r}: an LMLM can only call {READ_TOOL!r}")
        namespace = kwargs.get("namespace", self.namespace)
        lookup: Lookup | None
        if kwargs.get("read_tool") is not None:
            lookup = _ToolLookup(kwargs["read_tool"])
        else:
            lookup = runtime.lookup(namespace)
        stops = list(stop if stop is not None else self.stop or [])
        decoder = runtime.decoder(
            prompts,
            lookup=lookup,
            max_new_tokens=int(kwargs.get("max_tokens", self.max_tokens) or 128),
            do_sample=bool(temperature),
            temperature=temperature or 1.0,
            top_p=top_p if top_p is not None else 1.0,
            seed=kwargs.get("seed", self.seed),
            max_lookups=0 if tool_choice == "none" else self.max_lookups,
            stop_strings=(CHAT_STOP, *stops),
            force_lookup_start=tool_choice in _FORCE_LOOKUP,
            db_off=self.db_off or runtime.config.db_off,
        )
        # A bound tool may read in a namespace of its own; it says which in its answers.
        return decoder, lambda: (lookup.namespace if isinstance(lookup, _ToolLookup) else None) or namespace

    def _metadata(self, cited: list[dict[str, Any]], out: GenerationOutput) -> dict[str, Any]:
        return {
            "model_name": self.model,
            "model_provider": "lmlm",
            "finish_reason": out.finish_reason,
            "citations": cited,
            "lookups": [
                {"entity": r.entity, "relation": r.relation, "value": r.value, "match": r.match, "fact_id": r.fact_id}
                for r in out.lookups
            ],
            "db_off": self.db_off,
        }


@contextmanager
def _answers_ready(answers: dict[str, list[AIMessage]]) -> Iterator[None]:
    """While inside, each input's ``invoke`` takes its answer from ``answers`` (what ``batch`` decoded)."""
    token = _BATCHED.set(answers)
    try:
        yield
    finally:
        _BATCHED.reset(token)


def _take_batched(prompt: str) -> AIMessage | None:
    """The answer ``batch`` already decoded for this prompt, if this call runs inside one."""
    waiting = _BATCHED.get()
    if waiting is None:
        return None
    with _BATCHED_LOCK:
        answers = waiting.get(prompt)
        return answers.pop(0) if answers else None


def _choice_name(choice: Any) -> str | None:
    """``tool_choice`` in any of LangChain's spellings, as a name (``"any"``, ``"none"``, a tool name)."""
    if choice is None or choice is False:
        return None
    if choice is True:
        return "any"
    if isinstance(choice, dict):
        return (choice.get("function") or {}).get("name") or choice.get("name") or choice.get("type")
    return str(choice)


def _usage(tokenizer: Any, prompt: str, out: GenerationOutput) -> UsageMetadata:
    prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False))
    completion = out.generated_tokens + out.injected_tokens
    return UsageMetadata(input_tokens=prompt_tokens, output_tokens=completion, total_tokens=prompt_tokens + completion)


__all__ = ["ChatLMLM", "render_prompt", "READ_TOOL"]
