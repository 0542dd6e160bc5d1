"""`lmlm demo`: the end-to-end demo on the generated world (what `make demo` runs).

Parses the options and calls ``benchmarks.demo.DemoRun``; the stages and the report live there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer

SIZE_HELP = (
    "How big: tiny (about a minute: checks the plumbing, the models barely learn), small (the default: "
    "400 entities, within 15 minutes on 2 CPU cores), medium (850 entities, the d=256 model, 5x the training tokens), large (the published "
    "176M model on a 3000-entity world: use --device cuda)."
)


def demo(
    size: str = typer.Option("small", "--size", help=SIZE_HELP),
    device: str = typer.Option(
        "auto", "--device", help="auto: a GPU when one is visible, else CPU; cpu: never a GPU; cuda: require one."
    ),
    run_dir: Optional[Path] = typer.Option(
        None, "--run-dir", help="Where the run goes (default runs/demo-<UTC time>); `lmlm chat/serve --run` read it."
    ),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads."),
    seeds: int = typer.Option(
        1, "--seeds", min=1, help="Repeat pretraining, references and benchmarks with this many seeds and report the "
        "claims over them (each further seed costs about 60 % of a small demo: ~6 min on 2 idle cores)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run in --run-dir: its finished annotator, corpus and models are kept."
    ),
) -> None:
    """Run everything end to end on a generated world and write RUN/report.md with plots.

    world -> offline teacher (OpenAI API on 127.0.0.1) -> distilled annotator -> annotated corpus + knowledge base -> LMLM and baseline pretraining -> retain models and an LMLM without abstentions (the references) -> perplexity, FactScore, cloze, DB-off, forgetting (row deletion vs gradient unlearning), abstention -> more seeds -> memory writes -> report with the claims table.
    """
    from rich.console import Console

    from benchmarks.demo import SIZES, DemoRun, SettingsMismatch
    from benchmarks.demo_report import headline_table

    console = Console(highlight=False)

    if size not in SIZES:
        raise typer.BadParameter(f"--size must be one of {', '.join(SIZES)}")
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("--device must be auto, cpu or cuda")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch loads: the trainer then never sees a GPU
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise typer.BadParameter("--device cuda, but torch sees no CUDA device")
    if resume and run_dir is None:
        raise typer.BadParameter("--resume needs the --run-dir of the interrupted run")
    run = run_dir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S", time.gmtime())
    console.print(f"[bold]lmlm demo[/bold] size={size} -> {run}")
    started = time.perf_counter()
    pipeline = DemoRun(run, size, device=None if device == "auto" else device, threads=threads,
                       announce=lambda line: console.print(line, markup=False), seed_count=seeds)
    try:
        report = pipeline.run(resume=resume)
    except SettingsMismatch as exc:
        raise typer.BadParameter(str(exc)) from None
    minutes = (time.perf_counter() - started) / 60
    console.rule("done")
    console.print(f"Demo finished in {minutes:.1f} min. Report: [bold]{report}[/bold]\n")
    console.print(headline_table(pipeline.results), markup=False, soft_wrap=True)
    console.print(
        "\nTalk to the model, with citations for every looked-up fact:\n"
        f"  lmlm chat --run {run}\n"
        f"  lmlm serve --run {run}    # OpenAI-compatible API on http://127.0.0.1:8000/v1\n",
        markup=False,
        soft_wrap=True,
    )
