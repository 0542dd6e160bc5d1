"""Annotators as one interface: whatever writes the lookup calls, consumers see ``annotate(texts)``.

Three kinds, each saved as a directory whose ``annotator.json`` names its ``kind``:

- ``teacher``: an OpenAI-compatible chat endpoint used directly (``training/teacher.py``),
  for users who can afford to annotate the whole corpus with it;
- ``extractive``: the distilled MiniLM tagger (``training/annotator.py``), the CPU default;
  directories saved before kinds existed load as this;
- ``generative``: a causal LM fine-tuned with TRL that rewrites a paragraph with its calls,
  decoded so that it can only copy the input (``training/generative_annotator.py``).

Every kind returns :class:`Annotation` results whose ``annotated`` text, stripped of its
calls, is the input exactly (``finish`` checks it for every document, whatever the kind).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from lmlm_agent.format import SPECIAL_TOKENS, LookupCall, insert_calls, strip_calls

KINDS = ("teacher", "extractive", "generative")
META_FILE = "annotator.json"


@dataclass
class Annotation:
    """One document's output; ``status`` is ok, or why the text was left unchanged.

    Statuses: ``empty``, ``contains_call_tokens`` (calls added could not be told from the
    text's own tokens), ``roundtrip_failed``, and for the teacher its own failures
    (``rejected_text``, ``rejected_calls``, ``unknown``, ``failed``).
    """

    text: str
    annotated: str
    calls: list[tuple[int, LookupCall]] = field(default_factory=list)  # (offset in text, call)
    windows: int = 0
    status: str = "ok"
    dropped_calls: int = 0  # calls begun but not kept (a generative call past its budget or with an empty field)


@runtime_checkable
class Annotator(Protocol):
    """Anything that adds lookup calls to texts without changing them."""

    kind: str

    def annotate(self, texts: Sequence[str], batch_size: int = 32) -> list[Annotation]:
        """One result per text, in order; never raises for a bad text (its status says why)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What it is and how it was made: kind, model, size, training budget, speed settings."""
        ...


def screen(texts: Sequence[str]) -> tuple[list[Annotation], list[int]]:
    """Results for every text, and the indices of those worth annotating (the rest keep their status)."""
    results = [Annotation(t, t) for t in texts]
    todo = []
    for i, t in enumerate(texts):
        if not t.strip():
            results[i].status = "empty"
        elif any(tok in t for tok in SPECIAL_TOKENS):
            results[i].status = "contains_call_tokens"
        else:
            todo.append(i)
    return results, todo


def finish(result: Annotation) -> Annotation:
    """Render the calls into the text; a result that would not strip back to its input is never shipped."""
    if result.calls:
        result.calls.sort(key=lambda p: p[0])
        result.annotated = insert_calls(result.text, result.calls)
        if strip_calls(result.annotated) != result.text:
            result.annotated, result.calls, result.status = result.text, [], "roundtrip_failed"
    return result


def config_from(cls, saved: dict[str, Any]):
    """A config dataclass from its saved fields; a field an older or newer version wrote and this one lacks is ignored."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in saved.items() if k in names})


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not an annotator directory (no {META_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def load_annotator(directory: str | Path, threads: int | None = None) -> Annotator:
    """The annotator saved in ``directory``, whatever its kind."""
    kind = read_meta(directory).get("kind", "extractive")  # saved before kinds existed: the MiniLM tagger
    if kind == "extractive":
        from training.annotator import Annotator as Extractive

        return Extractive.load(directory, threads=threads)
    if kind == "generative":
        from training.generative_annotator import GenerativeAnnotator

        return GenerativeAnnotator.load(directory, threads=threads)
    if kind == "teacher":
        return TeacherAnnotator.load(directory)
    raise ValueError(f"{directory}: unknown annotator kind {kind!r}; expected one of {', '.join(KINDS)}")


# --------------------------------------------------------------------------- the teacher itself


class TeacherAnnotator:
    """The teacher endpoint as an annotator: every text is one request (cached), its answer checked."""

    kind = "teacher"

    def __init__(self, config=None):
        from training.teacher import TeacherClient, TeacherConfig

        self.config = config or TeacherConfig()
        self.client = TeacherClient(self.config)

    def annotate(self, texts: Sequence[str], batch_size: int = 32) -> list[Annotation]:
        from training.teacher import calls_with_offsets

        results, todo = screen(texts)
        answers, _ = self.client.run([texts[i] for i in todo])
        for i, answer in zip(todo, answers):
            r = results[i]
            r.windows = 1
            if answer.annotated is None:
                r.status = answer.status
                continue
            # A kept answer is the input with calls inserted (realigned if the teacher edited it).
            _, r.calls, _ = calls_with_offsets(answer.annotated)
            finish(r)
        return results

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.config.model, "base_url": self.config.base_url,
                "cache_dir": str(self.config.cache_dir) if self.config.cache_dir else None}

    def save(self, directory: str | Path) -> Path:
        """The endpoint's settings; the API key is not written (it comes from LMLM_TEACHER_KEY)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items() if k != "api_key"}
        (d / META_FILE).write_text(json.dumps({"kind": self.kind, "teacher": settings}, indent=1), encoding="utf-8")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "TeacherAnnotator":
        from training.teacher import TeacherConfig

        settings = dict(read_meta(directory).get("teacher", {}))
        if settings.get("cache_dir") is not None:
            settings["cache_dir"] = Path(settings["cache_dir"])
        return cls(config_from(TeacherConfig, settings))


__all__ = ["KINDS", "Annotation", "Annotator", "TeacherAnnotator", "config_from", "finish", "load_annotator", "read_meta", "screen"]
