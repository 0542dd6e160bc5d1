"""Command-line options derived from settings dataclasses (:mod:`tools.settings`), so a field's help text,
default and environment variable are written once, on the field.

    max_batch: Optional[int] = setting(ServerConfig, "max_batch")       # --max-batch, help from the field
    overrides: Optional[List[str]] = set_option(ServerConfig)           # --set key=value, any field

An option made by :func:`setting` is None when not given, so the config file, the
environment or the field's default decides (:func:`tools.settings.load_settings`
drops None values). :func:`document_settings` lists every field under a command's
``--help``, for ``--set``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer

from tools.settings import field_help, settings_help, shown_default

F = TypeVar("F", bound=Callable[..., Any])


def setting(cls: type, name: str, *decls: str, **extra: Any) -> Any:
    """A typer option for field ``name`` of ``cls`` (default spelling ``--field-name``; ``decls`` to spell it
    otherwise, e.g. ``"--semantic/--exact"``); ``extra`` goes to ``typer.Option`` (``envvar``, ``min``, ...)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    envvar = extra.pop("envvar", f.metadata.get("env"))
    default = shown_default(f)
    return typer.Option(
        None, *(decls or (f"--{name.replace('_', '-')}",)), help=field_help(f), show_default=default or False,
        envvar=envvar, show_envvar=envvar is not None, **extra,
    )


def set_option(cls: type) -> Any:
    """``--set key=value`` (repeatable): any field of ``cls``; pair it with :func:`document_settings`."""
    return typer.Option(None, "--set", help=f"Any {cls.__name__} field as key=value (the value read as YAML), as listed above; repeatable.")


def document_settings(cls: type, skip: Sequence[str] = ()) -> Callable[[F], F]:
    """Append the fields of ``cls`` (but ``skip``), their defaults and help texts to a command's ``--help``."""

    def decorate(command: F) -> F:
        command.__doc__ = f"{inspect.cleandoc(command.__doc__ or '')}\n\n{settings_help(cls, skip)}"
        return command

    return decorate


__all__ = ["document_settings", "set_option", "setting"]
