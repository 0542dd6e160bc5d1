"""Agreement of an annotator with a reference (the teacher): precision, recall and F1 of calls.

Per document, the calls of both sides are normalised (lower case, ``_`` as a space,
whitespace collapsed) and matched as multisets on three keys: the value, the
(entity, value) pair and the (entity, relation, value) triple. Counts are summed
over documents (micro average). Where a call sits in the text does not matter.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lmlm_agent.format import LookupCall, list_calls
from tools.schema import normalise_text

KEYS = ("value", "entity_value", "triple")


def call_key(call: LookupCall, key: str) -> tuple[str, ...]:
    e, r, v = normalise_text(call.entity), normalise_text(call.relation), normalise_text(call.value or "")
    return {"value": (v,), "entity_value": (e, v), "triple": (e, r, v)}[key]


@dataclass
class Counts:
    tp: int = 0
    predicted: int = 0
    reference: int = 0

    @property
    def precision(self) -> float:
        return self.tp / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.reference if self.reference else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_json(self) -> dict[str, float]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall, "f1": self.f1}


def score_document(predicted: list[LookupCall], reference: list[LookupCall]) -> dict[str, Counts]:
    out = {}
    for key in KEYS:
        p = Counter(call_key(c, key) for c in predicted)
        r = Counter(call_key(c, key) for c in reference)
        out[key] = Counts(sum((p & r).values()), sum(p.values()), sum(r.values()))
    return out


@dataclass
class AgreementReport:
    documents: int = 0
    counts: dict[str, Counts] = field(default_factory=lambda: {k: Counts() for k in KEYS})
    info: dict[str, Any] = field(default_factory=dict)  # annotator, reference, speed, model size...

    def add(self, predicted: list[LookupCall], reference: list[LookupCall]) -> dict[str, Counts]:
        doc = score_document(predicted, reference)
        self.documents += 1
        for key, c in doc.items():
            total = self.counts[key]
            total.tp += c.tp
            total.predicted += c.predicted
            total.reference += c.reference
        return doc

    def to_json(self) -> dict[str, Any]:
        return {"documents": self.documents, "scores": {k: c.to_json() for k, c in self.counts.items()}, **self.info}

    def to_markdown(self) -> str:
        lines = [
            "# Annotator agreement with the teacher",
            "",
            f"{self.documents} documents; calls matched per document as multisets after normalisation.",
            "",
            "| key | precision | recall | F1 | matched | predicted | reference |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, c in self.counts.items():
            lines.append(
                f"| {key} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.tp} | {c.predicted} | {c.reference} |"
            )
        if self.info:
            lines += ["", "| | |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in self.info.items()]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path, name: str = "annotation_eval") -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        js, md = out / f"{name}.json", out / f"{name}.md"
        js.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        md.write_text(self.to_markdown(), encoding="utf-8")
        return js, md


def agreement(pairs: Iterable[tuple[str, str]]) -> AgreementReport:
    """Score (predicted annotated text, reference annotated text) pairs, special-token form."""
    report = AgreementReport()
    for predicted, reference in pairs:
        report.add(list_calls(predicted), list_calls(reference))
    return report


__all__ = ["KEYS", "call_key", "Counts", "score_document", "AgreementReport", "agreement"]
