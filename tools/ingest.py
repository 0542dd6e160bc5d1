"""Memory writes: new text -> an annotator (any kind) -> triples in the knowledge base, with provenance.

A running agent reads the store on every lookup, so facts ingested here are
answered at once, with no retraining (MemLLM's memory writes, done by the annotator).
The annotator is duck-typed, so this knowledge-layer module imports no model code;
``lmlm kb ingest`` and the demo's memory probe call it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from tools.schema import InvalidInput


@dataclass
class IngestReport:
    documents: int = 0
    calls: int = 0
    written: int = 0
    invalid: list[str] = field(default_factory=list)  # triples the store refused, with its reason
    facts: list[dict[str, Any]] = field(default_factory=list)  # what was written: fact_id, entity, relation, value, source

    def to_json(self) -> dict[str, Any]:
        return {"documents": self.documents, "calls": self.calls, "written": self.written,
                "invalid": self.invalid, "facts": self.facts}


def ingest_texts(annotator: Any, store: Any, docs: Sequence[tuple[str, str]], namespace: str | None = None) -> IngestReport:
    """Annotate each ``(doc_id, text)`` and write every call's triple; provenance ``<doc_id>@<character offset>``.

    ``annotator`` is any kind (:class:`training.annotators.Annotator`: teacher, extractive, generative; load
    one with ``load_annotator(dir)``), or anything with ``annotate(texts) -> [result with .calls = [(offset,
    LookupCall)]]``. A triple the store refuses (too long, a call token
    inside) is reported, not fatal: the rest of the document is still stored.
    """
    report = IngestReport(documents=len(docs))
    for (doc_id, _), result in zip(docs, annotator.annotate([t for _, t in docs])):
        for offset, call in result.calls:
            report.calls += 1
            source = f"{doc_id}@{offset}"
            try:
                fact = store.write(call.entity, call.relation, call.value or "", source, namespace=namespace)
            except InvalidInput as exc:
                report.invalid.append(f"{call.entity} / {call.relation}: {exc}")
                continue
            report.written += 1
            report.facts.append({"fact_id": fact.id, "entity": fact.entity, "relation": fact.relation,
                                 "value": fact.value, "source": source})
    return report


def read_texts(path: Path) -> list[tuple[str, str]]:
    """``(doc_id, text)`` from a JSONL file (``{"id", "text"}``) or a plain text file (paragraphs split at blank lines)."""
    if path.suffix == ".jsonl":
        rows: Iterable[dict] = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        return [(f"{path.name}#{row.get('id', n)}", str(row["text"])) for n, row in enumerate(rows)]
    paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
    return [(f"{path.name}#p{n}", p) for n, p in enumerate(paragraphs) if p]


__all__ = ["IngestReport", "ingest_texts", "read_texts"]
