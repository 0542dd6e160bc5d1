"""Errors a user can fix (a bad URL, file or setting) as one line; anything else stays a traceback.

The `lmlm` front door (:class:`FrontDoor`) catches what a command raises and, for
the known kinds below, prints ``error: <what> : <why>`` and exits with status 2.
``LMLM_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import os
import re
import sys
from types import TracebackType
from typing import Any

import typer
from typer.core import TyperGroup

DEBUG_ENV = "LMLM_DEBUG"
EXIT_USER_ERROR = 2
# The library calls that open what a user named, and the argument that names it: an error raised under
# one of them is reported with that name (the URL, path or index location the user gave).
OPENED = {
    ("store.py", "make_engine"): ("database", "db"),
    ("store.py", "open_sql_store"): ("database", "db"),
    ("backends.py", "open_store"): ("database", "db"),
    ("index.py", "make_client"): ("semantic index", "location"),
}
DATABASE_HINT = "give a SQLite file path, a postgresql:// URL, memory:// or an http(s):// lmlm serve"


def _user_error_types() -> tuple[type[BaseException], ...]:
    """The error kinds bad input raises; a library's are only looked up when it is already imported."""
    kinds: list[type[BaseException]] = [OSError, ValueError]
    for module, name in (("sqlalchemy.exc", "SQLAlchemyError"), ("yaml", "YAMLError"),
                         ("chromadb.errors", "ChromaError"), ("sqlite3", "Error")):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return tuple(kinds)


def _opened(tb: TracebackType | None) -> tuple[str, str, str] | None:
    """(kind, the name the user gave, function) of the innermost library call that was opening something."""
    found = None
    while tb is not None:
        code = tb.tb_frame.f_code
        key = (os.path.basename(code.co_filename), code.co_name)
        if key in OPENED and os.path.basename(os.path.dirname(code.co_filename)) == "tools":
            kind, argument = OPENED[key]
            value = tb.tb_frame.f_locals.get(argument)
            if value is not None:
                found = (kind, str(value), code.co_name)
        tb = tb.tb_next
    return found


def hide_password(text: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def explain(exc: BaseException) -> str | None:
    """One line saying what was wrong and with what, or None when ``exc`` is not a user's error."""
    if isinstance(exc, BrokenPipeError):  # output piped into `head`: click ends quietly on its own
        return None
    opened = _opened(exc.__traceback__)
    # A missing database driver is a bad URL (mysql://...), not a broken installation.
    if not isinstance(exc, _user_error_types()) and not (isinstance(exc, ImportError) and opened):
        return None
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    reason = re.sub(r"\s*\(Background on this error at: \S+\)", "", " ".join(first.split())) or type(exc).__name__
    if isinstance(exc, ImportError):
        reason = f"no driver for this database ({reason})"
    if opened is None:
        return hide_password(reason)
    kind, name, where = opened
    if where == "make_engine" and not isinstance(exc, OSError):  # the URL itself was not understood
        reason = f"{reason}; {DATABASE_HINT}"
    if "readonly database" in reason:
        reason = f"{reason} (SQLite writes a journal beside the file: its directory must be writable)"
    return hide_password(reason if name in reason else f"{kind} {name}: {reason}")


class FrontDoor(TyperGroup):
    """The `lmlm` group: a user's error ends the command with one ``error:`` line and exit status 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = None if os.environ.get(DEBUG_ENV) else explain(exc)
            if message is None:
                raise
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None


__all__ = ["FrontDoor", "explain", "hide_password", "DEBUG_ENV"]
