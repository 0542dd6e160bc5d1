"""`lmlm kb`: the knowledge base from the shell (import, add, get, delete, multi-valued, stats, check, export, rebuild-index).

Every command takes ``--db`` (a SQLite path or a database URL), ``--index`` (a
directory, ``:memory:``, an ``http://`` Chroma server, or ``off``) and
``--namespace``. Errors print one clear line and exit with status 1. ``LMLM_KB_INDEX_WAIT_S``
sets how long a command waits for another process using the same local index directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer

from lmlm_agent.cli.options import setting
from lmlm_agent.kb_files import FORMATS
from tools.lookup import LookupPolicy

if TYPE_CHECKING:
    from rich.console import Console

    from tools import KnowledgeStore, SQLKnowledgeStore

app = typer.Typer(
    help="The knowledge base: import, add, get, delete, multi-valued, stats, check, export, rebuild-index.", no_args_is_help=True
)

DEFAULT_DB = "runs/kb/kb.sqlite"
DB = typer.Option(DEFAULT_DB, "--db", envvar="LMLM_KB_DB", help="SQLite file or database URL (postgresql://...).")
INDEX = typer.Option(
    None, "--index", envvar="LMLM_KB_INDEX",
    help="Semantic index: a directory, ':memory:', an http(s):// Chroma server, or 'off'. Default: <db>.chroma beside a SQLite file.",
)
NAMESPACE = typer.Option("default", "--namespace", "-n", help="Namespace (a hard boundary between knowledge bases).")
AS_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
INDEX_WAIT_ENV = "LMLM_KB_INDEX_WAIT_S"


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Expected failures (bad input, unreadable files, unreachable servers) become one red line and exit 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from tools import InvalidInput

    try:
        yield
    except (InvalidInput, OSError, json.JSONDecodeError, UnicodeDecodeError, SQLAlchemyError) as exc:
        from lmlm_agent.cli.errors import explain

        message = explain(exc) or type(exc).__name__  # names the database or index it was opening
        _console().print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
        raise typer.Exit(1) from None


def _open(db: str, index: Optional[str], namespace: str, **kwargs: Any) -> KnowledgeStore:
    import os

    from tools import open_store

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bar in command output
    off = index is not None and index.lower() in ("off", "none", "false", "no")
    if os.environ.get(INDEX_WAIT_ENV):
        try:
            kwargs.setdefault("index_wait_s", float(os.environ[INDEX_WAIT_ENV]))
        except ValueError:
            raise typer.BadParameter(f"{INDEX_WAIT_ENV} must be a number of seconds, got {os.environ[INDEX_WAIT_ENV]!r}") from None
    return open_store(db, index=False if off else index, namespace=namespace, **kwargs)


def _open_sql(db: str, index: Optional[str], namespace: str, **kwargs: Any) -> SQLKnowledgeStore:
    """A store this command needs SQL of (its semantic index, resumable imports, index checks)."""
    from tools import InvalidInput, SQLKnowledgeStore

    store = _open(db, index, namespace, **kwargs)
    if not isinstance(store, SQLKnowledgeStore):
        raise InvalidInput(f"{db}: this command works on a SQL store (a SQLite file or a postgresql:// URL)")
    return store


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=1, default=str))


# --------------------------------------------------------------------------- import


@app.command("import")
def import_(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL triples, LMLM database JSON, or annotated text (LMLM calls, legacy dblookup, or MemLLM reads and writes)."),
    fmt: str = typer.Option("auto", "--format", "-f", help=f"One of {', '.join(FORMATS)}."),
    source: Optional[str] = typer.Option(None, help="Provenance for rows without one (default: file and line/document)."),
    multi_valued: bool = typer.Option(
        True, "--multi-valued/--single-valued",
        help="A relation some entity has with several values in the file is declared multi-valued and every value kept "
        "(default); --single-valued keeps the last value of each (entity, relation).",
    ),
    resume: bool = typer.Option(
        True, "--resume/--restart",
        help="After an interrupted import of the same unchanged file into the namespace, skip the rows it stored "
        "(default); --restart reads them all again (they are upserts either way, nothing is doubled).",
    ),
    db: str = DB,
    index: Optional[str] = INDEX,
    namespace: str = NAMESPACE,
    as_json: bool = AS_JSON,
) -> None:
    """Import facts. Good rows are stored, bad ones listed; a known single-valued (entity, relation) gets the new
    value, a multi-valued one gets it added."""
    from lmlm_agent.kb_files import FormatError, annotated_rows, detect_format
    from tools.io import import_rows, scan_file

    console = _console()
    with _clear_errors():
        try:
            kind, data = detect_format(path, fmt)
        except FormatError as exc:
            raise typer.BadParameter(str(exc)) from None
        if kind == "annotated":
            loaded = annotated_rows(path, data, source)
            store = _open(db, index, namespace)
            embedding = " and embedding their keys" if store.describe()["index"] else ""
            with console.status(f"writing {len(loaded.rows):,} rows{embedding}"):
                report = import_rows(store, loaded.rows, loaded.rejected, namespace=namespace, detect_multi_valued=multi_valued)
        else:
            with console.status(f"reading {path.name} (counting rows, finding several-valued relations)"):
                scan = scan_file(path, kind, source)
            store = _open_sql(db, index, namespace)
            report = _import_with_progress(store, path, kind, scan, namespace, source, multi_valued, resume, console)
    if as_json:
        _print_json(report.model_dump())
        return
    console.print(
        f"[bold]{path.name}[/bold] ({kind}) -> namespace [cyan]{namespace}[/cyan]: read {report.read:,}, "
        f"inserted [green]{report.inserted:,}[/green], updated {report.updated:,}, unchanged {report.unchanged:,}, "
        f"duplicates {report.duplicates:,}, replaced values removed {report.removed:,}, "
        f"rejected [yellow]{report.rejected:,}[/yellow]"
    )
    if report.resumed_from:
        console.print(f"  resumed: the first {report.resumed_from:,} rows were stored by an interrupted import of this file")
    if report.multi_valued:
        console.print(f"  declared multi-valued (every value kept): {', '.join(report.multi_valued)}")
    for r in report.rejections:
        console.print(f"  [yellow]rejected[/yellow] {r.where}: {r.reason}", markup=True)
    if report.rejected > len(report.rejections):
        console.print(f"  ... and {report.rejected - len(report.rejections):,} more")


def _import_with_progress(store: SQLKnowledgeStore, path: Path, kind: str, scan: Any, namespace: str,
                          source: Optional[str], multi_valued: bool, resume: bool, console: Console) -> Any:
    """:func:`tools.io.import_file` behind a progress bar of rows written."""
    from tools.io import import_file

    what = "writing rows" + (" and embedding their keys" if store.index else "")
    with _progress_bar(what, scan.items) as advance:
        return import_file(store, path, kind, namespace=namespace, source=source, detect_multi_valued=multi_valued,
                           resume=resume, scan=scan, progress=advance)


@contextmanager
def _progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar with count and time left, on stderr (so ``--json`` stays clean); yields ``advance(n)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# --------------------------------------------------------------------------- add / get / delete


@app.command("add")
def add(
    entity: str = typer.Argument(...),
    relation: str = typer.Argument(...),
    value: str = typer.Argument(...),
    source: Optional[str] = typer.Option(None, help="Provenance, e.g. doc:12@340."),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="'add' (keep beside the other values) or 'replace' (the one value). "
        "Default: add for a relation declared multi-valued (`lmlm kb multi-valued`), else replace.",
    ),
    db: str = DB,
    index: Optional[str] = INDEX,
    namespace: str = NAMESPACE,
    as_json: bool = AS_JSON,
) -> None:
    """Add a fact: replaces the value of a known single-valued (entity, relation), adds one to a multi-valued one."""
    from tools.typed_tools import ToolError, write

    with _clear_errors():
        obs = write(_open(db, index, namespace), entity=entity, relation=relation, value=value, source=source,
                    **({"mode": mode} if mode is not None else {}))
    if isinstance(obs, ToolError):
        _console().print(f"[red]error:[/red] {obs.message}")
        raise typer.Exit(1)
    if as_json:
        _print_json(obs.model_dump(mode="json"))
        return
    f = obs.fact
    was = f" (was {obs.previous_value!r})" if obs.action == "updated" else ""
    _console().print(f"[green]{obs.action}[/green] #{f.id}: {f.entity} | {f.relation} = {f.value!r}{was}")


@app.command("get")
def get(
    entity: str = typer.Argument(...),
    relation: str = typer.Argument(...),
    policy: Optional[str] = setting(LookupPolicy, "name", "--policy"),
    entity_threshold: Optional[float] = setting(LookupPolicy, "entity_threshold"),
    entity_max_edits: Optional[int] = setting(LookupPolicy, "entity_max_edits"),
    relation_threshold: Optional[float] = setting(LookupPolicy, "relation_threshold"),
    relation_margin: Optional[float] = setting(LookupPolicy, "relation_margin"),
    relation_same: Optional[float] = setting(LookupPolicy, "relation_same"),
    relation_aliases: Optional[bool] = setting(LookupPolicy, "relation_aliases", "--relation-aliases/--no-relation-aliases"),
    threshold: Optional[float] = setting(LookupPolicy, "threshold"),
    fallback: Optional[str] = setting(LookupPolicy, "fallback"),
    relation_match: Optional[str] = typer.Option(
        None, help="entity policy: 'semantic' (relation names by meaning; needs only the embedder) or 'exact'. "
        "Default: semantic unless --index off."),
    db: str = DB,
    index: Optional[str] = INDEX,
    namespace: str = NAMESPACE,
    as_json: bool = AS_JSON,
) -> None:
    """Look a fact up, with provenance: every value, the entity and relation scores and the rule that decided.
    A miss prints 'unknown' (exit 0)."""
    from rich.table import Table

    from tools.settings import load_settings

    with _clear_errors():
        read_policy = load_settings(LookupPolicy, None, [], dict(
            name=policy, entity_threshold=entity_threshold, entity_max_edits=entity_max_edits,
            relation_threshold=relation_threshold, relation_margin=relation_margin, relation_same=relation_same,
            relation_aliases=relation_aliases, threshold=threshold, fallback=fallback))
        store = _open(db, index, namespace, read_only=True, policy=read_policy, relation_match=relation_match)
        result = store.read(entity, relation)
    if as_json:
        _print_json({**result.model_dump(), "fact_ids": result.fact_ids})
        return
    console = _console()
    style = "red" if result.match == "miss" else "green"

    def fmt(score: Optional[float]) -> str:
        return "-" if score is None else f"{score:.3f}"

    console.print(f"[{style}]{result.match}[/{style}] by rule [bold]{result.rule}[/bold] ({result.policy} policy): "
                  f"{result.entity} | {result.relation}  entity score {fmt(result.entity_score)}, "
                  f"relation score {fmt(result.relation_score)}, score {fmt(result.score)}")
    if not result.found:
        console.print(result.value)
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("fact", "value", "source"):
        table.add_column(col)
    for r in result.records:
        table.add_row(f"#{r.id}", r.value, r.source or "")
    console.print(table)


@app.command("multi-valued")
def multi_valued(
    relations: Optional[List[str]] = typer.Argument(None, help="Relations to declare; none: list the declared ones."),
    off: bool = typer.Option(False, "--off", help="Make these relations single-valued again (stored values are kept)."),
    db: str = DB,
    namespace: str = NAMESPACE,
) -> None:
    """Declare relations multi-valued in a namespace (a new value is added beside the others, not replacing them),
    or list the declared ones."""
    with _clear_errors():
        store = _open(db, "off", namespace)
        changed = store.declare_multi_valued(relations, multi_valued=not off) if relations else []
        declared = store.multi_valued()
    console = _console()
    if relations:
        console.print(f"{'single' if off else 'multi'}-valued now: {', '.join(changed) or 'nothing changed'}")
    console.print(f"multi-valued in namespace [cyan]{namespace}[/cyan]: {', '.join(declared) or 'none'}")


@app.command("delete")
def delete(
    fact_id: Optional[int] = typer.Option(None, "--id", help="Delete this row."),
    entity: Optional[str] = typer.Option(None, "--entity", "-e", help="Delete every row of this entity..."),
    relation: Optional[str] = typer.Option(None, "--relation", "-r", help="...or only this relation of it."),
    db: str = DB,
    index: Optional[str] = INDEX,
    namespace: str = NAMESPACE,
    as_json: bool = AS_JSON,
) -> None:
    """Forget facts and print the receipt: rows removed from SQL and the index, and re-lookups that miss them."""
    from rich.table import Table

    from tools import normalise_key

    with _clear_errors():
        receipt = _open(db, index, namespace).delete(fact_id=fact_id, entity=entity, relation=relation)
    if as_json:
        _print_json(receipt.model_dump(mode="json"))
        return
    console = _console()
    if not receipt.removed:
        console.print(f"nothing matched {receipt.selector} in namespace [cyan]{receipt.namespace}[/cyan]; nothing removed")
        return
    table = Table(title=f"removed {receipt.count} row(s) from namespace {receipt.namespace}", header_style="bold")
    for col in ("fact", "entity", "relation", "value", "in index", "re-lookup"):
        table.add_column(col)
    indexed = set(receipt.index_removed)
    relook = {r.query: r for r in receipt.relookups}
    for row in receipt.removed:
        after = relook.get(normalise_key(row.entity, row.relation))
        table.add_row(f"#{row.id}", row.entity, row.relation, row.value,
                      "removed" if row.id in indexed else "-",
                      "" if after is None else f"{after.match} ({after.rule}) {after.value!r}")
    console.print(table)
    verdict = "[green]verified[/green]" if receipt.verified else "[red]NOT verified[/red]"
    console.print(f"{verdict}: {receipt.sql_remaining} left in SQL, "
                  f"{'no index' if receipt.index_remaining is None else f'{receipt.index_remaining} left in the index'}")
    disk = receipt.disk
    if disk is not None:
        style = "green" if disk.clean else "red"
        console.print(f"[{style}]disk[/{style}]: {disk.files} file(s), {disk.bytes:,} bytes scanned; "
                      + ("no forgotten value, name or key found" if disk.clean else
                         "; ".join(f"{text!r} still in {', '.join(files)}" for text, files in disk.found.items())))
        if disk.held:
            console.print(f"  not searched (other rows still hold them): {', '.join(map(repr, disk.held))}")
    if not receipt.verified:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- stats / export / rebuild


@app.command("stats")
def stats(
    db: str = DB,
    index: Optional[str] = INDEX,
    as_json: bool = AS_JSON,
) -> None:
    """Rows per namespace in SQL and in the index (a difference means: run rebuild-index)."""
    from rich.table import Table

    with _clear_errors():
        store = _open_sql(db, index, "default")
        names = sorted(set(store.namespaces()) | set(store.index.namespaces() if store.index else []))
        rows = [
            {"namespace": ns, "facts": store.count(namespace=ns),
             "indexed": None if store.index is None else store.index.count(ns)}
            for ns in names
        ]
    if as_json:
        _print_json({"store": store.describe(), "namespaces": rows})
        return
    console = _console()
    info = store.describe()
    console.print(f"db [bold]{info['db']}[/bold]  index [bold]{info['index'] or 'off'}[/bold]")
    table = Table(header_style="bold")
    for col in ("namespace", "facts", "indexed"):
        table.add_column(col, justify="right" if col != "namespace" else "left")
    for r in rows:
        stale = r["indexed"] is not None and r["indexed"] != r["facts"]
        indexed = "-" if r["indexed"] is None else f"[yellow]{r['indexed']:,}[/yellow]" if stale else f"{r['indexed']:,}"
        table.add_row(r["namespace"], f"{r['facts']:,}", indexed)
    console.print(table if rows else "the store is empty")


@app.command("check")
def check(
    db: str = DB,
    index: Optional[str] = INDEX,
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Only this namespace (default: all)."),
    repair: bool = typer.Option(False, "--repair", help="Make the index agree with SQL (embed missing ids, remove stale ones)."),
    as_json: bool = AS_JSON,
) -> None:
    """Compare SQL and the semantic index: ids in SQL missing from the index, index ids without a row, and
    pending journal entries a crash left. Exit 1 when they disagree (and --repair was not given)."""
    from rich.table import Table

    with _clear_errors():
        store = _open_sql(db, index, namespace or "default")
        report = store.check_index(namespace=namespace, repair=repair)
    drift = any(r["missing"] or r["stale"] or r["pending"] for r in report)
    if as_json:
        _print_json({"namespaces": report, "consistent": not drift, "repaired": repair})
    else:
        table = Table(header_style="bold")
        columns = ["namespace", "facts", "indexed", "missing", "stale", "pending"] + (["added", "removed"] if repair else [])
        for col in columns:
            table.add_column(col, justify="left" if col == "namespace" else "right")
        for r in report:
            table.add_row(*(str(r[c]) if c == "namespace" else f"{r[c]:,}" for c in columns))
        console = _console()
        console.print(table if report else "the store is empty")
        if drift:
            console.print("[green]repaired[/green]" if repair else "[yellow]SQL and the index disagree[/yellow]: run `lmlm kb check --repair`")
        else:
            console.print("[green]consistent[/green]")
    if drift and not repair:
        raise typer.Exit(1)


@app.command("export")
def export(
    path: Path = typer.Argument(..., dir_okay=False, help="Output file."),
    fmt: str = typer.Option(
        "jsonl", "--format", "-f",
        help="'jsonl' (rows with provenance), 'lmlm-db' (published format) or 'memllm' (one MemLLM memory write per line).",
    ),
    db: str = DB,
    namespace: str = NAMESPACE,
) -> None:
    """Write a namespace's facts to a file (SQL is the truth; the index is not read). Each format re-imports with `lmlm kb import`."""
    from lmlm_agent.kb_files import export_memllm
    from tools.io import export_jsonl, export_lmlm_database

    writers = {"jsonl": export_jsonl, "lmlm-db": export_lmlm_database, "memllm": export_memllm}
    if fmt not in writers:
        raise typer.BadParameter(f"--format must be one of {', '.join(writers)}")
    with _clear_errors():
        path.parent.mkdir(parents=True, exist_ok=True)
        n = writers[fmt](_open(db, "off", namespace), path)
    _console().print(f"wrote {n:,} facts of namespace [cyan]{namespace}[/cyan] to {path} ({fmt})")


@app.command("rebuild-index")
def rebuild_index(
    db: str = DB,
    index: Optional[str] = INDEX,
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Only this namespace (default: all)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Embedding processes, each with one torch thread and its "
                                "own MiniLM. More than the free cores only adds waiting."),
) -> None:
    """Re-embed the semantic index from the SQL rows: built beside the live index and swapped in. A killed build
    continues where it stopped at the next rebuild or open; exact lookups keep working meanwhile."""
    with _clear_errors():
        store = _open_sql(db, index, namespace or "default")
        keys = sum(store.count(namespace=ns) for ns in ([namespace] if namespace else store.namespaces()))
        with _progress_bar("embedding keys", keys) as advance:
            done = store.rebuild_index(namespace, workers=workers, progress=advance)
    for ns, n in done.items():
        _console().print(f"namespace [cyan]{ns}[/cyan]: {n:,} keys indexed")
    if not done:
        _console().print("nothing to index")


# --------------------------------------------------------------------------- ingest (memory writes; issue 8)


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="Text to learn from: a .txt file (paragraphs split at blank lines) or JSONL of {id, text}."),
    run: Optional[Path] = typer.Option(None, "--run", help="A run directory: its annotator/ and kb.sqlite (not with --annotator or --db)."),
    annotator: Optional[Path] = typer.Option(None, "--annotator", help="Directory of an annotator of any kind (`lmlm annotate train --kind teacher/extractive/generative`)."),
    db: str = DB,
    index: Optional[str] = INDEX,
    namespace: str = NAMESPACE,
    as_json: bool = AS_JSON,
) -> None:
    """Extract facts from new text with an annotator (any kind) and store them, with provenance
    (<file>#<paragraph>@<offset>). A running agent or server answers from them at once, no retraining."""
    from rich.table import Table
    from transformers.utils import logging as hf_logging

    from tools.ingest import ingest_texts, read_texts
    from training.annotators import load_annotator

    hf_logging.disable_progress_bar()  # no weight-loading bar in the command's output

    if run is not None:
        typed = [flag for flag, name in (("--annotator", "annotator"), ("--db", "db"))
                 if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]  # typer's own enum, not click's
        if typed:
            raise typer.BadParameter(f"--run sets the annotator and the store ({run}/annotator, {run}/kb.sqlite); "
                                     f"drop --run or {' and '.join(typed)}")
        annotator, db = run / "annotator", str(run / "kb.sqlite")
    if annotator is None:
        raise typer.BadParameter("give --run DIR or --annotator DIR")
    with _clear_errors():
        docs = read_texts(path)
        report = ingest_texts(load_annotator(annotator), _open(db, index, namespace), docs, namespace=namespace)
    if as_json:
        _print_json(report.to_json())
        return
    table = Table(title=f"{report.written} fact(s) from {report.documents} paragraph(s) into namespace {namespace}",
                  header_style="bold")
    for col in ("fact", "entity", "relation", "value", "source"):
        table.add_column(col)
    for f in report.facts:
        table.add_row(f"#{f['fact_id']}", f["entity"], f["relation"], f["value"], f["source"])
    _console().print(table)
    for line in report.invalid:
        _console().print(f"[yellow]refused:[/yellow] {line}")
