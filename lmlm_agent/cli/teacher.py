"""`lmlm teacher`."""

from __future__ import annotations

import typer

app = typer.Typer(help="The teacher LLM: an offline OpenAI-compatible endpoint for annotation.", no_args_is_help=True)
