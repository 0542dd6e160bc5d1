"""`lmlm annotate`."""

from __future__ import annotations

import typer

app = typer.Typer(help="Annotate text with lookup calls and score an annotator against a teacher.", no_args_is_help=True)
