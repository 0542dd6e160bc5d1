"""`lmlm bench`."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, List, Optional

import typer

app = typer.Typer(help="Benchmarks: results written as JSON, Markdown and PNG.", no_args_is_help=True)


def _speed_out(name: str) -> Any:
    return typer.Option(Path(f"runs/bench/{name}"), "--out", help=f"Directory for {name}.json and {name}.md.")


def _speed_set(config: str, examples: str) -> Any:
    # Named, not derived: the decode benchmark's config module imports torch, which `lmlm --help` must not.
    return typer.Option(None, "--set", help=f"{config} field as key=value ({examples}, ...).")


def _run_speed(bench: ModuleType, config: type, out: Path, overrides: Optional[List[str]]) -> None:
    from tools.settings import load_settings

    typer.echo(bench.markdown(bench.run(load_settings(config, None, overrides or []), out)))


@app.command("train")
def train_speed(out: Path = _speed_out("train_speed"),
                overrides: Optional[List[str]] = _speed_set("TrainSpeedConfig", "preset, steps, rounds, data")) -> None:
    """Training tokens/s of the masked-loss trainer vs plain TRL SFT, same model and data."""
    from benchmarks import train_speed as bench

    _run_speed(bench, bench.TrainSpeedConfig, out, overrides)


@app.command("decode")
def decode_speed(out: Path = _speed_out("decode_speed"),
                 overrides: Optional[List[str]] = _speed_set("DecodeSpeedConfig", "preset, context_tokens, period")) -> None:
    """Interleaved decoding vs HF generate, vs re-encoding after each lookup, and batch 8 vs batch 1."""
    from benchmarks import decode_speed as bench

    _run_speed(bench, bench.DecodeSpeedConfig, out, overrides)


@app.command("kb")
def kb_lookup(
    out: Path = typer.Option(Path("runs/bench/kb"), "--out", help="Directory for kb_lookup.json and kb_lookup.md."),
    sizes: str = typer.Option("10000,100000", help="Comma-separated store sizes (triples)."),
    million: bool = typer.Option(False, "--million", help="Also run 1,000,000 triples (the index build takes a long while on CPU)."),
    queries: int = typer.Option(500, help="Timed lookups of each kind per size."),
    world_entities: int = typer.Option(
        2000, help="Entities of the generated world written as a published database.json and imported with "
        "`lmlm kb import` (0: skip that run)."),
    threads: int = typer.Option(1, help="torch threads for embedding (1 on a shared machine)."),
    backends: str = typer.Option("sqlite", help="Comma-separated: sqlite, postgresql (a namespace of its own in --pg-url, "
                                 "removed afterwards)."),
    pg_url: Optional[str] = typer.Option(None, "--pg-url", envvar="LMLM_BENCH_PG_URL",
                                         help="PostgreSQL database for the postgresql backend."),
    index_limit: int = typer.Option(100_000, help="Largest size whose semantic index is built (larger: entity policy only)."),
    index_workers: int = typer.Option(1, min=1, help="Processes embedding the index build (each one torch thread; "
                                       "on a machine others share, one per idle core)."),
    seed: int = typer.Option(0),
) -> None:
    """Knowledge base: the entity-first and the published read policy side by side (exact, paraphrased relation,
    typo'd entity, unknown entity, absent relation: rates with 95 % intervals, p50/p99 latency), plus SQL insert
    and index-build throughput."""
    from benchmarks.kb_lookup import NAME, run

    try:
        counts = [int(s.replace("_", "")) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--sizes must be integers separated by commas, got {sizes!r}") from None
    chosen = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = set(chosen) - {"sqlite", "postgresql"}
    if unknown or not chosen:
        raise typer.BadParameter(f"--backends takes sqlite and/or postgresql, got {backends!r}")
    if "postgresql" in chosen and not pg_url:
        raise typer.BadParameter("--backends postgresql needs --pg-url (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    run(out, [*counts, *([1_000_000] if million else [])], queries=queries, seed=seed, world_entities=world_entities,
        threads=threads, backends=chosen, pg_url=pg_url, index_limit=index_limit, index_workers=index_workers,
        progress=lambda step: typer.echo(f"kb bench: {step}", err=True))
    typer.echo((out / f"{NAME}.md").read_text())


def _run_bench(name: str, run_dir: Path, overrides: Optional[List[str]], seeds: int = 1) -> None:
    from benchmarks.run_all import BenchConfig, run_benchmark
    from tools.settings import load_settings

    typer.echo(run_benchmark(name, run_dir, load_settings(BenchConfig, None, overrides or []), seeds).read_text())


_RUN = typer.Option(..., "--run", help="Run directory with lmlm/, baseline/, kb.sqlite and world/ (what `lmlm demo` writes).")
_SET = typer.Option(None, "--set", help="BenchConfig field as key=value (tofu_questions, unlearn_steps, cloze_items, ...).")


@app.command("tofu")
def tofu(run: Path = _RUN, overrides: Optional[List[str]] = _SET) -> None:
    """TOFU forgetting: LMLM row deletion vs gradient ascent / difference / NPO on the baseline -> RUN/bench/tofu.*"""
    _run_bench("tofu", run, overrides)


@app.command("factscore")
def factscore(run: Path = _RUN, overrides: Optional[List[str]] = _SET) -> None:
    """FactScore-style precision of bios: LMLM, LMLM with the database off, baseline -> RUN/bench/factscore.*"""
    _run_bench("factscore", run, overrides)


@app.command("cloze")
def cloze(run: Path = _RUN, overrides: Optional[List[str]] = _SET) -> None:
    """T-REx-style cloze (hit@5, token precision@1): LMLM, DB off, baseline -> RUN/bench/cloze.*"""
    _run_bench("cloze", run, overrides)


@app.command("all")
def all_benchmarks(
    run: Path = _RUN,
    overrides: Optional[List[str]] = _SET,
    seeds: int = typer.Option(1, "--seeds", min=1, help="Repeat with item-sampling seeds seed..seed+N-1 "
                              "(RUN/bench/seed-<k>/) and report each claim over them (claims_over_seeds.md)."),
) -> None:
    """FactScore, cloze, TOFU forgetting and abstention, then RUN/bench/report.md with the claims checked."""
    _run_bench("all", run, overrides, seeds)
