"""Running an annotator: over a JSONL corpus (streaming, resumable, triples into the KB) and against a reference."""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from lmlm_agent.format import list_calls
from training.annotation_eval import AgreementReport
from training.annotator import model_size_bytes
from training.annotators import KINDS, Annotator
from training.corpus import load_lmlm_annotations


@dataclass
class CorpusConfig:
    batch_size: int = field(default=64, metadata={"help": "Documents per annotator batch (and per KB write)."})
    text_field: str = field(default="text", metadata={"help": "JSON field holding each document's text."})
    id_field: str = field(default="id", metadata={"help": "JSON field holding each document's id (else its line number)."})
    namespace: str | None = field(default=None, metadata={"help": "Knowledge-base namespace for the triples."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})


def _done_ids(out_path: Path) -> set[str]:
    """Ids already written: a rerun skips them (a torn last line is ignored and redone)."""
    done: set[str] = set()
    if out_path.exists():
        with open(out_path, encoding="utf-8") as f:
            for line in f:
                try:
                    done.add(str(json.loads(line)["id"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
    return done


def _rows(in_path: Path, config: CorpusConfig, summary: Counter) -> Iterator[tuple[str, str]]:
    with open(in_path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row[config.text_field]
                if not isinstance(text, str):
                    raise TypeError("text is not a string")
            except (json.JSONDecodeError, KeyError, TypeError):
                summary["bad_lines"] += 1
                continue
            yield str(row.get(config.id_field, n)), text


def _write_triples(store, triples: list[tuple[str, str, str, str]], namespace: str | None, summary: Counter) -> None:
    from tools.schema import InvalidInput

    try:
        summary["triples_written"] += store.write_many(triples, namespace=namespace)
    except InvalidInput:
        # One bad triple would reject the whole batch: store the rest one by one.
        for e, r, v, s in triples:
            try:
                store.write(e, r, v, s, namespace=namespace)
                summary["triples_written"] += 1
            except InvalidInput:
                summary["triples_invalid"] += 1


def annotate_corpus(
    annotator: Annotator, in_path: str | Path, out_path: str | Path, store=None, config: CorpusConfig | None = None
) -> dict[str, Any]:
    """Annotate ``{"id", "text"}`` lines into ``{"id", "text" (annotated), "plain"}`` lines; returns the summary.

    Streaming and resumable: ids already in ``out_path`` are skipped, each batch is
    appended and flushed before the next. With ``store``, every call's triple is
    written with the provenance ``doc:<id>@<character offset in the plain text>``.
    """
    from tqdm.auto import tqdm

    config = config or CorpusConfig()
    in_path, out_path = Path(in_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    summary: Counter = Counter()
    done = _done_ids(out_path)
    started = time.perf_counter()
    bar = tqdm(desc="annotate", unit="doc", disable=not config.progress)
    with open(out_path, "a", encoding="utf-8") as out:
        batch: list[tuple[str, str]] = []

        def flush() -> None:
            triples = []
            for (doc_id, text), a in zip(batch, annotator.annotate([t for _, t in batch], config.batch_size)):
                summary["documents"] += 1
                summary[a.status] += 1
                summary["split_documents"] += a.windows > 1
                summary["calls"] += len(a.calls)
                out.write(json.dumps({"id": doc_id, "text": a.annotated, "plain": text}, ensure_ascii=False) + "\n")
                triples += [(c.entity, c.relation, c.value, f"doc:{doc_id}@{o}") for o, c in a.calls]
            out.flush()
            if store is not None and triples:
                _write_triples(store, triples, config.namespace, summary)
            bar.update(len(batch))
            batch.clear()

        for doc_id, text in _rows(in_path, config, summary):
            if doc_id in done:
                summary["skipped_done"] += 1
                continue
            done.add(doc_id)
            batch.append((doc_id, text))
            if len(batch) >= config.batch_size:
                flush()
        if batch:
            flush()
    bar.close()
    summary_dict: dict[str, Any] = dict(summary)
    summary_dict["seconds"] = round(time.perf_counter() - started, 3)
    return summary_dict


def evaluate_annotator(annotator: Annotator, reference: str | Path, annotator_dir: str | Path | None = None) -> AgreementReport:
    """Score the annotator's calls (any kind) on the reference's plain texts against the reference's calls."""
    docs = load_lmlm_annotations(reference)
    started = time.perf_counter()
    results = annotator.annotate([d.plain for d in docs])
    seconds = time.perf_counter() - started
    report = AgreementReport()
    for doc, result in zip(docs, results):
        report.add([c for _, c in result.calls], list_calls(doc.annotated))
    report.info = {
        "reference": str(reference),
        "annotator": str(annotator_dir or ""),
        "paragraphs_per_second": round(len(docs) / seconds, 2) if seconds else None,
        "annotate_seconds": round(seconds, 3),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "model_size_mb": round(model_size_bytes(annotator_dir) / 1e6, 1) if annotator_dir else None,
        **annotator.describe(),
    }
    return report


def compare_annotators(annotators: list[tuple[str, Annotator]], references: list[Path]) -> list[dict[str, Any]]:
    """Each annotator (any kind) on each reference, in one run: F1 per key, call counts, speed."""
    rows = []
    for reference in references:
        for name, annotator in annotators:
            report = evaluate_annotator(annotator, reference, name)
            counts = report.counts
            rows.append({
                "reference": Path(reference).name,
                "annotator": name,
                "kind": annotator.kind,
                "documents": report.documents,
                **{f"{key}_f1": round(c.f1, 3) for key, c in counts.items()},
                "value_precision": round(counts["value"].precision, 3),
                "value_recall": round(counts["value"].recall, 3),
                "calls": counts["value"].predicted,
                "reference_calls": counts["value"].reference,
                "paragraphs_per_second": report.info["paragraphs_per_second"],
            })
    return rows


def write_comparison(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """``comparison.json`` and ``comparison.md`` of :func:`compare_annotators`' rows in ``out``; the Markdown's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "comparison.md").write_text(comparison_markdown(rows))
    return out / "comparison.md"


def make_annotator(kind: str, out: str | Path, records: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                   *, epochs: float = 8.0, encoder_layers: int | None = None, max_documents: int | None = None,
                   base: str | Path | None = None, preset: str = "small", context: int = 512) -> dict[str, Any]:
    """`lmlm annotate train`: an annotator of ``kind`` saved in ``out``; what to report about it.

    ``extractive`` and ``generative`` are distilled from the teacher's annotations in ``records``
    (a generative one without ``base`` first gets a fresh model of ``preset`` with ``context``
    positions and a tokenizer trained on the records, in ``out/base``); ``teacher`` saves the
    endpoint's settings. ``overrides`` (``key=value``) set any field of the kind's config
    (AnnotatorConfig, GenerativeConfig, TeacherConfig) and win over the keyword settings.
    """
    from tools.settings import load_settings
    from training.annotators import TeacherAnnotator
    from training.corpus import read_documents

    out = Path(out)
    if kind == "teacher":
        from training.teacher import TeacherConfig

        TeacherAnnotator(load_settings(TeacherConfig, None, overrides)).save(out)
        return {"kind": kind, "out": str(out)}
    if kind not in KINDS:
        raise ValueError(f"unknown annotator kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not records:
        raise ValueError("give the teacher's annotations to learn from")
    docs = [d for path in records for d in read_documents(path)]
    common = [f"epochs={epochs}", *([f"max_documents={max_documents}"] if max_documents is not None else [])]
    if kind == "extractive":
        from training.annotator import AnnotatorConfig, train_annotator

        layers = [f"encoder_layers={encoder_layers}"] if encoder_layers is not None else []
        config = load_settings(AnnotatorConfig, None, [*common, *layers, *overrides])
        annotator, _ = train_annotator(((d.plain, d.annotated) for d in docs), config)
    else:
        from training.generative_annotator import GenerativeConfig, new_base, train_generative

        if base is None:
            base = new_base([d.plain for d in docs] + [d.annotated for d in docs], out / "base", preset=preset, context=context)
        config = load_settings(GenerativeConfig, None, [f"base={base}", *common, *overrides])
        annotator, _ = train_generative(((d.plain, d.annotated) for d in docs), config, out / "trainer")
    annotator.save(out)
    return {**annotator.report, "kind": kind, "out": str(out), "size_mb": round(model_size_bytes(out) / 1e6, 1)}


def calibrate_annotator(annotator_dir: str | Path, records: Sequence[str | Path], documents: int = 50,
                        threads: int | None = None) -> dict[str, Any]:
    """`lmlm annotate calibrate`: re-choose an extractive annotator's value bias (how many calls) on the first
    ``documents`` of ``records`` (teacher annotations it did not train on, never the evaluation set) and save it
    in place; the calibration report."""
    from training.annotator import Annotator, calibrate
    from training.annotators import read_meta
    from training.corpus import read_documents

    docs = [d for path in records for d in read_documents(path)][:documents]
    if not docs:
        raise ValueError("no documents in the records to calibrate on")
    if read_meta(annotator_dir).get("kind", "extractive") != "extractive":
        raise ValueError(f"{annotator_dir}: only an extractive annotator has a value bias to calibrate")
    annotator = Annotator.load(annotator_dir, threads=threads)
    annotator.report["calibration"] = calibrate(annotator, [(d.plain, d.annotated) for d in docs])
    annotator.save(annotator_dir)
    return annotator.report["calibration"]


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    columns = ["reference", "annotator", "kind", "value_f1", "entity_value_f1", "triple_f1", "value_precision",
               "value_recall", "calls", "reference_calls", "paragraphs_per_second"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


__all__ = ["CorpusConfig", "annotate_corpus", "calibrate_annotator", "compare_annotators", "comparison_markdown", "evaluate_annotator", "make_annotator",
           "write_comparison"]
