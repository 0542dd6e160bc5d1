"""`lmlm serve` (OpenAI-compatible HTTP API) and `lmlm chat` (terminal chat), over a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from lmlm_agent.cli.options import document_settings, set_option, setting
from lmlm_agent.server_config import ServerConfig

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


@document_settings(ServerConfig)
def serve(
    run: Path = RUN,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback unless you mean to expose it."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: any free one)."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML of ServerConfig fields (the settings listed above); default RUN/server.yaml if present."
    ),
    token: Optional[str] = setting(ServerConfig, "token"),
    public_read: Optional[bool] = setting(ServerConfig, "public_read", "--public-read/--private-read"),
    max_tokens: Optional[int] = setting(ServerConfig, "max_tokens"),
    max_batch: Optional[int] = setting(ServerConfig, "max_batch"),
    max_queue: Optional[int] = setting(ServerConfig, "max_queue"),
    semantic: Optional[bool] = setting(ServerConfig, "semantic", "--semantic/--exact"),
    store: Optional[str] = setting(ServerConfig, "store", envvar="LMLM_KB_DB"),
    index: Optional[str] = setting(ServerConfig, "index"),
    overrides: Optional[List[str]] = set_option(ServerConfig),
    device: Optional[str] = DEVICE,
) -> None:
    """Serve a run over an OpenAI-compatible API.

    /v1/models, /v1/chat/completions and /v1/completions (streaming or not; every answer lists the facts it looked up as `citations`), and the knowledge base at /v1/knowledge/{namespace}/lookup and /facts (writes and deletes need the bearer token; a namespace listed under `namespace_tokens` in the config file is private: reading, writing and generating over it need its own token). The access log leaves out query strings (looked-up names) unless `log_queries: true`. Concurrent requests are decoded in one continuous batch (per knowledge-base namespace); OpenAI parameters the server does not implement are refused with a 400 naming them.
    """
    # Everything is checked before the server binds: a bad value is one `error:` line (the front door's), not a
    # server that starts and then fails its requests. The settings first: they need no model code.
    if config is not None and not config.is_file():
        raise FileNotFoundError(f"--config {config}: no such file")
    settings = ServerConfig.load(config or run / "server.yaml", overrides or [], token=token, public_read=public_read,
                                 max_tokens=max_tokens, max_batch=max_batch, max_queue=max_queue, semantic=semantic,
                                 store=store, index=index)
    _check_host(host, port)
    _check_device(device)
    import uvicorn

    from lmlm_agent.server import create_app, load_run

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
    semantic: Optional[bool] = setting(ServerConfig, "semantic", "--semantic/--exact"),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens per answer."),
    device: Optional[str] = DEVICE,
) -> None:
    """Ask a trained LMLM questions in the terminal.

    Each question is answered on its own (an LMLM answers one line, in the question/answer form it was trained on); the answer streams, then the facts it looked up are listed with their row id and provenance. An empty line or Ctrl-D quits.
    """
    from rich.console import Console
    from rich.table import Table

    from lmlm_agent.chat_model import ChatLMLM
    from lmlm_agent.server import load_run

    console = Console(highlight=False)
    _check_device(device)
    agent = load_run(run, ServerConfig.load(None, semantic=semantic), device=device)
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
