"""Settings as dataclasses with help texts: the one configuration path of every package.

A configurable thing is a dataclass whose fields carry ``metadata={"help": ...}``
(and, where an environment variable may set one, ``"env": NAME``). From that one
declaration come

- :func:`load_settings`: defaults < a YAML file < the environment < ``key=value``
  overrides (values read as YAML) < typed values a caller already holds; an
  unknown name is refused, naming the file, so a typo never runs with a silent default;
- :func:`settings_help`: each field with its default and help text, for ``--help``;
- the command line's options (``lmlm_agent.cli.options`` derives them from the fields).

    config = load_settings(ServerConfig, "run/server.yaml", ["max_batch=4"], {"semantic": True})

This module sits at the bottom (``tools/``) so that the runtime, training and the
benchmarks all configure themselves the same way.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")  # a settings dataclass


def field_help(f: dataclasses.Field) -> str:
    """A field's help text; every settings field must have one."""
    return f.metadata["help"]


def shown_default(f: dataclasses.Field) -> str | None:
    """A field's default as ``--help`` shows it; None for one computed when the settings are made (a
    ``default_factory``, which may read the environment, e.g. an API key, and must not be printed)."""
    return None if f.default is dataclasses.MISSING or f.default is None else str(f.default)


def settings_help(cls: type, skip: Sequence[str] = ()) -> str:
    """``name (default): help`` for every field of ``cls`` but ``skip``, as the ``--help`` of a ``--set`` option lists them."""
    lines = [f"{f.name}{'' if shown_default(f) is None else f' ({shown_default(f)})'}: {field_help(f)}"
             for f in dataclasses.fields(cls) if f.name not in skip]
    return "Settings for --set key=value:\n\n" + "\n\n".join(lines)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: value}``, each value read as YAML (``4`` an int, ``true`` a bool, ``null`` None)."""
    import yaml

    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        values[key.strip()] = yaml.safe_load(raw)
    return values


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML settings file holds; an unreadable file or one that is not a mapping is a ``ValueError`` naming it."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not readable YAML ({' '.join(str(exc).split())})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def load_settings(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    *,
    coerce: bool = True,
) -> C:
    """``cls`` from its defaults, then the YAML file ``path``, the environment (fields with ``"env"`` metadata),
    the ``key=value`` ``overrides`` and last ``values`` (typed, e.g. command-line options; None there: not given).

    ``coerce`` fixes what YAML reads loosely (``5e-4`` is a string to it, ``1`` an int where a float is
    meant); without it a value of the wrong type is left for the dataclass to refuse (a server's
    settings are checked as written: :func:`check_types`). Errors name the file they came from.
    """
    where = f"{path}: " if path is not None else ""
    merged: dict[str, Any] = read_settings_file(path) if path is not None else {}
    known = [f.name for f in dataclasses.fields(cls)]
    merged.update({f.name: os.environ[f.metadata["env"]] for f in dataclasses.fields(cls)
                   if f.metadata.get("env") and os.environ.get(f.metadata["env"])})
    merged.update(parse_overrides(overrides))
    unknown = sorted(set(map(str, merged)) - set(known))
    if unknown:
        raise ValueError(f"{where}unknown {cls.__name__} keys: {', '.join(unknown)} (known: {', '.join(known)})")
    merged.update({k: v for k, v in (values or {}).items() if v is not None})
    if coerce:
        hints = typing.get_type_hints(cls)
        merged = {k: _coerce(v, hints[k], k) for k, v in merged.items()}
    try:
        return cls(**merged)
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    # YAML reads "5e-4" as a string and "1" as an int where a float is meant: fix the obvious cases.
    if value is None:
        return None
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = [t for t in (typing.get_args(hint) if union else (hint,)) if t is not type(None)]
    # A parametrised container (list[Path]) is checked by its class; its items are the caller's.
    classes = [typing.get_origin(t) or t for t in kinds]
    if any(isinstance(c, type) and isinstance(value, c) and not (c is int and isinstance(value, bool)) for c in classes):
        return value
    for t in kinds:
        if t in (int, float, str, Path):
            try:
                return t(value)
            except (TypeError, ValueError):
                continue
    if any(typing.get_origin(t) is typing.Literal for t in kinds):
        return value  # a choice among names: the dataclass checks it and says what the choices are
    raise ValueError(f"{key}: {value!r} is not a {hint}")


def check_types(settings: Any) -> None:
    """Each field of a settings dataclass holds its declared type as written (bool is no int here), and an
    integer is at least 1: for settings a service checks at start-up rather than coerce."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value, hint = getattr(settings, f.name), hints[f.name]
        if typing.get_origin(hint) is dict:
            if not (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
                # The values may be secrets (tokens): the message names the field and the shape, never the values.
                raise ValueError(f"{f.name} must be a mapping of strings, got a {type(value).__name__}")
            continue
        allowed = typing.get_args(hint) or (hint,)
        ok = any(
            (value is None and t is type(None))
            or (t is bool and isinstance(value, bool))
            or (t is int and isinstance(value, int) and not isinstance(value, bool))
            or (t is str and isinstance(value, str))
            for t in allowed
        )
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"{f.name} must be {names}, got {value!r} ({type(value).__name__})")
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError(f"{f.name} must be at least 1, got {value}")


__all__ = ["check_types", "field_help", "load_settings", "parse_overrides", "read_settings_file", "settings_help", "shown_default"]
