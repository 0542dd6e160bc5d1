"""`lmlm annotate`: train the distilled annotator, annotate a corpus, score against a teacher."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Annotate text with lookup calls and score an annotator against a teacher.", no_args_is_help=True)


@app.command("train")
def train(
    records: list[Path] = typer.Option(..., "--records", help="Teacher annotations (published JSON or our JSONL); repeatable."),
    out: Path = typer.Option(..., "--out", help="Directory of the trained annotator."),
    epochs: float = typer.Option(8.0, help="Passes over the training windows."),
    layers: int = typer.Option(4, help="Encoder layers kept, of MiniLM's 6 (fewer: smaller and faster)."),
    max_documents: int = typer.Option(0, help="Train on at most this many documents (0: all)."),
    overrides: list[str] = typer.Option([], "--set", help="Any AnnotatorConfig field as key=value; repeatable."),
) -> None:
    """Distil an annotator from teacher annotations (runs at low CPU priority)."""
    from training.annotator import AnnotatorConfig, model_size_bytes, train_annotator
    from training.config import load_config
    from training.corpus import read_documents

    os.nice(10)  # share the machine: training yields to interactive work
    config = load_config(AnnotatorConfig, None, [f"epochs={epochs}", f"encoder_layers={layers}", f"max_documents={max_documents}", *overrides])
    docs = [d for path in records for d in read_documents(path)]
    annotator, report = train_annotator(((d.plain, d.annotated) for d in docs), config)
    annotator.save(out)
    typer.echo(json.dumps({**annotator.report, "out": str(out), "size_mb": round(model_size_bytes(out) / 1e6, 1)}, indent=1))


@app.command("calibrate")
def calibrate_command(
    records: list[Path] = typer.Option(..., "--records", help="Teacher annotations the annotator did not train on; repeatable."),
    annotator_dir: Path = typer.Option(..., "--annotator", help="A trained annotator directory; its value bias is updated in place."),
    documents: int = typer.Option(50, help="Use the first N documents (training holds out the first 50 of its records by default)."),
    threads: int = typer.Option(2, help="torch CPU threads."),
) -> None:
    """Re-choose the value bias (how many calls) on held-out teacher documents, never the evaluation set."""
    from training.annotator import Annotator, calibrate
    from training.corpus import read_documents

    docs = [d for path in records for d in read_documents(path)][:documents]
    if not docs:
        raise typer.BadParameter("no documents in --records", param_hint="--records")
    annotator = Annotator.load(annotator_dir, threads=threads)
    annotator.report["calibration"] = calibrate(annotator, [(d.plain, d.annotated) for d in docs])
    annotator.save(annotator_dir)
    typer.echo(json.dumps(annotator.report["calibration"], indent=1))


@app.command("corpus")
def corpus(
    in_path: Path = typer.Argument(..., help="JSONL of {id, text}."),
    out_path: Path = typer.Argument(..., help="JSONL of {id, text (annotated), plain}; appended to, ids already there skipped."),
    annotator_dir: Path = typer.Option(..., "--annotator", help="A trained annotator directory."),
    db: Optional[str] = typer.Option(None, "--db", help="Knowledge base (SQLite path or URL) to receive the triples."),
    namespace: Optional[str] = typer.Option(None, help="Knowledge-base namespace."),
    batch_size: int = typer.Option(64, help="Documents per batch."),
    threads: int = typer.Option(2, help="torch CPU threads."),
) -> None:
    """Annotate a corpus; with --db, each triple goes to the knowledge base as source doc:<id>@<offset>."""
    from training.annotator import Annotator
    from training.annotator_run import CorpusConfig, annotate_corpus

    store = None
    if db:
        from tools import open_store

        store = open_store(db, index=False)
    summary = annotate_corpus(
        Annotator.load(annotator_dir, threads=threads), in_path, out_path, store, CorpusConfig(batch_size=batch_size, namespace=namespace)
    )
    typer.echo(json.dumps(summary, indent=1))


@app.command("eval")
def evaluate(
    reference: Path = typer.Option(..., "--reference", help="Teacher annotations to score against (e.g. squad-eval100.gpt4o.json)."),
    annotator_dir: Path = typer.Option(..., "--annotator", help="A trained annotator directory."),
    out: Path = typer.Option(Path("runs/annotation-eval"), "--out", help="Directory for annotation_eval.json and .md."),
    value_bias: Optional[float] = typer.Option(None, help="Override the annotator's value-span bias (+: more calls)."),
    threads: int = typer.Option(2, help="torch CPU threads."),
) -> None:
    """Precision/recall/F1 of the annotator's calls against the reference, per document, micro-averaged."""
    from training.annotator import Annotator
    from training.annotator_run import evaluate_annotator

    annotator = Annotator.load(annotator_dir, threads=threads)
    if value_bias is not None:
        annotator.config.value_bias = value_bias
    report = evaluate_annotator(annotator, reference, annotator_dir)
    js, md = report.write(out)
    typer.echo(report.to_markdown())
    typer.echo(f"written: {js} {md}", err=True)
