"""Annotated documents: our JSONL and the published LMLM annotation JSON, read the same way."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from lmlm_agent.format import legacy_to_special, strip_calls


@dataclass
class AnnotatedDocument:
    """``annotated`` is in the special-token form; ``plain`` is the text without calls.

    ``exact`` says whether stripping the calls gives back ``plain`` character for
    character (the published teacher sometimes edited punctuation as it annotated).
    """

    id: str
    annotated: str
    plain: str
    source: str = ""
    dropped_calls: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return strip_calls(self.annotated) == self.plain

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.annotated, "plain": self.plain, "source": self.source}


def load_lmlm_annotations(path: str | Path) -> list[AnnotatedDocument]:
    """The published format: ``{"metadata", "examples": [{"text", "annotated_text", ...}]}``."""
    path = Path(path)
    data = json.loads(path.read_text())
    examples = data["examples"] if isinstance(data, dict) else data
    docs = []
    for i, ex in enumerate(examples):
        conv = legacy_to_special(ex.get("annotated_text") or "")
        ids = ex.get("original_dataset_ids") or []
        meta = {k: v for k, v in ex.items() if k not in ("text", "annotated_text")}
        docs.append(
            AnnotatedDocument(
                id=f"{path.stem}:{i}" if not ids else f"{path.stem}:{ids[0]}",
                annotated=conv.text,
                plain=ex.get("text") or "",
                source=str(path.name),
                dropped_calls=len(conv.dropped),
                meta=meta,
            )
        )
    return docs


def read_documents(path: str | Path) -> list[AnnotatedDocument]:
    """Our JSONL (``{"id", "text"}``, text annotated in either call form) or the published JSON."""
    path = Path(path)
    if path.suffix == ".json":
        return load_lmlm_annotations(path)
    docs = []
    for n, row in enumerate(iter_jsonl(path)):
        conv = legacy_to_special(row["text"])
        docs.append(
            AnnotatedDocument(
                id=str(row.get("id", n)),
                annotated=conv.text,
                plain=row.get("plain") or strip_calls(conv.text),
                source=row.get("source", path.name),
                dropped_calls=len(conv.dropped),
            )
        )
    return docs


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any] | AnnotatedDocument]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            obj = row.to_json() if isinstance(row, AnnotatedDocument) else row
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


__all__ = ["AnnotatedDocument", "load_lmlm_annotations", "read_documents", "iter_jsonl", "write_jsonl"]
