"""Knowledge-base files written in the runtime's call syntax, for `lmlm kb import` and `lmlm kb export`.

What needs :mod:`lmlm_agent.format` lives here, above the knowledge layer
(:mod:`tools.io` reads and writes the plain formats, JSONL triples and the
published database JSON):

- :func:`detect_format`: which reader a file needs (``--format auto``);
- :func:`annotated_rows`: the triples of annotated text, LMLM calls, legacy
  ``[dblookup(...)]`` calls or MemLLM reads and writes;
- :func:`export_memllm`: a namespace as MemLLM memory writes, one a line.

The store and the format parser are imported inside the functions: the CLI reads
:data:`FORMATS` while it builds ``lmlm --help``, which must stay fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from tools import KnowledgeStore
    from tools.io import Loaded

FORMATS = ("auto", "jsonl", "lmlm-db", "annotated")


class FormatError(ValueError):
    """The file's format is not one `lmlm kb import` reads, or the one asked for is unknown."""


def detect_format(path: Path, fmt: str) -> tuple[str, Any]:
    """The format of ``path`` and, for annotated JSON, the parsed document (a database JSON is streamed, never parsed whole)."""
    if fmt not in FORMATS:
        raise FormatError(f"--format must be one of {', '.join(FORMATS)}")
    from tools.io import sniff_json

    kind = fmt
    if fmt == "auto" and path.suffix == ".json":
        kind = sniff_json(path)
        if kind is None:
            raise FormatError(f"{path.name}: JSON is neither an LMLM database nor annotated examples; pass --format")
    elif fmt == "auto" and path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), "{}")
        try:
            item = json.loads(first)
        except json.JSONDecodeError:
            return "jsonl", None  # the reader reports the bad line
        kind = "annotated" if isinstance(item, dict) and _text_of(item) is not None else "jsonl"
    elif fmt == "auto":
        kind = "annotated"
    data = json.loads(path.read_text(encoding="utf-8")) if kind == "annotated" and path.suffix == ".json" else None
    return kind, data


_TEXT_FIELDS = ("text", "annotated", "annotated_text")


def _text_of(item: dict) -> Optional[str]:
    return next((item[k] for k in _TEXT_FIELDS if isinstance(item.get(k), str)), None)


def _documents(path: Path, data: Any, loaded: Loaded) -> Iterator[tuple[str, str]]:
    """(document id, annotated text) from the published annotations JSON, our JSONL, or a plain text file.

    Documents without a text are recorded in ``loaded.rejected`` so the import report shows them.
    """
    from tools.io import Rejection

    if isinstance(data, dict) and isinstance(data.get("examples"), list):
        for n, ex in enumerate(data["examples"]):
            if isinstance(ex, dict) and isinstance(ex.get("annotated_text"), str):
                yield str(n), ex["annotated_text"]
            else:
                loaded.rejected.append(Rejection(where=f"{path.name}#{n}", reason="example without annotated_text"))
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    loaded.rejected.append(Rejection(where=f"{path.name}:{lineno}", reason=f"invalid JSON: {exc.msg}"))
                    continue
                text = _text_of(item) if isinstance(item, dict) else None
                if text is None:
                    loaded.rejected.append(Rejection(where=f"{path.name}:{lineno}", reason=f"no {'/'.join(_TEXT_FIELDS)} field"))
                else:
                    yield str(item.get("id", lineno)), text
    else:
        yield path.stem, path.read_text(encoding="utf-8")


def annotated_rows(path: Path, data: Any, source: Optional[str]) -> Loaded:
    """Triples of the complete calls in annotated text.

    Legacy ``[dblookup(...)]`` calls are converted first; MemLLM text gives its writes
    (``({MEM_WRITE--> e>>r>>v})``) and its answered object reads as triples.
    """
    from lmlm_agent.format import extract_triples, legacy_to_special, memllm_to_special
    from tools.io import Loaded, Rejection

    loaded = Loaded()
    for doc_id, text in _documents(path, data, loaded):
        where = f"{path.name}#{doc_id}"
        triples: list[tuple[str, str, str]] = []
        if "[dblookup(" in text:
            conversion = legacy_to_special(text)
            text = conversion.text
            loaded.rejected.extend(Rejection(where=where, reason=f"unreadable legacy call: {raw[:80]}") for raw in conversion.dropped)
        if "({MEM_" in text:
            conversion, triples = memllm_to_special(text)
            text = conversion.text
            loaded.rejected.extend(Rejection(where=where, reason=f"MemLLM block with no LMLM triple: {raw[:80]}")
                                   for raw in conversion.dropped)
        for triple in [*extract_triples(text), *triples]:
            loaded.take(where, triple, source or where)
    return loaded


def export_memllm(store: KnowledgeStore, path: Path) -> int:
    """One ``({MEM_WRITE--> e>>r>>v})`` per fact; a fact the dialect cannot spell is refused before anything is written."""
    from lmlm_agent.format import render_memllm_write
    from tools import InvalidInput

    facts = list(store.iter_facts())
    unspellable = [f for f in facts if render_memllm_write(f.entity, f.relation, f.value) is None]
    if unspellable:
        f = unspellable[0]
        raise InvalidInput(f"{len(unspellable)} facts hold '>>', ';' or '}})', which MemLLM writes cannot carry, e.g. "
                           f"#{f.id} ({f.entity!r}, {f.relation!r}, {f.value!r}); export them as jsonl")
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(render_memllm_write(f.entity, f.relation, f.value) + "\n" for f in facts)
    return len(facts)


__all__ = ["FORMATS", "FormatError", "annotated_rows", "detect_format", "export_memllm"]
