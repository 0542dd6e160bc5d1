"""An OpenAI-compatible HTTP server over a trained run: completions with citations, and the knowledge base.

    lmlm serve --run runs/demo-x          # http://127.0.0.1:8000/v1

    GET    /v1/models                                 the served model
    POST   /v1/chat/completions                       chat; "stream": true for server-sent events
    POST   /v1/completions                            plain-text continuation (no chat formatting)
    GET    /v1/knowledge/{namespace}/lookup?entity=&relation=
    GET    /v1/knowledge/{namespace}/facts?limit=&offset=
    POST   /v1/knowledge/{namespace}/facts            {"entity", "relation", "value", "source"}   (token)
    DELETE /v1/knowledge/{namespace}/facts?fact_id=   or ?entity=[&relation=]                       (token)

A thin adapter over :class:`lmlm_agent.agent.LMLMAgent` (no LangChain): chat
turns become the agent's :func:`~lmlm_agent.agent.chat_prompt`, and one worker
thread owns the model and decodes (:class:`BatchScheduler`).

Batching is continuous: a request that arrives while a batch decodes joins it at
the next step (its prompt is prefilled and its rows appended,
:meth:`~lmlm_agent.decoding.InterleavedDecoder.add`), up to ``max_batch`` rows.
Each row keeps its own ``max_tokens``, ``stop``, ``temperature``, ``top_p`` and
``logprobs``; what a batch shares is the knowledge-base namespace. A request for
another namespace waits in a bounded queue until the batch ends (and once one
waits, no later request joins ahead of it); a request with a ``seed`` is decoded
alone, so the seed reproduces it. A full queue answers 503 ``server_busy`` with
``Retry-After``. A client that goes away (a dropped stream) has its rows dropped
from the batch at the next step.

OpenAI parameters: ``n`` and prompt lists (one row each), ``logprobs`` /
``top_logprobs`` (non-streamed; the model's log-probabilities of the tokens it
chose, tokens inside lookup calls left out), completions ``echo`` (not with
``logprobs``), ``stop``, ``seed``, ``temperature``, ``top_p``,
``stream_options.include_usage``. Every other parameter (``tools``,
``response_format``, ``frequency_penalty``, ...) is refused with a 400 naming it,
except neutral values (``tool_choice: "none"``, ``response_format: {"type":
"text"}``, zero penalties) and ``user``, an opaque client id.

Every answer carries ``citations``: one per fact the model's lookups used (entity,
relation, value, fact_id, score, source, namespace). In a stream each chunk
carries the citations made since the previous chunk.

Access. Writes and deletes need ``Authorization: Bearer <token>`` (``LMLM_API_TOKEN``
or the config file); with no token configured they are refused. Reads (generation
included) are public unless ``public_read`` is off, then they need a token of this
server. A namespace listed in ``namespace_tokens`` is private: reading it (lookups,
listings, and generation whose ``namespace`` it is, so its facts reach no other
client's answers or citations) and writing it need its own token; the server-wide
token does not open it.

Logs. The access log keeps method, path and status, not the query string (the
entity and relation of a lookup or a delete), so a forgotten fact's key does not
stay in the log (``log_queries`` keeps it); no value is ever logged.

Bad requests get a 4xx with an OpenAI-style error body, never a 5xx.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmlm_agent.agent import CHAT_STOP, Delta, LMLMAgent, RowFollower, chat_prompt, citations
from lmlm_agent.decoding import GenerationOutput, Prompt
from lmlm_agent.server_config import TOKEN_ENV, ServerConfig

# Decoder finish reasons in OpenAI's words: a full context window is a length stop too.
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}
INT64 = 2**63 - 1  # the largest id, seed or offset a request may carry (SQL and torch take 64-bit integers)


class QueryRedactor(logging.Filter):
    """Uvicorn's access log line without its query string: ``GET /v1/knowledge/team/lookup?<redacted>``.

    A lookup's or a delete's query names an entity and a relation; kept in a log,
    a forgotten fact's key would outlive the fact.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn logs (client, method, path with query, http version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].partition("?")[0] + "?<redacted>", *args[3:])
        return True


REDACT_QUERIES = QueryRedactor()
ACCESS_LOGGER = "uvicorn.access"


# --------------------------------------------------------------------------- request bodies


def _utf8(text: str) -> str:
    """Text a tokenizer can take: a lone UTF-16 surrogate (valid JSON, invalid Unicode) is refused."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it holds a lone UTF-16 surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


class _Request(BaseModel):
    # A parameter we do not implement is refused by name, never accepted and ignored.
    model_config = ConfigDict(extra="forbid")


class ContentPart(_Request):
    type: Literal["text"]
    text: Text


class ChatMessageIn(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None
    name: Text | None = None  # accepted: an LMLM prompt has no speaker names, and the turn's text is what it reads
    tool_call_id: Text | None = None
    # An earlier answer sent back as history carries these empty; with content they would be features we lack.
    refusal: None = None
    tool_calls: list[Any] | None = Field(default=None, max_length=0)
    function_call: None = None
    audio: None = None
    annotations: list[Any] | None = Field(default=None, max_length=0)

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    model: Text
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=0, le=INT64)
    n: int = Field(default=1, ge=1, le=16, description="answers per prompt")
    namespace: Text | None = Field(default=None, description="knowledge-base namespace the lookups read (extra_body)")
    user: Text | None = Field(default=None, description="an opaque client id; accepted and not used")
    # Neutral values of parameters this server does not implement; anything else is refused by name.
    frequency_penalty: Literal[0, 0.0] | None = None
    presence_penalty: Literal[0, 0.0] | None = None
    logit_bias: dict[str, Any] | None = Field(default=None, max_length=0)

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
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tool_choice: Literal["none"] | None = Field(default=None, description="only 'none': an LMLM calls no client tools")
    response_format: dict[str, Any] | None = None

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v != {"type": "text"}:
            raise ValueError("only {'type': 'text'}: an LMLM writes text with lookups, not JSON on request")
        return v

    @model_validator(mode="after")
    def _logprobs(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class CompletionRequest(_Sampling):
    prompt: Text | list[Text] = Field(description="a prompt or a list of prompts (token-id prompts are not supported)")
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: str | list[str]) -> list[str]:
        prompts = [v] if isinstance(v, str) else v
        if not prompts:
            raise ValueError("give at least one prompt")
        return prompts

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of must equal n: this server returns every sample it draws")
        return self


class FactIn(_Request):
    entity: Text
    relation: Text
    value: Text
    source: Text | None = None


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
    def where(e: dict[str, Any]) -> str:
        return ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))

    first = errors[0] if errors else {}
    param = where(first) or None
    parts = []
    for e in errors[:5]:
        if e.get("type") == "extra_forbidden":
            parts.append(f"{where(e)}: not supported by this server")
        else:
            parts.append(f"{where(e) or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


# --------------------------------------------------------------------------- batching


class ServerBusy(Exception):
    pass


@dataclass
class Job:
    """One request's rows and where their deltas go (an asyncio queue on the request's event loop)."""

    prompts: list[Prompt]
    chat: bool
    key: tuple  # requests with equal keys may share a batch
    settings: dict[str, Any]  # DecodingConfig overrides every row of the batch shares
    namespace: str | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the request's event loop has closed (the server is shutting down): nobody to tell
            self.cancelled.set()


class BatchScheduler:
    """One worker thread owns the model and decodes requests in continuous batches (see the module notes)."""

    def __init__(self, agent: LMLMAgent, max_batch: int, max_queue: int):
        self.agent, self.max_batch, self.max_queue = agent, max_batch, max_queue
        self.waiting: deque[Job] = deque()
        self.wakeup = threading.Condition()
        self.batch_sizes: list[int] = []  # most rows in flight at once, per decoder run (tests, measurements)
        self.rows_decoded = 0
        self.thread: threading.Thread | None = None
        self.stopping = False

    def submit(self, job: Job) -> None:
        with self.wakeup:
            if len(self.waiting) >= self.max_queue:
                raise ServerBusy
            self.waiting.append(job)
            if self.thread is None:
                self.thread = threading.Thread(target=self._work, name="lmlm-decoder", daemon=True)
                self.thread.start()
            self.wakeup.notify()

    def close(self) -> None:
        with self.wakeup:
            self.stopping = True
            self.wakeup.notify()

    def _next_batch(self) -> list[Job] | None:
        with self.wakeup:
            while not self.waiting and not self.stopping:
                self.wakeup.wait()
            if self.stopping:
                return None
            first = self.waiting.popleft()
            return [first, *self._joiners(first.key, len(first.prompts))]

    def _joiners(self, key: tuple, rows: int) -> list[Job]:
        """Waiting jobs that may join a batch of ``key`` holding ``rows`` rows: the queue's head, while it matches."""
        joining = []
        with self.wakeup:
            while self.waiting and self.waiting[0].key == key and rows + len(self.waiting[0].prompts) <= self.max_batch:
                job = self.waiting.popleft()
                rows += len(job.prompts)
                joining.append(job)
        return joining

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [job for job in batch if not job.cancelled.is_set()]
            if not batch:
                continue
            try:
                self._decode(batch)
            except Exception as exc:  # a fault of ours: every request of the batch gets a 500, the worker lives on
                for job in batch:
                    job.send(exc)

    def _decode(self, batch: list[Job]) -> None:
        """Decode ``batch`` (a list it extends with the jobs that join) until every row is done."""
        first = batch[0]
        owner = [(job, i) for job in batch for i in range(len(job.prompts))]
        decoder = self.agent.decoder([p for job in batch for p in job.prompts], first.namespace, **first.settings)
        follower = RowFollower(decoder, chat=[job.chat for job, _ in owner])
        peak = len(owner)
        while not all(follower.done):
            for delta in follower.step():
                job, index = owner[delta.row]
                if not job.cancelled.is_set():
                    job.send((index, delta))
            for r, (job, _) in enumerate(owner):
                if job.cancelled.is_set():
                    decoder.cancel(r)
            for job in self._joiners(first.key, len(decoder.active)):
                batch.append(job)
                follower.add(job.prompts, chat=job.chat)
                owner += [(job, i) for i in range(len(job.prompts))]
            peak = max(peak, len(decoder.active))
        self.batch_sizes.append(peak)
        self.rows_decoded += len(owner)


# --------------------------------------------------------------------------- the app


def create_app(agent: LMLMAgent, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving an :class:`~lmlm_agent.agent.LMLMAgent` (its model, tokenizer and store)."""
    from tools import KnowledgeStore, typed_tools

    config = config or ServerConfig()
    store = agent.store
    tokenizer = agent.tokenizer
    context = getattr(agent.model.config, "max_position_embeddings", None) or 1 << 30
    scheduler = BatchScheduler(agent, config.max_batch, config.max_queue)
    created = int(time.time())

    app = FastAPI(title="lmlm", description=__doc__.split("\n\n")[0], version="1")
    app.state.scheduler = scheduler
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)
    app.router.on_shutdown.append(scheduler.close)
    if not config.log_queries:
        logging.getLogger(ACCESS_LOGGER).addFilter(REDACT_QUERIES)  # the same filter once, however many apps

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

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

    private = config.namespace_tokens

    def _same(given: str, token: str) -> bool:
        return secrets.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())

    def _known(given: str) -> bool:
        return any(_same(given, t) for t in (config.token, *private.values()) if t is not None)

    def _check(request: Request, action: str, token: str | None, scope: str = "") -> None:
        """The request carries ``token`` (401 without a token or with an unknown one; 403 with another known one)."""
        if token is None:
            raise APIError(403, f"{action} is disabled: the server has no token configured ({TOKEN_ENV})", "forbidden")
        given = _bearer(request)
        if given is None:
            raise APIError(401, f"{action}{scope} needs 'Authorization: Bearer <token>'", "unauthorized")
        if not _same(given, token):
            if _known(given):
                raise APIError(403, f"this token does not allow {action}{scope}", "forbidden")
            raise APIError(401, "invalid token", "unauthorized")

    def reader(request: Request) -> None:
        """A read outside any private namespace: public, or (public_read off) any token of this server."""
        if config.public_read:
            return
        given = _bearer(request)
        if given is None:
            raise APIError(401, "reading needs 'Authorization: Bearer <token>'", "unauthorized")
        if not _known(given):
            raise APIError(401, "invalid token", "unauthorized")

    def _allow(request: Request, namespace: str, action: Literal["reading", "writing"]) -> None:
        if namespace in private:
            _check(request, action, private[namespace], f" namespace {namespace!r}")
        elif action == "reading":
            reader(request)
        else:
            _check(request, action, config.token)

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
    def _job(req: _Sampling, request: Request, prompts: list[str], max_tokens: int | None, chat: bool,
             logprobs: int | None) -> Job:
        """The request as decoder rows, its access and limits checked; queued for the worker (503 when the queue is full)."""
        namespace = None
        if req.namespace is not None:
            from tools.schema import InvalidInput, clean_namespace

            try:
                namespace = clean_namespace(req.namespace)
            except InvalidInput as exc:
                raise APIError(400, str(exc), param="namespace") from None
        # The lookups read this namespace: a private one's facts reach only its token's holders.
        _allow(request, _lookup_namespace(namespace), "reading")
        _known_model(req.model)
        param = "messages" if chat else "prompt"
        limit = max_tokens or min(config.default_max_tokens, config.max_tokens)
        if limit > config.max_tokens:
            raise APIError(400, f"max_tokens is {limit}; this server allows at most {config.max_tokens}", param="max_tokens")
        rows = len(prompts) * req.n
        if rows > config.max_batch:
            raise APIError(400, f"{len(prompts)} prompt(s) x n={req.n} is {rows} answers; at most {config.max_batch}", param="n")
        for prompt in prompts:
            prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False))
            if prompt_tokens + limit > context:
                raise APIError(
                    400,
                    f"the prompt is {prompt_tokens} tokens and max_tokens {limit}: over the model's context of {context}",
                    "context_length_exceeded",
                    param,
                )
        stops = (CHAT_STOP, *(req.stop or ())) if chat else tuple(req.stop or ())
        # A seeded request decodes alone (its own generator), so the same request gives the same answer.
        key = (namespace, uuid.uuid4().hex if req.seed is not None else None)
        row = dict(max_new_tokens=limit, stop_strings=stops, temperature=req.temperature or 0.0,
                   top_p=1.0 if req.top_p is None else req.top_p, logprobs=logprobs)
        job = Job(
            prompts=[Prompt(p, **row) for p in prompts for _ in range(req.n)],
            chat=chat,
            key=key,
            settings={"seed": req.seed},
            namespace=namespace,
            loop=asyncio.get_running_loop(),
        )
        try:
            scheduler.submit(job)
        except ServerBusy:
            raise APIError(503, f"the server is busy ({config.max_queue} requests waiting); retry shortly",
                           "server_busy") from None
        return job

    async def _deltas(job: Job) -> AsyncIterator[tuple[int, Delta]]:
        """The job's deltas as they come; a client that goes away cancels the job's rows.

        A stream notices by being closed; a non-streamed request by :func:`_watch`.
        """
        remaining = len(job.prompts)
        try:
            while remaining:
                item = await job.events.get()
                if item is None:  # the client went away
                    return
                if isinstance(item, Exception):
                    raise item
                index, delta = item
                remaining -= delta.output is not None
                yield index, delta
        finally:
            job.cancelled.set()  # a no-op once every row is done

    async def _watch(job: Job, request: Request) -> None:
        """Wait for the client to disconnect, then end the job's wait (the connection says so on its receive channel)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.events.put_nowait(None)

    async def _outputs(job: Job, request: Request) -> list[GenerationOutput]:
        outputs: list[GenerationOutput | None] = [None] * len(job.prompts)
        watcher = asyncio.create_task(_watch(job, request))
        try:
            async for index, delta in _deltas(job):
                if delta.output is not None:
                    outputs[index] = delta.output
        finally:
            watcher.cancel()
        if any(out is None for out in outputs):
            # Nobody reads this answer; 499 is the status servers log for a client that closed its request.
            raise APIError(499, "the client closed the request", "client_closed")
        return outputs  # type: ignore[return-value]

    def _lookup_namespace(namespace: str | None) -> str:
        """The namespace a generation's lookups read: the request's, else the store's own default."""
        return namespace or (store.namespace if isinstance(store, KnowledgeStore) else "default")

    def _namespace_name(job: Job) -> str:
        return _lookup_namespace(job.namespace)

    def _usage(prompts: list[str], n: int, outputs: list[GenerationOutput]) -> dict[str, int]:
        pt = n * sum(len(tokenizer.encode(p, add_special_tokens=False)) for p in prompts)
        ct = sum(o.generated_tokens + o.injected_tokens for o in outputs)
        return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}

    def _answer_cites(outputs: list[GenerationOutput], job: Job) -> list[dict[str, Any]]:
        return citations([r for o in outputs for r in o.lookups], _namespace_name(job))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        if len(req.messages) > config.max_messages:
            raise APIError(400, f"{len(req.messages)} messages; at most {config.max_messages}", param="messages")
        if req.logprobs and req.stream:
            raise APIError(400, "logprobs are returned with non-streamed answers only", param="logprobs")
        prompt = chat_prompt([("user" if m.role == "user" else m.role, m.text) for m in req.messages])
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        job = _job(req, request, [prompt], req.max_completion_tokens or req.max_tokens, chat=True, logprobs=logprobs)
        ident, stamp = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "created": stamp, "model": config.model_id}
        if not req.stream:
            outputs = await _outputs(job, request)
            choices = []
            for i, out in enumerate(outputs):
                choice: dict[str, Any] = {
                    "index": i,
                    "message": {"role": "assistant", "content": out.text.strip()},
                    "finish_reason": FINISH[out.finish_reason],
                    "logprobs": None,
                }
                if req.logprobs:
                    choice["logprobs"] = {"content": _chat_logprobs(tokenizer, out)}
                choices.append(choice)
            return {**head, "object": "chat.completion", "choices": choices, "usage": _usage([prompt], req.n, outputs),
                    "citations": _answer_cites(outputs, job)}

        async def events() -> AsyncIterator[str]:
            chunk = {**head, "object": "chat.completion.chunk"}
            for i in range(req.n):
                yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            outputs: list[GenerationOutput] = []
            async for index, delta in _deltas(job):
                reason = FINISH[delta.output.finish_reason] if delta.output else None
                yield _sse({**chunk,
                            "choices": [{"index": index, "delta": {"content": delta.text} if delta.text else {},
                                         "finish_reason": reason}],
                            "citations": citations(delta.lookups, _namespace_name(job))})
                if delta.output:
                    outputs.append(delta.output)
            if req.stream_options and req.stream_options.include_usage:
                yield _sse({**chunk, "choices": [], "usage": _usage([prompt], req.n, outputs)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        prompts: list[str] = req.prompt  # type: ignore[assignment]  (the validator made it a list)
        if req.logprobs is not None and req.stream:
            raise APIError(400, "logprobs are returned with non-streamed answers only", param="logprobs")
        if req.echo and req.logprobs is not None:
            raise APIError(400, "echo with logprobs would need the prompt's log-probabilities, which are not computed",
                           param="echo")
        job = _job(req, request, prompts, req.max_tokens, chat=False, logprobs=req.logprobs)
        ident, stamp = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "object": "text_completion", "created": stamp, "model": config.model_id}
        # Choice i*n + j is the j-th answer to prompt i, as OpenAI numbers them.
        row_prompts = [p for p in prompts for _ in range(req.n)]
        if not req.stream:
            outputs = await _outputs(job, request)
            choices = [{"index": i, "text": (row_prompts[i] if req.echo else "") + out.text,
                        "logprobs": _completion_logprobs(tokenizer, out) if req.logprobs is not None else None,
                        "finish_reason": FINISH[out.finish_reason]} for i, out in enumerate(outputs)]
            return {**head, "choices": choices, "usage": _usage(prompts, req.n, outputs), "citations": _answer_cites(outputs, job)}

        async def events() -> AsyncIterator[str]:
            if req.echo:
                for i, p in enumerate(row_prompts):
                    yield _sse({**head, "choices": [{"index": i, "text": p, "logprobs": None, "finish_reason": None}]})
            outputs: list[GenerationOutput] = []
            async for index, delta in _deltas(job):
                reason = FINISH[delta.output.finish_reason] if delta.output else None
                yield _sse({**head, "choices": [{"index": index, "text": delta.text, "logprobs": None, "finish_reason": reason}],
                            "citations": citations(delta.lookups, _namespace_name(job))})
                if delta.output:
                    outputs.append(delta.output)
            if req.stream_options and req.stream_options.include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(prompts, req.n, outputs)})
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
            return clean_namespace(_utf8(namespace))
        except (InvalidInput, ValueError) as exc:
            raise APIError(400, str(exc), param="namespace") from None

    def _query_text(name: str, value: str | None) -> str | None:
        try:
            return None if value is None else _utf8(value)
        except ValueError as exc:
            raise APIError(400, f"{name}: {exc}", param=name) from None

    def _namespace_for(request: Request, namespace: str, action: Literal["reading", "writing"]) -> str:
        ns = _namespace(namespace)
        _allow(request, ns, action)
        return ns

    @app.get("/v1/knowledge/{namespace:path}/lookup")
    def lookup(request: Request, namespace: str, entity: str, relation: str) -> Any:
        ns = _namespace_for(request, namespace, "reading")
        return _observe(typed_tools.read(store, entity=_query_text("entity", entity), relation=_query_text("relation", relation),
                                         namespace=ns))

    @app.get("/v1/knowledge/{namespace:path}/facts")
    def list_facts(request: Request, namespace: str, limit: int = Query(100, ge=1, le=1000),
                   offset: int = Query(0, ge=0, le=INT64)) -> dict[str, Any]:
        ns = _namespace_for(request, namespace, "reading")
        rows = []
        # islice takes positions up to 2**63 - 1 (INT64): an offset near it still lists to the end, not a 500.
        for fact in itertools.islice(store.iter_facts(namespace=ns), offset, min(offset + limit, INT64)):
            rows.append({"id": fact.id, "entity": fact.entity, "relation": fact.relation, "value": fact.value,
                         "source": fact.source, "updated_at": fact.updated_at.isoformat()})
        return {"object": "list", "namespace": ns, "total": store.count(namespace=ns), "data": rows}

    @app.post("/v1/knowledge/{namespace:path}/facts")
    def write_fact(request: Request, namespace: str, fact: FactIn) -> Any:
        ns = _namespace_for(request, namespace, "writing")
        return _observe(typed_tools.write(store, **fact.model_dump(exclude_none=True), namespace=ns), status=201)

    @app.delete("/v1/knowledge/{namespace:path}/facts")
    def delete_facts(request: Request, namespace: str, fact_id: int | None = Query(None, ge=1, le=INT64),
                     entity: str | None = None, relation: str | None = None) -> Any:
        ns = _namespace_for(request, namespace, "writing")
        selector = {"fact_id": fact_id, "entity": _query_text("entity", entity), "relation": _query_text("relation", relation)}
        return _observe(typed_tools.delete(store, **{k: v for k, v in selector.items() if v is not None}, namespace=ns))

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        # Bad input never lands here (it is a 4xx above); this is a fault of ours, reported as one.
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}", "internal_error").body(), status_code=500)

    return app


def _token_entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", "replace"))}


def _visible_logprobs(tokenizer: Any, out: GenerationOutput) -> list[Any]:
    """The chosen tokens of the display text: not the EOS, not inside a lookup call, not past a stop string."""
    from lmlm_agent.tokenizer import call_token_ids

    call = call_token_ids(tokenizer)
    inside, hidden = False, set()
    for i, t in enumerate(out.token_ids):
        if t == call.entity:
            inside = True
        if inside:
            hidden.add(i)
        if t == call.end:
            inside = False
    kept_chars, kept = 0, []
    for lp in out.logprobs:
        if lp.position >= len(out.token_ids) or lp.position in hidden:
            continue
        kept_chars += len(tokenizer.decode([lp.token_id], skip_special_tokens=False))
        if kept_chars > len(out.text) + 1:  # the tokens of a stop string the text ends before (+1: a call's following space)
            break
        kept.append(lp)
    return kept


def _chat_logprobs(tokenizer: Any, out: GenerationOutput) -> list[dict[str, Any]]:
    return [{**_token_entry(tokenizer, lp.token_id, lp.logprob),
             "top_logprobs": [_token_entry(tokenizer, t, v) for t, v in lp.top]}
            for lp in _visible_logprobs(tokenizer, out)]


def _completion_logprobs(tokenizer: Any, out: GenerationOutput) -> dict[str, Any]:
    kept = _visible_logprobs(tokenizer, out)
    tokens = [tokenizer.decode([lp.token_id], skip_special_tokens=False) for lp in kept]
    offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=0)) if tokens else []
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in kept],
        "top_logprobs": [{tokenizer.decode([t], skip_special_tokens=False): v for t, v in lp.top} for lp in kept],
        "text_offset": offsets,
    }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def load_run(run: str | Path, config: ServerConfig | None = None, device: str | None = None) -> LMLMAgent:
    """The agent of a run directory: the ``<run>/lmlm`` checkpoint over the configured store (``<run>/kb.sqlite``).

    A run without a kb.sqlite is served without a store (every lookup ``unknown``); a store
    named in the config must exist (a replica must not answer from an empty database of its own).
    """
    from tools import open_store

    run = Path(run)
    config = config or ServerConfig()
    if not (run / "lmlm" / "config.json").exists():
        raise FileNotFoundError(f"{run} has no lmlm/ checkpoint; run `lmlm demo` (or `lmlm train pretrain`) first")
    kb = config.store or run / "kb.sqlite"
    index: dict[str, Any] = {"index": config.index} if config.index else {}
    if config.store is None and not Path(kb).exists():
        store = None
    else:
        store = open_store(kb, create=False, **(index if config.semantic else {"index": False}))
    return LMLMAgent.from_pretrained(run / "lmlm", store=store, device=device)


__all__ = ["ServerConfig", "create_app", "load_run", "APIError", "BodyLimit", "BatchScheduler", "QueryRedactor", "TOKEN_ENV"]
