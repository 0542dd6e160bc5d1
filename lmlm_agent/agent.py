"""The Python API: a checkpoint plus a knowledge store, answering with citations.

    agent = LMLMAgent.from_pretrained("runs/x/lmlm", store="runs/x/kb.sqlite")
    answer = agent.ask("Where was Ko Itakura born?")
    answer.text, answer.citations      # "Ko Itakura was born in Yokohama.", [{entity, relation, value, fact_id, ...}]
    for piece in agent.stream("Ko Itakura was born in"): print(piece, end="")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lmlm_agent.decoding import (
    DecodingConfig,
    GenerationOutput,
    LookupRecord,
    Store,
    interleaved_generate,
    stream_generate,
)
from lmlm_agent.format import qa_prompt
from lmlm_agent.model import load_checkpoint

# Lookups whose value came from a stored fact; the others (miss, off, malformed, error) cite nothing.
CITABLE = ("exact", "semantic", "fallback")


@dataclass
class Answer:
    text: str  # calls stripped, unless asked with keep_calls=True
    citations: list[dict[str, Any]] = field(default_factory=list)  # one per distinct fact the answer used
    trace: list[LookupRecord] = field(default_factory=list)  # every lookup, in order
    output: GenerationOutput | None = None


def citations(lookups: list[LookupRecord]) -> list[dict[str, Any]]:
    """The facts an answer used, first use first, each once."""
    seen, out = set(), []
    for r in lookups:
        key = r.fact_id if r.fact_id is not None else (r.entity, r.relation, r.value)
        if r.match in CITABLE and key not in seen:
            seen.add(key)
            out.append(dict(entity=r.entity, relation=r.relation, value=r.value, fact_id=r.fact_id, score=r.score, source=r.source))
    return out


class LMLMAgent:
    """A model, its tokenizer, a store (or none) and default decoding settings."""

    def __init__(self, model, tokenizer, store: Store | None = None, db_off: bool = False, **config: Any):
        self.model, self.tokenizer, self.store = model, tokenizer, store
        self.config = DecodingConfig(db_off=db_off, **config)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, store: Store | str | Path | None = None, db_off: bool = False, device: str | None = None, **config: Any
    ) -> LMLMAgent:
        """Load a checkpoint directory; ``store`` is a store object, or a path / URL given to ``tools.open_store``."""
        ckpt = load_checkpoint(path, device=device)
        if isinstance(store, (str, Path)):
            from tools import open_store

            store = open_store(store, create=False)  # a reader: never creates a database or an index beside it
        return cls(ckpt.model, ckpt.tokenizer, store, db_off=db_off, **config)

    def _config(self, overrides: dict[str, Any]) -> DecodingConfig:
        return dataclasses.replace(self.config, **overrides)

    def generate(self, prompts: str | list[str], **overrides: Any) -> list[GenerationOutput]:
        """Continue each prompt (one batch); keyword arguments override :class:`DecodingConfig` fields."""
        return interleaved_generate(self.model, self.tokenizer, prompts, self.store, self._config(overrides))

    def ask(self, question: str, keep_calls: bool = False, **overrides: Any) -> Answer:
        """Answer a question in the fine-tuning format (``Question: ...\\nAnswer:``), up to the end of the line."""
        overrides.setdefault("stop_strings", ("\n",))
        (out,) = self.generate(qa_prompt(question), **overrides)
        text = out.raw_text if keep_calls else out.text
        return Answer(text.strip(), citations(out.lookups), out.lookups, out)

    def stream(self, prompt: str, keep_calls: bool = False, **overrides: Any) -> Iterator[str]:
        """Text pieces as they are decoded (calls hidden unless ``keep_calls``)."""
        yield from stream_generate(self.model, self.tokenizer, prompt, self.store, self._config(overrides), keep_calls)
