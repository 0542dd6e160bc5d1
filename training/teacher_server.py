"""The offline teacher: an OpenAI-compatible endpoint that answers from recorded annotations.

Records are documents in the published format (or our JSONL): the plain text and
the teacher's annotated text. A chat request is answered by finding the text to
annotate in its last user message (between ``TEXT_OPEN``/``TEXT_CLOSE`` when the
request comes from our client, else the whole message) and returning the
recorded annotation. Text with no record gets HTTP 404 with an OpenAI-style error
body, which the client counts as ``unknown`` rather than inventing an answer.
"""

# No `from __future__ import annotations`: FastAPI must resolve the handler's `Request` annotation.

import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from training.corpus import read_documents
from training.teacher import TEXT_CLOSE, TEXT_OPEN

DEFAULT_MODEL = "lmlm-offline-teacher"


@dataclass
class TeacherServerConfig:
    records: list[Path] = field(default_factory=list, metadata={"help": "Record files (published JSON or our JSONL)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to bind (loopback by default)."})
    port: int = field(default=8765, metadata={"help": "Port; 0 picks a free one."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Model id the endpoint reports."})


def _key(text: str) -> str:
    # Whitespace-insensitive, so a client that re-wraps lines still finds its record.
    return " ".join(text.split())


def load_records(paths: Iterable[str | Path]) -> dict[str, str]:
    """Text -> recorded annotated text (special-token form), from every file; later files win."""
    records: dict[str, str] = {}
    for path in paths:
        for doc in read_documents(path):
            if doc.plain.strip():
                records[_key(doc.plain)] = doc.annotated
    return records


def requested_text(messages: list[dict[str, Any]]) -> str:
    """The text a chat request asks to annotate: the last user message, inside the markers if present."""
    user = [m for m in messages if m.get("role") == "user"]
    content = user[-1].get("content", "") if user else ""
    if isinstance(content, list):  # the content-parts form
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    start = content.find(TEXT_OPEN)
    end = content.rfind(TEXT_CLOSE)
    if start >= 0 and end > start:
        return content[start + len(TEXT_OPEN) : end]
    return content


def _tokens(text: str) -> int:
    # No tokenizer of the recorded model is at hand: ~4 characters per token, as OpenAI documents.
    return max(1, (len(text) + 3) // 4)


def create_app(records: dict[str, str], model: str = DEFAULT_MODEL):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="lmlm offline teacher")

    def error(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": kind}}, status_code=status)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "lmlm-agent"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
            messages = body["messages"]
            assert isinstance(messages, list)
        except Exception:
            return error(400, "expected a JSON body with a list of messages", "invalid_request_error")
        text = requested_text(messages)
        answer = records.get(_key(text))
        if answer is None:
            return error(404, "no recorded annotation for this text", "unknown_text")
        prompt = "".join(str(m.get("content", "")) for m in messages)
        pt, ct = _tokens(prompt), _tokens(answer)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        }

    return app


@contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve an app (e.g. ``create_app(records)``) in a background thread; yields the base URL ``http://host:port/v1``."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"teacher server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(config: TeacherServerConfig) -> None:
    """Serve in the foreground until interrupted."""
    import uvicorn

    records = load_records(config.records)
    uvicorn.run(create_app(records, config.model), host=config.host, port=config.port, log_level="info")


__all__ = ["TeacherServerConfig", "load_records", "requested_text", "create_app", "running_server", "serve", "DEFAULT_MODEL"]
