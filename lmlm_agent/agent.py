"""The Python API: a checkpoint plus a knowledge store, answering with citations.

    agent = LMLMAgent.from_pretrained("runs/x/lmlm", store="runs/x/kb.sqlite")
    answer = agent.ask("Where was Ko Itakura born?")
    answer.text, answer.citations      # "Ko Itakura was born in Yokohama.", [{entity, relation, value, fact_id, ...}]
    for piece in agent.stream("Ko Itakura was born in"): print(piece, end="")

This is the one runtime API the adapters sit on: ``ChatLMLM`` (LangChain) and the
OpenAI-compatible server both render chat turns with :func:`chat_prompt`, decode
through :meth:`LMLMAgent.decoder` / :meth:`LMLMAgent.generate` (one batched decoder
call for many prompts) and follow rows with :class:`RowFollower`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lmlm_agent.decoding import (
    DecodingConfig,
    GenerationOutput,
    InterleavedDecoder,
    LookupRecord,
    Prompt,
    TextStream,
)
from lmlm_agent.format import qa_prompt
from lmlm_agent.model import load_checkpoint
from tools.backends import KnowledgeStore
from tools.schema import Lookup

# Lookups whose value came from a stored fact; the others (miss, off, malformed, error) cite nothing.
CITABLE = ("exact", "semantic", "fallback")
# A chat answer is one line, as in the QA drills the LMLM was pretrained on.
CHAT_STOP = "\n"
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class Answer:
    text: str  # calls stripped, unless asked with keep_calls=True
    citations: list[dict[str, Any]] = field(default_factory=list)  # one per distinct fact the answer used
    trace: list[LookupRecord] = field(default_factory=list)  # every lookup, in order
    output: GenerationOutput | None = None


def citations(lookups: list[LookupRecord], namespace: str | None = None) -> list[dict[str, Any]]:
    """The facts an answer used, first use first, each once (with ``namespace`` added when given)."""
    seen, out = set(), []
    for r in lookups:
        key = r.fact_id if r.fact_id is not None else (r.entity, r.relation, r.value)
        if r.match in CITABLE and key not in seen:
            seen.add(key)
            # A multi-valued lookup cites each of its rows, so each id can be checked or forgotten on its own.
            for fact_id, value, source in r.values or ((r.fact_id, r.value, r.source),):
                cite = dict(entity=r.entity, relation=r.relation, value=value, fact_id=fact_id, score=r.score, source=source)
                out.append(cite if namespace is None else {**cite, "namespace": namespace})
    return out


def chat_prompt(turns: Sequence[tuple[str, str]]) -> str:
    """A transcript of ``(role, text)`` turns in the pretraining QA form (``qa_prompt``), ending in ``Answer:``.

    System (and developer) text leads as a plain line; each user turn is a
    question and each assistant turn its answer. Tool turns carry no text for an
    LMLM (its lookups are inside its own answers), so they are left out. Every
    turn is put on one line: a newline would end the answer early.
    """
    lines: list[str] = []
    for role, text in turns:
        if role not in CHAT_ROLES:
            raise ValueError(f"unknown chat role {role!r}; one of {', '.join(CHAT_ROLES)}")
        text = " ".join(text.split())
        if role == "user":
            lines.append(qa_prompt(text))
        elif role == "assistant" and lines and lines[-1].endswith("Answer:"):
            lines[-1] += " " + text
        elif role != "tool":
            lines.append(text)
    if not turns or turns[-1][0] != "user":
        lines.append(qa_prompt(""))
    return "\n".join(lines)


@dataclass
class Delta:
    """What one row produced since the previous delta: new text, new lookups, and its output once finished."""

    row: int
    text: str
    lookups: list[LookupRecord]
    output: GenerationOutput | None = None


class RowFollower:
    """Follows every row of a decoder step by step, as the streams of the server and of ``ChatLMLM`` need.

    ``chat`` strips the layout whitespace around a chat answer (after ``Answer:``
    and at the end) from the pieces too, so they concatenate to ``output.text.strip()``.
    Both take one value for every row or one per row.
    """

    def __init__(self, decoder: InterleavedDecoder, keep_calls: bool | Sequence[bool] = False, chat: bool | Sequence[bool] = False):
        self.decoder = decoder
        n = len(decoder.rows)
        keep = [keep_calls] * n if isinstance(keep_calls, bool) else list(keep_calls)
        strip = [chat] * n if isinstance(chat, bool) else list(chat)
        self.streams = [TextStream(decoder, r, keep[r], strip=strip[r]) for r in range(n)]
        self.reported = [0] * n
        self.done = [False] * n

    def add(self, prompts: Sequence[str | Prompt], keep_calls: bool = False, chat: bool = False) -> list[int]:
        """Join prompts to the running decoder (continuous batching) and follow them too; their row indices."""
        rows = self.decoder.add(list(prompts))
        self.streams += [TextStream(self.decoder, r, keep_calls, strip=chat) for r in rows]
        self.reported += [0] * len(rows)
        self.done += [False] * len(rows)
        return rows

    def step(self) -> list[Delta]:
        """Run one decoder step; the deltas of the rows that have news (every unfinished row once it ends)."""
        running = self.decoder.step()
        deltas = []
        for r, row in enumerate(self.decoder.rows):
            if self.done[r]:
                continue
            finished = row.finish_reason is not None or not running
            text = self.streams[r].finish() if finished else self.streams[r].update()
            lookups = row.lookups[self.reported[r] :]
            self.reported[r] = len(row.lookups)
            if finished:
                self.done[r] = True
                deltas.append(Delta(r, text, lookups, self.decoder.output(r)))
            elif text or lookups:
                deltas.append(Delta(r, text, lookups))
        return deltas

    def __iter__(self) -> Iterator[list[Delta]]:
        while not all(self.done):
            yield self.step()


_CHECKPOINTS: dict[tuple, Any] = {}  # (resolved path, device) -> Checkpoint
_LOADED: dict[tuple, LMLMAgent] = {}
_LOADING = threading.Lock()


class LMLMAgent:
    """A model, its tokenizer, a store (or none) and default decoding settings."""

    def __init__(self, model, tokenizer, store: Lookup | None = None, db_off: bool = False, **config: Any):
        self.model, self.tokenizer, self.store = model, tokenizer, store
        self.config = DecodingConfig(db_off=db_off, **config)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, store: Lookup | str | Path | None = None, db_off: bool = False, device: str | None = None, **config: Any
    ) -> LMLMAgent:
        """Load a checkpoint directory; ``store`` is a store object, or a path / URL given to ``tools.open_store``."""
        ckpt = load_checkpoint(path, device=device)
        if isinstance(store, (str, Path)):
            from tools import open_store

            store = open_store(store, create=False)  # a reader: never creates a database or an index beside it
        return cls(ckpt.model, ckpt.tokenizer, store, db_off=db_off, **config)

    @classmethod
    def shared(cls, path: str | Path, store: str | Path | None = None, device: str | None = None,
               store_options: dict[str, Any] | None = None) -> LMLMAgent:
        """One agent per (checkpoint, store, device) in this process, loaded once even when threads ask together.

        Two concurrent ``from_pretrained`` calls of one checkpoint cost twice the
        memory, and transformers' loading is not safe under threads (tied weights
        can come out untied); adapters that load lazily (``ChatLMLM``) use this.
        Agents of one checkpoint over different stores share the model.
        """
        options = store_options or {}
        checkpoint = (str(Path(path).resolve()), device)
        key = (*checkpoint, str(store) if store is not None else None, tuple(sorted(options.items())))
        with _LOADING:
            if key not in _LOADED:
                if checkpoint not in _CHECKPOINTS:
                    _CHECKPOINTS[checkpoint] = load_checkpoint(path, device=device)
                opened = None
                if store is not None:
                    from tools import open_store

                    opened = open_store(store, **{"create": False, **options})  # a reader creates nothing
                ckpt = _CHECKPOINTS[checkpoint]
                _LOADED[key] = cls(ckpt.model, ckpt.tokenizer, opened)
            return _LOADED[key]

    def _config(self, overrides: dict[str, Any]) -> DecodingConfig:
        return dataclasses.replace(self.config, **overrides)

    def lookup(self, namespace: str | None = None) -> Lookup | None:
        """The store read in ``namespace`` (None: the store's own default); a plain Lookup has no other namespace."""
        if self.store is None or namespace is None:
            return self.store
        if not isinstance(self.store, KnowledgeStore):
            raise ValueError(f"{type(self.store).__name__} is a lookup of one namespace; namespace {namespace!r} needs a "
                             "knowledge store (tools.open_store)")
        return self.store.with_namespace(namespace)

    def decoder(
        self, prompts: Sequence[str | Prompt], namespace: str | None = None, lookup: Lookup | None | str = "store", **overrides: Any
    ) -> InterleavedDecoder:
        """A decoder over ``prompts`` (one batch) to step yourself; ``lookup`` replaces the store (e.g. a tool route)."""
        route = self.lookup(namespace) if lookup == "store" else lookup
        return InterleavedDecoder(self.model, self.tokenizer, list(prompts), route, self._config(overrides))

    def generate(self, prompts: str | Sequence[str | Prompt], namespace: str | None = None, **overrides: Any) -> list[GenerationOutput]:
        """Continue each prompt (one batch); keyword arguments override :class:`DecodingConfig` fields."""
        prompts = [prompts] if isinstance(prompts, (str, Prompt)) else list(prompts)
        if not prompts:
            return []
        return self.decoder(prompts, namespace, **overrides).run()

    def ask(self, question: str, keep_calls: bool = False, **overrides: Any) -> Answer:
        """Answer a question in the fine-tuning format (``Question: ...\\nAnswer:``), up to the end of the line."""
        overrides.setdefault("stop_strings", (CHAT_STOP,))
        (out,) = self.generate(qa_prompt(question), **overrides)
        text = out.raw_text if keep_calls else out.text
        return Answer(text.strip(), citations(out.lookups), out.lookups, out)

    def stream(self, prompt: str, keep_calls: bool = False, **overrides: Any) -> Iterator[str]:
        """Text pieces as they are decoded (calls hidden unless ``keep_calls``)."""
        for deltas in RowFollower(self.decoder([prompt], **overrides), keep_calls):
            for delta in deltas:
                if delta.text:
                    yield delta.text
