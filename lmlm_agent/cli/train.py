"""`lmlm train`."""

from __future__ import annotations

import typer

app = typer.Typer(help="Pretrain an LMLM (values masked from the loss), the baseline, and fine-tune.", no_args_is_help=True)
