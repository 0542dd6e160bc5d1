"""`lmlm annotate`: make an annotator of any kind, annotate a corpus, score annotators against a teacher."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Annotate text with lookup calls and score an annotator against a teacher.", no_args_is_help=True)


KIND_HELP = "extractive (MiniLM tagger, the CPU default), generative (a causal LM fine-tuned with TRL) or teacher (the endpoint itself)."


@app.command("train")
def train(
    out: Path = typer.Option(..., "--out", help="Directory of the annotator."),
    records: list[Path] = typer.Option([], "--records", help="Teacher annotations (published JSON or our JSONL); repeatable."),
    kind: str = typer.Option("extractive", "--kind", help=KIND_HELP),
    base: Optional[Path] = typer.Option(None, "--base", help="generative: an HF causal LM directory to fine-tune."),
    preset: str = typer.Option("small", help="generative without --base: train a fresh model of this preset (and a tokenizer on the records) in OUT/base."),
    context: int = typer.Option(512, help="generative without --base: the fresh model's context in tokens."),
    epochs: float = typer.Option(8.0, help="Passes over the training windows."),
    # Not derived from AnnotatorConfig's fields: importing the annotator's module would cost every `lmlm` call 0.17 s.
    layers: int = typer.Option(4, help="extractive: encoder layers kept, of MiniLM's 6 (fewer: smaller and faster)."),
    max_documents: int = typer.Option(0, help="Train on at most this many documents (0: all)."),
    overrides: list[str] = typer.Option([], "--set", help="Any field of the kind's config (AnnotatorConfig, GenerativeConfig, TeacherConfig) as key=value; repeatable."),
) -> None:
    """Make an annotator of any kind: distil one from teacher annotations, or save the teacher's settings (low CPU priority)."""
    from training.annotator_run import make_annotator
    from training.annotators import KINDS

    if kind not in KINDS:
        raise typer.BadParameter(f"unknown kind {kind!r}", param_hint="--kind")
    if kind != "teacher" and not records:
        raise typer.BadParameter("give the teacher's annotations to learn from", param_hint="--records")
    os.nice(10)  # share the machine: training yields to interactive work
    report = make_annotator(kind, out, records, overrides, epochs=epochs, encoder_layers=layers, max_documents=max_documents,
                            base=base, preset=preset, context=context)
    typer.echo(json.dumps(report, indent=1))


@app.command("calibrate")
def calibrate_command(
    records: list[Path] = typer.Option(..., "--records", help="Teacher annotations the annotator did not train on; repeatable."),
    annotator_dir: Path = typer.Option(..., "--annotator", help="A trained annotator directory; its value bias is updated in place."),
    documents: int = typer.Option(50, help="Use the first N documents (training holds out the first 50 of its records by default)."),
    threads: int = typer.Option(2, help="torch CPU threads."),
) -> None:
    """Re-choose the value bias (how many calls) on held-out teacher documents, never the evaluation set."""
    from training.annotator_run import calibrate_annotator

    typer.echo(json.dumps(calibrate_annotator(annotator_dir, records, documents, threads), indent=1))


@app.command("corpus")
def corpus(
    in_path: Path = typer.Argument(..., help="JSONL of {id, text}."),
    out_path: Path = typer.Argument(..., help="JSONL of {id, text (annotated), plain}; appended to, ids already there skipped."),
    annotator_dir: Path = typer.Option(..., "--annotator", help="An annotator directory, any kind."),
    db: Optional[str] = typer.Option(None, "--db", help="Knowledge base (SQLite path or URL) to receive the triples."),
    namespace: Optional[str] = typer.Option(None, help="Knowledge-base namespace."),
    batch_size: int = typer.Option(64, help="Documents per batch."),
    threads: int = typer.Option(2, help="torch CPU threads."),
) -> None:
    """Annotate a corpus; with --db, each triple goes to the knowledge base as source doc:<id>@<offset>."""
    from training.annotator_run import CorpusConfig, annotate_corpus
    from training.annotators import load_annotator

    store = None
    if db:
        from tools import open_store

        store = open_store(db, index=False)
    summary = annotate_corpus(
        load_annotator(annotator_dir, threads=threads), in_path, out_path, store, CorpusConfig(batch_size=batch_size, namespace=namespace)
    )
    typer.echo(json.dumps(summary, indent=1))


@app.command("eval")
def evaluate(
    reference: Path = typer.Option(..., "--reference", help="Teacher annotations to score against (e.g. squad-eval100.gpt4o.json)."),
    annotator_dir: Path = typer.Option(..., "--annotator", help="An annotator directory, any kind."),
    out: Path = typer.Option(Path("runs/annotation-eval"), "--out", help="Directory for annotation_eval.json and .md."),
    value_bias: Optional[float] = typer.Option(None, help="extractive: override the value-span bias (+: more calls)."),
    threads: int = typer.Option(2, help="torch CPU threads."),
) -> None:
    """Precision/recall/F1 of the annotator's calls against the reference, per document, micro-averaged."""
    from training.annotator_run import evaluate_annotator
    from training.annotators import load_annotator

    annotator = load_annotator(annotator_dir, threads=threads)
    if value_bias is not None:
        if annotator.kind != "extractive":
            raise typer.BadParameter("only an extractive annotator has a value bias", param_hint="--value-bias")
        annotator.config.value_bias = value_bias
    report = evaluate_annotator(annotator, reference, annotator_dir)
    js, md = report.write(out)
    typer.echo(report.to_markdown())
    typer.echo(f"written: {js} {md}", err=True)


@app.command("compare")
def compare(
    annotator_dirs: list[Path] = typer.Option(..., "--annotator", help="Annotator directories of any kind; repeatable."),
    references: list[Path] = typer.Option(..., "--reference", help="Teacher annotations to score against; repeatable."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write comparison.json and comparison.md here."),
    threads: int = typer.Option(2, help="torch CPU threads."),
) -> None:
    """Annotators side by side in one run: value, entity+value and triple F1, calls, paragraphs per second."""
    from training.annotator_run import compare_annotators, comparison_markdown, write_comparison
    from training.annotators import load_annotator

    rows = compare_annotators([(str(d), load_annotator(d, threads=threads)) for d in annotator_dirs], references)
    if out is not None:
        write_comparison(rows, out)
    typer.echo(comparison_markdown(rows))


@app.command("speed")
def speed(
    annotator_dir: Path = typer.Option(..., "--annotator", help="A generative annotator directory."),
    reference: Path = typer.Option(..., "--reference", help="Documents to annotate (published JSON or our JSONL); their plain text is used."),
    documents: int = typer.Option(20, help="Annotate the first N documents."),
    drafts: list[int] = typer.Option([1, 16], "--draft", help="Input tokens verified per forward pass; repeatable (1: token by token)."),
    threads: int = typer.Option(2, help="torch CPU threads."),
) -> None:
    """Copy-verified decoding against token-by-token decoding: paragraphs per second, and that both write the same."""
    from training.annotators import load_annotator
    from training.corpus import read_documents
    from training.generative_annotator import decoding_speed

    annotator = load_annotator(annotator_dir, threads=threads)
    if annotator.kind != "generative":
        raise typer.BadParameter("decoding speed is measured for a generative annotator", param_hint="--annotator")
    texts = [d.plain for d in read_documents(reference)][:documents]
    typer.echo(json.dumps(decoding_speed(annotator, texts, drafts), indent=1))
