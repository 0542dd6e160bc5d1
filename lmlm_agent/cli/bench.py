"""`lmlm bench`."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks: results written as JSON, Markdown and PNG.", no_args_is_help=True)
