"""`lmlm serve` (OpenAI-compatible HTTP API) and `lmlm chat` (terminal chat), over a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

RUN = typer.Option(..., "--run", help="A run directory (what `lmlm demo` writes): RUN/lmlm/ and RUN/kb.sqlite.")
DEVICE = typer.Option(None, "--device", help="torch device for the model (default: CPU).")


def _check_device(device: str | None) -> None:
    """A device string torch reads and a backend this machine has, before the model loads onto it."""
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r}: not a torch device ({' '.join(str(exc).split())})") from None
    backend = getattr(torch, kind, None)
    if kind != "cpu" and not (hasattr(backend, "is_available") and backend.is_available()):
        raise ValueError(f"--device {device!r}: torch sees no {kind} device on this machine")


def _check_host(host: str, port: int) -> None:
    import socket

    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror as exc:
        raise OSError(f"--host {host}: {exc.strerror}") from None


def serve(
    run: Path = RUN,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback unless you mean to expose it."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: any free one)."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML of ServerConfig fields (limits, access, namespace_tokens); default RUN/server.yaml if present."
    ),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="LMLM_API_TOKEN", show_envvar=True,
        help="Bearer token that knowledge writes and deletes require; without one they are refused.",
    ),
    public_read: Optional[bool] = typer.Option(
        None, "--public-read/--private-read",
        help="Whether reads and generation outside private namespaces need a token of this server (default: public).",
    ),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Largest max_tokens a request may ask for."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Most answers decoded together (default 8)."),
    max_queue: Optional[int] = typer.Option(
        None, "--max-queue", help="Requests that may wait for the decoder; beyond it 503 server_busy (default 32)."
    ),
    semantic: Optional[bool] = typer.Option(
        None, "--semantic/--exact", help="Semantic (embedding) lookups after exact ones (default: exact only); needs `lmlm kb rebuild-index`."
    ),
    store: Optional[str] = typer.Option(
        None, "--store", envvar="LMLM_KB_DB", show_envvar=True,
        help="Knowledge base to serve: a SQLite path or a database URL (postgresql://...); default RUN/kb.sqlite. "
             "Replicas given one PostgreSQL URL share one store.",
    ),
    index: Optional[str] = typer.Option(
        None, "--index", help="With --semantic: a Chroma directory or an http(s):// Chroma server (`chroma run`) that replicas share.",
    ),
    device: Optional[str] = DEVICE,
) -> None:
    """Serve a run over an OpenAI-compatible API.

    /v1/models, /v1/chat/completions and /v1/completions (streaming or not; every answer lists the facts it looked up as `citations`), and the knowledge base at /v1/knowledge/{namespace}/lookup and /facts (writes and deletes need the bearer token; a namespace listed under `namespace_tokens` in the config file is private: reading, writing and generating over it need its own token). The access log leaves out query strings (looked-up names) unless `log_queries: true`. Concurrent requests are decoded in one continuous batch (per knowledge-base namespace); OpenAI parameters the server does not implement are refused with a 400 naming them.
    """
    import uvicorn

    from lmlm_agent.server import ServerConfig, create_app, load_run

    # Everything is checked before the server binds: a bad value is one `error:` line (the front door's), not a
    # server that starts and then fails its requests.
    if config is not None and not config.is_file():
        raise FileNotFoundError(f"--config {config}: no such file")
    _check_host(host, port)
    _check_device(device)
    settings = ServerConfig.load(config or run / "server.yaml", token=token, public_read=public_read,
                                 max_tokens=max_tokens, max_batch=max_batch, max_queue=max_queue, semantic=semantic,
                                 store=store, index=index)
    agent = load_run(run, settings, device=device)
    writes = "writes need the bearer token" if settings.token else "writes refused (no --token / LMLM_API_TOKEN)"
    if settings.namespace_tokens:
        writes += f"; private namespaces: {', '.join(sorted(settings.namespace_tokens))}"
    kb = "no knowledge base" if agent.store is None else agent.store.describe()["db"]
    typer.echo(f"serving {run / 'lmlm'} over {kb} as '{settings.model_id}' on http://{host}:{port}/v1 ({writes})")
    uvicorn.run(create_app(agent, settings), host=host, port=port, log_level="info")


def chat(
    run: Path = RUN,
    db_off: bool = typer.Option(False, "--db-off", help="Every lookup returns 'unknown' (see what the model knows alone)."),
    semantic: bool = typer.Option(False, "--semantic/--exact", help="Semantic lookups after exact ones (needs the index)."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens per answer."),
    device: Optional[str] = DEVICE,
) -> None:
    """Ask a trained LMLM questions in the terminal.

    Each question is answered on its own (an LMLM answers one line, in the question/answer form it was trained on); the answer streams, then the facts it looked up are listed with their row id and provenance. An empty line or Ctrl-D quits.
    """
    from rich.console import Console
    from rich.table import Table

    from lmlm_agent.chat_model import ChatLMLM
    from lmlm_agent.server import ServerConfig, load_run

    console = Console(highlight=False)
    _check_device(device)
    agent = load_run(run, ServerConfig(semantic=semantic), device=device)
    llm = ChatLMLM(model=str(run / "lmlm"), agent=agent, db_off=db_off, max_tokens=max_tokens)
    console.print(f"[bold]{run / 'lmlm'}[/bold] with {'no database' if db_off else run / 'kb.sqlite'}. "
                  "Ask about the world (e.g. 'Where was <name> born?'); an empty line quits.")
    while True:
        try:
            question = console.input("[bold cyan]you>[/bold cyan] ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not question:
            break
        console.print("[bold green]lmlm>[/bold green] ", end="")
        cited: list[dict] = []
        for chunk in llm.stream(question):
            console.print(chunk.content, end="", markup=False)
            cited += chunk.response_metadata.get("citations", [])
        console.print()
        if cited:
            table = Table("entity", "relation", "value", "row", "source", title="looked up", title_justify="left")
            for c in cited:
                table.add_row(c["entity"], c["relation"], c["value"], str(c["fact_id"]), c.get("source") or "")
            console.print(table)
