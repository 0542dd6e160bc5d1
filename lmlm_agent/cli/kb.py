"""`lmlm kb`."""

from __future__ import annotations

import typer

app = typer.Typer(help="The knowledge base: import, add, get, delete, stats, export, rebuild-index.", no_args_is_help=True)
