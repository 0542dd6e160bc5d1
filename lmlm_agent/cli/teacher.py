"""`lmlm teacher`: serve the offline teacher, or annotate documents through any teacher endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="The teacher LLM: an offline OpenAI-compatible endpoint for annotation.", no_args_is_help=True)


@app.command("serve")
def serve(
    records: list[Path] = typer.Option(..., "--records", help="Recorded annotations (published JSON or our JSONL); repeatable."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8765, help="Port (0: any free one)."),
    model: str = typer.Option("lmlm-offline-teacher", help="Model id the endpoint reports."),
) -> None:
    """Answer /v1/chat/completions annotation requests from recorded teacher outputs."""
    from training.teacher_server import TeacherServerConfig, load_records
    from training.teacher_server import serve as run

    typer.echo(f"{len(load_records(records))} recorded texts; base URL http://{host}:{port}/v1", err=True)
    run(TeacherServerConfig(records=list(records), host=host, port=port, model=model))


@app.command("annotate")
def annotate(
    in_path: Path = typer.Argument(..., help="Documents: JSONL with a 'text' field, or the published JSON (its plain texts)."),
    out_path: Path = typer.Argument(..., help="JSONL of the kept annotations ({id, text, plain, source})."),
    base_url: Optional[str] = typer.Option(None, help="Endpoint (default: env LMLM_TEACHER_BASE_URL or the local teacher)."),
    model: Optional[str] = typer.Option(None, help="Model (default: env LMLM_TEACHER_MODEL)."),
    concurrency: int = typer.Option(4, help="Requests in flight."),
    cache_dir: Path = typer.Option(Path("runs/teacher-cache"), help="Response cache (reruns are free)."),
    summary_path: Optional[Path] = typer.Option(None, "--summary", help="Also write the run summary here (JSON)."),
) -> None:
    """Annotate documents with the teacher; invalid answers are counted and left out."""
    from training.corpus import read_documents, write_jsonl
    from training.teacher import TeacherClient, TeacherConfig

    config = TeacherConfig(concurrency=concurrency, cache_dir=cache_dir)
    config.base_url = base_url or config.base_url
    config.model = model or config.model
    docs = read_documents(in_path)
    results, summary = TeacherClient(config).run([d.plain for d in docs])
    rows = [
        {"id": d.id, "text": r.annotated, "plain": d.plain, "source": f"teacher:{config.model}"}
        for d, r in zip(docs, results)
        if r.annotated is not None
    ]
    write_jsonl(out_path, rows)
    report = json.dumps(summary.to_json(), indent=1)
    if summary_path:
        summary_path.write_text(report + "\n")
    typer.echo(report)
