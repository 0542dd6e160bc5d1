"""An OpenAI-compatible HTTP server over a trained run: completions with citations, and the knowledge base.

    lmlm serve --run runs/demo-x          # http://127.0.0.1:8000/v1

    GET    /v1/models                                 the served model
    POST   /v1/chat/completions                       chat; "stream": true for server-sent events
    POST   /v1/completions                            plain-text continuation (no chat formatting)
    GET    /v1/knowledge/{namespace}/lookup?entity=&relation=
    GET    /v1/knowledge/{namespace}/facts?limit=&offset=
    POST   /v1/knowledge/{namespace}/facts            {"entity", "relation", "value", "source"}   (token)
    DELETE /v1/knowledge/{namespace}/facts?fact_id=   or ?entity=[&relation=]                       (token)

Every answer carries ``citations``: one per lookup the model made (entity,
relation, value, fact_id, score, match, source, namespace). In a stream each
chunk carries the citations made since the previous chunk.

Writes and deletes need ``Authorization: Bearer <token>`` (``LMLM_API_TOKEN`` or
the config file); with no token configured they are refused. Reads (generation
included) are public unless ``public_read`` is off, then they need the token too.
Bad requests get a 4xx with an OpenAI-style error body, never a 5xx.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

TOKEN_ENV = "LMLM_API_TOKEN"
# Decoder finish reasons in OpenAI's words: a full context window is a length stop too.
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


@dataclass
class ServerConfig:
    """Limits and access rules; read from ``<run>/server.yaml`` when present, then the environment."""

    model_id: str = field(default="lmlm", metadata={"help": "Model id clients send and /v1/models lists."})
    token: str | None = field(default=None, metadata={"help": f"Bearer token for writes/deletes (env {TOKEN_ENV})."})
    public_read: bool = field(default=True, metadata={"help": "Reads and generation need no token."})
    max_request_bytes: int = field(default=64_000, metadata={"help": "Largest request body accepted (413 above)."})
    max_tokens: int = field(default=512, metadata={"help": "Largest max_tokens a request may ask for."})
    default_max_tokens: int = field(default=128, metadata={"help": "max_tokens when a chat request gives none."})
    max_messages: int = field(default=64, metadata={"help": "Most messages in one chat request."})
    semantic: bool = field(
        default=False,
        metadata={"help": "Semantic (embedding) lookups after exact ones; the demo's kb.sqlite needs `lmlm kb rebuild-index` first."},
    )

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> ServerConfig:
        """Defaults < the YAML file (if it exists) < the environment's token < explicit overrides (None: unset)."""
        values: dict[str, Any] = {}
        if path is not None and Path(path).exists():
            import yaml

            data = yaml.safe_load(Path(path).read_text()) or {}
            known = {f.name for f in fields(cls)}
            unknown = set(data) - known
            if unknown:
                raise ValueError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
            values.update(data)
        if os.environ.get(TOKEN_ENV):
            values["token"] = os.environ[TOKEN_ENV]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# --------------------------------------------------------------------------- request bodies


class _Request(BaseModel):
    # Unknown OpenAI parameters (frequency_penalty, user, ...) are accepted and have no effect.
    model_config = ConfigDict(extra="ignore")


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class _Sampling(_Request):
    model: str
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1, description="one answer per request")
    namespace: str | None = Field(default=None, description="knowledge-base namespace the lookups read (extra_body)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops


class ChatRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream_options: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    stream_options: dict[str, Any] | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("one prompt per request")
            return v[0]
        return v


class FactIn(_Request):
    entity: str
    relation: str
    value: str
    source: str | None = None


# --------------------------------------------------------------------------- errors and limits


class APIError(Exception):
    """A 4xx with an OpenAI-style body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413, whether announced by Content-Length or streamed."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _send_error(send, APIError(413, f"request body over {self.limit} bytes", "request_too_large"))
        seen = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _send_error(send, APIError(413, f"request body over {self.limit} bytes", "request_too_large"))


async def _send_error(send: Any, err: APIError) -> None:
    payload = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    text = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('body', 'query', 'path')) or 'body'}: {e.get('msg', 'invalid')}"
        for e in errors[:5]
    )
    return text or "invalid request", param


# --------------------------------------------------------------------------- the app


def create_app(agent: Any, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving an :class:`~lmlm_agent.agent.LMLMAgent` (its model, tokenizer and store)."""
    from lmlm_agent.chat_model import ChatLMLM
    from tools import typed_tools

    config = config or ServerConfig()
    chat = ChatLMLM(model=config.model_id, agent=agent, max_tokens=config.default_max_tokens)
    store = agent.store
    context = getattr(agent.model.config, "max_position_embeddings", None) or 1 << 30
    # One model, one decoder at a time: torch on CPU gains nothing from parallel generations.
    lock = threading.Lock()
    created = int(time.time())

    app = FastAPI(title="lmlm", description=__doc__.split("\n\n")[0], version="1")
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(list(exc.errors()))
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code).body(), status_code=exc.status_code)

    # ------------------------------------------------------------------ access
    def _bearer(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def _check(request: Request, action: str) -> None:
        if config.token is None:
            raise APIError(403, f"{action} is disabled: the server has no token configured ({TOKEN_ENV})", "forbidden")
        given = _bearer(request)
        if given is None:
            raise APIError(401, f"{action} needs 'Authorization: Bearer <token>'", "unauthorized")
        if not secrets.compare_digest(given.encode(), config.token.encode()):
            raise APIError(401, "invalid token", "unauthorized")

    def reader(request: Request) -> None:
        if not config.public_read:
            _check(request, "reading")

    def writer(request: Request) -> None:
        _check(request, "writing")

    # ------------------------------------------------------------------ models
    def _model_card() -> dict[str, Any]:
        return {"id": config.model_id, "object": "model", "created": created, "owned_by": "lmlm-agent"}

    @app.get("/v1/models", dependencies=[Depends(reader)])
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(reader)])
    def get_model(model_id: str) -> dict[str, Any]:
        _known_model(model_id)
        return _model_card()

    def _known_model(model_id: str) -> None:
        if model_id != config.model_id:
            raise APIError(404, f"model {model_id!r} is not served here; use {config.model_id!r}", "model_not_found", "model")

    # ------------------------------------------------------------------ generation
    def _call_kwargs(req: _Sampling, max_tokens: int | None, prompt: str) -> dict[str, Any]:
        """Checked sampling settings for the chat model; token limits are enforced here."""
        _known_model(req.model)
        limit = max_tokens or min(config.default_max_tokens, config.max_tokens)
        if limit > config.max_tokens:
            raise APIError(400, f"max_tokens is {limit}; this server allows at most {config.max_tokens}", param="max_tokens")
        prompt_tokens = len(agent.tokenizer.encode(prompt, add_special_tokens=False))
        if prompt_tokens + limit > context:
            raise APIError(
                400,
                f"the prompt is {prompt_tokens} tokens and max_tokens {limit}: over the model's context of {context}",
                "context_length_exceeded",
                "messages" if isinstance(req, ChatRequest) else "prompt",
            )
        kwargs: dict[str, Any] = {"max_tokens": limit, "temperature": req.temperature, "top_p": req.top_p, "seed": req.seed}
        if req.namespace is not None:
            from tools.schema import InvalidInput, clean_namespace

            try:
                kwargs["namespace"] = clean_namespace(req.namespace)
            except InvalidInput as exc:
                raise APIError(400, str(exc), param="namespace") from None
        return {k: v for k, v in kwargs.items() if v is not None}

    def _usage(meta: Any) -> dict[str, int]:
        meta = meta or {}
        pt, ct = meta.get("input_tokens", 0), meta.get("output_tokens", 0)
        return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}

    @app.post("/v1/chat/completions", dependencies=[Depends(reader)])
    def chat_completions(req: ChatRequest) -> Any:
        from lmlm_agent.chat_model import render_prompt

        if len(req.messages) > config.max_messages:
            raise APIError(400, f"{len(req.messages)} messages; at most {config.max_messages}", param="messages")
        messages = [_to_langchain(m) for m in req.messages]
        kwargs = _call_kwargs(req, req.max_completion_tokens or req.max_tokens, render_prompt(messages))
        ident, stamp = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "created": stamp, "model": config.model_id}
        if not req.stream:
            with lock:
                msg = chat.invoke(messages, stop=req.stop, **kwargs)
            meta = msg.response_metadata
            return {
                **head,
                "object": "chat.completion",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": msg.content},
                    "finish_reason": FINISH.get(meta["finish_reason"], "stop"),
                    "logprobs": None,
                }],
                "usage": _usage(msg.usage_metadata),
                "citations": meta["citations"],
            }

        def events() -> Iterator[str]:
            with lock:
                yield _sse({**head, "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
                for chunk in chat.stream(messages, stop=req.stop, **kwargs):
                    meta = chunk.response_metadata
                    reason = meta.get("finish_reason")
                    yield _sse({
                        **head,
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"content": chunk.content} if chunk.content else {},
                                     "finish_reason": FINISH.get(reason, "stop") if reason else None}],
                        "citations": meta.get("citations", []),
                    })
                    if reason and (req.stream_options or {}).get("include_usage"):
                        yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(chunk.usage_metadata)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions", dependencies=[Depends(reader)])
    def completions(req: CompletionRequest) -> Any:
        kwargs = _call_kwargs(req, req.max_tokens, req.prompt)
        ident, stamp = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "object": "text_completion", "created": stamp, "model": config.model_id}
        if not req.stream:
            with lock:
                msg = chat.complete(req.prompt, stop=req.stop, **kwargs)
            meta = msg.response_metadata
            return {
                **head,
                "choices": [{"index": 0, "text": msg.content, "logprobs": None,
                             "finish_reason": FINISH.get(meta["finish_reason"], "stop")}],
                "usage": _usage(msg.usage_metadata),
                "citations": meta["citations"],
            }

        def events() -> Iterator[str]:
            with lock:
                for chunk in chat.stream_complete(req.prompt, stop=req.stop, **kwargs):
                    meta = chunk.response_metadata
                    reason = meta.get("finish_reason")
                    yield _sse({**head, "choices": [{"index": 0, "text": chunk.content, "logprobs": None,
                                                     "finish_reason": FINISH.get(reason, "stop") if reason else None}],
                                "citations": meta.get("citations", [])})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # ------------------------------------------------------------------ knowledge
    def _observe(obs: Any, status: int = 200) -> Any:
        """A typed tool's observation as a response: ToolError -> 4xx (bad input) or 503 (the store failed)."""
        if isinstance(obs, typed_tools.ToolError):
            if obs.error == "store_error":
                raise APIError(503, obs.message, "store_unavailable")
            raise APIError(400, obs.message, obs.error)
        return JSONResponse(obs.model_dump(mode="json"), status_code=status)

    def _namespace(namespace: str) -> str:
        from tools.schema import InvalidInput, clean_namespace

        try:
            return clean_namespace(namespace)
        except InvalidInput as exc:
            raise APIError(400, str(exc), param="namespace") from None

    @app.get("/v1/knowledge/{namespace:path}/lookup", dependencies=[Depends(reader)])
    def lookup(namespace: str, entity: str, relation: str) -> Any:
        return _observe(typed_tools.read(store, entity=entity, relation=relation, namespace=_namespace(namespace)))

    @app.get("/v1/knowledge/{namespace:path}/facts", dependencies=[Depends(reader)])
    def list_facts(namespace: str, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        if not (1 <= limit <= 1000 and offset >= 0):
            raise APIError(400, "limit must be 1-1000 and offset >= 0", param="limit")
        ns = _namespace(namespace)
        rows = []
        for i, fact in enumerate(store.iter_facts(namespace=ns)):
            if i >= offset + limit:
                break
            if i >= offset:
                rows.append({"id": fact.id, "entity": fact.entity, "relation": fact.relation, "value": fact.value,
                             "source": fact.source, "updated_at": fact.updated_at.isoformat()})
        return {"object": "list", "namespace": ns, "total": store.count(namespace=ns), "data": rows}

    @app.post("/v1/knowledge/{namespace:path}/facts", dependencies=[Depends(writer)])
    def write_fact(namespace: str, fact: FactIn) -> Any:
        obs = typed_tools.write(store, **fact.model_dump(exclude_none=True), namespace=_namespace(namespace))
        return _observe(obs, status=201)

    @app.delete("/v1/knowledge/{namespace:path}/facts", dependencies=[Depends(writer)])
    def delete_facts(namespace: str, fact_id: int | None = None, entity: str | None = None, relation: str | None = None) -> Any:
        selector = {k: v for k, v in {"fact_id": fact_id, "entity": entity, "relation": relation}.items() if v is not None}
        return _observe(typed_tools.delete(store, **selector, namespace=_namespace(namespace)))

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        # Bad input never lands here (it is a 4xx above); this is a fault of ours, reported as one.
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}", "internal_error").body(), status_code=500)

    return app


def _to_langchain(m: ChatMessageIn) -> Any:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    if m.role in ("system", "developer"):
        return SystemMessage(m.text)
    if m.role == "assistant":
        return AIMessage(m.text)
    if m.role == "tool":
        return ToolMessage(m.text, tool_call_id="client")
    return HumanMessage(m.text)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def load_run(run: str | Path, config: ServerConfig | None = None, device: str | None = None) -> Any:
    """The agent of a run directory: the ``<run>/lmlm`` checkpoint over ``<run>/kb.sqlite``."""
    from lmlm_agent.agent import LMLMAgent
    from tools import open_store

    run = Path(run)
    if not (run / "lmlm" / "config.json").exists():
        raise FileNotFoundError(f"{run} has no lmlm/ checkpoint; run `lmlm demo` (or `lmlm train pretrain`) first")
    kb = run / "kb.sqlite"
    semantic = (config or ServerConfig()).semantic
    store = open_store(kb, create=False, **({} if semantic else {"index": False})) if kb.exists() else None
    return LMLMAgent.from_pretrained(run / "lmlm", store=store, device=device)


__all__ = ["ServerConfig", "create_app", "load_run", "APIError", "BodyLimit", "TOKEN_ENV"]
