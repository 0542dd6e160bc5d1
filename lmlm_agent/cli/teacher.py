"""`lmlm teacher`: serve the offline teacher, or annotate documents through any teacher endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from lmlm_agent.cli.options import document_settings, set_option, setting
from training.teacher import TeacherConfig
from training.teacher_server import TeacherServerConfig

app = typer.Typer(help="The teacher LLM: an offline OpenAI-compatible endpoint for annotation.", no_args_is_help=True)


@app.command("serve")
def serve(
    records: list[Path] = typer.Option(..., "--records", help="Recorded annotations (published JSON or our JSONL); repeatable."),
    host: Optional[str] = setting(TeacherServerConfig, "host"),
    port: Optional[int] = setting(TeacherServerConfig, "port"),
    model: Optional[str] = setting(TeacherServerConfig, "model"),
) -> None:
    """Answer /v1/chat/completions annotation requests from recorded teacher outputs."""
    from tools.settings import load_settings
    from training.teacher_server import load_records
    from training.teacher_server import serve as run

    config = load_settings(TeacherServerConfig, None, [], dict(records=list(records), host=host, port=port, model=model))
    typer.echo(f"{len(load_records(records))} recorded texts; base URL http://{config.host}:{config.port}/v1", err=True)
    run(config)


@app.command("annotate")
@document_settings(TeacherConfig)
def annotate(
    in_path: Path = typer.Argument(..., help="Documents: JSONL with a 'text' field, or the published JSON (its plain texts)."),
    out_path: Path = typer.Argument(..., help="JSONL of the kept annotations ({id, text, plain, source})."),
    base_url: Optional[str] = setting(TeacherConfig, "base_url"),
    model: Optional[str] = setting(TeacherConfig, "model"),
    concurrency: Optional[int] = setting(TeacherConfig, "concurrency"),
    cache_dir: Optional[Path] = setting(TeacherConfig, "cache_dir"),
    summary_path: Optional[Path] = typer.Option(None, "--summary", help="Also write the run summary here (JSON)."),
    overrides: Optional[List[str]] = set_option(TeacherConfig),
) -> None:
    """Annotate documents with the teacher; invalid answers are counted and left out."""
    from tools.settings import load_settings
    from training.teacher import annotate_documents

    config = load_settings(TeacherConfig, None, overrides or [],
                           dict(base_url=base_url, model=model, concurrency=concurrency, cache_dir=cache_dir))
    report = json.dumps(annotate_documents(in_path, out_path, config).to_json(), indent=1)
    if summary_path:
        summary_path.write_text(report + "\n")
    typer.echo(report)
