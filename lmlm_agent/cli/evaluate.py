"""`lmlm eval`."""

from __future__ import annotations

import typer

app = typer.Typer(help="Evaluate checkpoints: perplexity (static, dynamic, normalised) and masked-token loss.", no_args_is_help=True)
