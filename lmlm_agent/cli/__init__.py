"""The `lmlm` command line: the front door. Sub-commands import their heavy dependencies lazily.

A bad URL, file or setting ends any command with one line, ``error: ...``, and exit
status 2 (:mod:`lmlm_agent.cli.errors`); ``LMLM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer

from lmlm_agent.cli import annotate, bench, demo, evaluate, kb, serve, teacher, tofu, train
from lmlm_agent.cli.errors import FrontDoor

app = typer.Typer(
    cls=FrontDoor,
    help="lmlm: train, serve, audit and benchmark language models that look their facts up in a database.",
    epilog="A bad URL, file or setting is one 'error:' line (exit status 2); LMLM_DEBUG=1 shows the traceback.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(kb.app, name="kb")
app.add_typer(annotate.app, name="annotate")
app.add_typer(teacher.app, name="teacher")
app.add_typer(train.app, name="train")
app.add_typer(evaluate.app, name="eval")
app.add_typer(bench.app, name="bench")
app.command("demo")(demo.demo)
app.command("chat")(serve.chat)
app.command("serve")(serve.serve)
app.command("tofu")(tofu.tofu)


def main() -> None:
    try:
        app()
    finally:
        close_process_group()


def close_process_group() -> None:
    """End a distributed run's process group before the interpreter exits (under `accelerate launch`).

    Left to interpreter exit, the group's gloo threads are destroyed while still joinable and the
    process aborts ("terminate called without an active exception") after its work is done and saved.
    """
    torch = sys.modules.get("torch")  # never import torch here: `lmlm --help` stays light
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
