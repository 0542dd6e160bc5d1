"""TOFU's own files: read every shape the release ships, and write TOFU-format files from a generated world.

The release (locuslab/TOFU) has one file per split, each a JSON list or JSON lines:

- training splits ``full``, ``forget01`` / ``forget05`` / ``forget10``, ``retain90`` /
  ``retain95`` / ``retain99``: rows ``{question, answer}``; ``retainNN`` is ``full`` less
  ``forget(100-NN)``;
- evaluation splits ``forgetNN_perturbed`` and ``retain_perturbed``: also
  ``paraphrased_answer`` and ``perturbed_answer`` (a list); ``real_authors_perturbed`` and
  ``world_facts_perturbed``: ``answer`` and ``perturbed_answer`` (the wrong options).

TOFU rows name no author: ``full`` holds 200 authors x 20 QA in order, and the forget
splits are its last authors. A row's author is its ``author`` field when it has one (the
files written here do; TOFU's loader ignores extra fields), else its position in
``full`` // ``qa_per_author``. Every training row is identified by its index in ``full``
(``full#<index>``), the source of the knowledge-base rows annotated from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from benchmarks.world import QAItem, World

TRAIN_SPLITS = ("full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99")
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}  # TOFU's pairing
EVAL_STEMS = {  # evaluation split (benchmarks.tofu's names) -> file stem
    "forget01": "forget01_perturbed", "forget05": "forget05_perturbed", "forget10": "forget10_perturbed",
    "retain": "retain_perturbed", "real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed",
}
TOFU_QA_PER_AUTHOR = 20
RECORDS_FILE = "teacher_records.jsonl"  # written beside generated files: the offline teacher's answers


class MissingSplit(FileNotFoundError):
    """A split's file is not in the directory."""


class BadRows(ValueError):
    """A file's rows lack what the split needs."""


def split_path(directory: str | Path, stem: str) -> Path:
    """``<stem>.json`` (or ``.jsonl``) in ``directory``; a clear error naming what is there otherwise."""
    d = Path(directory)
    for suffix in (".json", ".jsonl"):
        if (d / f"{stem}{suffix}").is_file():
            return d / f"{stem}{suffix}"
    present = sorted(p.name for p in d.glob("*.json*")) if d.is_dir() else []
    where = f"{d} has {', '.join(present)}" if present else f"{d} has no TOFU files" if d.is_dir() else f"{d} does not exist"
    raise MissingSplit(f"TOFU split {stem!r} is missing: no {stem}.json ({where})")


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a TOFU file: a JSON list, or JSON lines."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise BadRows(f"{path}: not a JSON list nor JSON lines ({exc})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise BadRows(f"{path}: every row must be a JSON object")
    return rows


def _require(path: Path, rows: list[dict], keys: Sequence[str]) -> None:
    for key in keys:
        bad = [i for i, r in enumerate(rows) if not r.get(key)]
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
            raise BadRows(f"{path.name}: {len(bad)} of {len(rows)} rows lack {key!r} (rows {shown})")


@dataclass(frozen=True)
class QARow:
    """A training row; ``index`` is its position in ``full`` (the provenance of its facts)."""

    index: int
    question: str
    answer: str
    author: str

    @property
    def source(self) -> str:
        return f"full#{self.index}"


def load_train(directory: str | Path, split: str, qa_per_author: int = TOFU_QA_PER_AUTHOR) -> list[QARow]:
    """A training split's rows, each tied to its row of ``full`` (matched by question)."""
    if split not in TRAIN_SPLITS:
        raise ValueError(f"unknown TOFU training split {split!r}; choose one of {', '.join(TRAIN_SPLITS)}")
    path = split_path(directory, "full")
    rows = read_rows(path)
    _require(path, rows, ("question", "answer"))
    full = [QARow(i, r["question"], r["answer"], str(r.get("author") or f"author-{i // qa_per_author}"))
            for i, r in enumerate(rows)]
    if split == "full":
        return full
    by_question = {r.question: r for r in full}
    path = split_path(directory, split)
    rows = read_rows(path)
    _require(path, rows, ("question", "answer"))
    absent = [r["question"] for r in rows if r["question"] not in by_question]
    if absent:
        raise BadRows(f"{path.name}: {len(absent)} questions are not in full.json (first: {absent[0]!r})")
    return [by_question[r["question"]] for r in rows]


def load_eval(directory: str | Path, split: str) -> list[QAItem]:
    """An evaluation split (``forget05``, ``retain``, ``real_authors``, ...) as QA items without value offsets."""
    path = split_path(directory, EVAL_STEMS[split])
    rows = read_rows(path)
    _require(path, rows, ("question", "answer", "perturbed_answer"))
    return [QAItem("", "", "", r["question"], r["answer"], r.get("paraphrased_answer") or r["answer"],
                   [r["perturbed_answer"]] if isinstance(r["perturbed_answer"], str) else list(r["perturbed_answer"]), [])
            for r in rows]


def load_eval_sets(directory: str | Path, forget_splits: Sequence[str]) -> dict[str, list[QAItem]]:
    """The evaluation sets a run needs: each forget split's, retain, real authors and world facts."""
    return {s: load_eval(directory, s) for s in (*forget_splits, "retain", "real_authors", "world_facts")}


# --------------------------------------------------------------------------- writing files from a world

def world_for_authors(authors: int, seed: int = 0) -> World:
    """A generated world with about ``authors`` forget/retain authors, each with all its QA (5 to 7)."""
    from benchmarks.world import generate_world

    # Half the entities are people and a fifth of the people are famous (benchmarks.world's shares).
    return generate_world(max(5, round(authors / 0.4)), seed=seed, qa_per_split=None)


def _write(path: Path, rows: list[dict], json_lines: bool) -> None:
    if json_lines:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")


def _annotated(item: QAItem) -> list[str]:
    """Each answer of ``item`` with its call before the value it states (the wrong value in a perturbed one)."""
    from lmlm_agent.format import LookupCall, insert_calls

    out = []
    for text, offset in zip(item.answers, item.value_offsets):
        value = text[offset:].rstrip(".")
        out.append(insert_calls(text, [(offset, LookupCall(item.entity, item.relation, value))]))
    return out


def write_world_files(world: World, directory: str | Path, json_lines: bool = False,
                      retain_questions: int = 400) -> Path:
    """TOFU-format files for ``world``'s authors, plus ``teacher_records.jsonl`` (every answer annotated).

    Author order as in TOFU: retain authors first, then forget10's, the last of which are
    forget05's and, last, forget01's. Build the world with ``qa_per_split=None`` so every
    author has all its QA (with a cap, authors lose questions at random).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    f01, f05, f10 = (world.splits[s] for s in ("forget01", "forget05", "forget10"))
    order = [*world.splits["retain"], *(a for a in f10 if a not in f05), *(a for a in f05 if a not in f01), *f01]
    items = {}
    for split in ("retain", "forget10"):
        for item in world.qa[split]:
            items.setdefault(item.entity, []).append(item)
    full_items = [q for author in order for q in items.get(author, [])]

    def train_rows(qa: list[QAItem]) -> list[dict]:
        return [{"question": q.question, "answer": q.answer, "author": q.entity} for q in qa]

    def eval_rows(qa: list[QAItem], paraphrased: bool = True) -> list[dict]:
        return [{"question": q.question, "answer": q.answer, "perturbed_answer": q.perturbed_answer,
                 **({"paraphrased_answer": q.paraphrased_answer} if paraphrased else {})} for q in qa]

    suffix = ".jsonl" if json_lines else ".json"
    _write(out / f"full{suffix}", train_rows(full_items), json_lines)
    for forget, retain in RETAIN_OF.items():
        forgotten = set(world.splits[forget])
        _write(out / f"{forget}{suffix}", train_rows([q for q in full_items if q.entity in forgotten]), json_lines)
        _write(out / f"{retain}{suffix}", train_rows([q for q in full_items if q.entity not in forgotten]), json_lines)
        _write(out / f"{forget}_perturbed{suffix}", eval_rows([q for q in full_items if q.entity in forgotten]), json_lines)
    retain_eval = [q for q in full_items if q.entity not in set(f10)][:retain_questions]
    _write(out / f"retain_perturbed{suffix}", eval_rows(retain_eval), json_lines)
    _write(out / f"real_authors_perturbed{suffix}", eval_rows(world.qa["real_authors"], False), json_lines)
    _write(out / f"world_facts_perturbed{suffix}", eval_rows(world.qa["world_facts"], False), json_lines)
    records = {}
    for q in [*full_items, *world.qa["real_authors"], *world.qa["world_facts"]]:
        for annotated in _annotated(q):
            records[annotated] = None
    (out / RECORDS_FILE).write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                                            for i, t in enumerate(records)), encoding="utf-8")
    return out


__all__ = [
    "BadRows", "EVAL_STEMS", "MissingSplit", "QARow", "RECORDS_FILE", "RETAIN_OF", "TOFU_QA_PER_AUTHOR", "TRAIN_SPLITS",
    "load_eval", "load_eval_sets", "load_train", "read_rows", "split_path", "world_for_authors", "write_world_files",
]
