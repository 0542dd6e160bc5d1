"""A model under evaluation: a HF causal LM + tokenizer, and for an LMLM its knowledge store.

Every benchmark talks to models through :class:`Subject`, so the baseline and the
LMLM (with its store, or with the database off) are measured by the same code:

- ``answer_nlls``: mean NLL of answers after a QA prompt, over the answer tokens and EOS.
  An LMLM's answer carries its lookup call (value from its store) right before the
  stated value, and the value tokens inside the call are not scored: the database,
  not the model, wrote them (the same labels as training, ``training.data.qa_example``).
- ``teacher_forced``: top-1 hits and NLL of target tokens after a context.
- ``generate``: greedy continuations as plain text (lookup blocks stripped). Both kinds
  go through the same interleaved decoder (same repetition penalty, same stopping); a
  baseline has no store, so a call it might write would only ever return ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from lmlm_agent.decoding import DecodingConfig, interleaved_generate, resolve
from lmlm_agent.format import LookupCall, insert_calls
from tools.schema import Lookup
from training.data import IGNORE_INDEX, qa_example


@dataclass(frozen=True)
class ScoredAnswer:
    """An answer to score; ``value_offset`` is where the fact's value starts (-1: no call)."""

    text: str
    entity: str = ""
    relation: str = ""
    value_offset: int = -1


@dataclass
class Subject:
    name: str
    model: Any
    tokenizer: Any
    store: Lookup | None = None  # an LMLM's knowledge store (or any tools.Lookup); None: a baseline
    db_off: bool = False  # an LMLM whose every lookup returns "unknown" (the ablation)
    batch_size: int = 16
    decoding: dict[str, Any] = field(default_factory=dict)  # DecodingConfig fields for every generation

    @property
    def is_lmlm(self) -> bool:
        return self.store is not None or self.db_off

    def lookup(self, entity: str, relation: str) -> str:
        """The value this subject's runtime would splice in (the decoder's own ``resolve``)."""
        return resolve(self.store, entity, relation, self.db_off).value

    def answer_text(self, answer: ScoredAnswer) -> str:
        """The answer as this subject writes it: with its lookup call for an LMLM."""
        if not self.is_lmlm or answer.value_offset < 0:
            return answer.text
        call = LookupCall(answer.entity, answer.relation, self.lookup(answer.entity, answer.relation))
        return insert_calls(answer.text, [(answer.value_offset, call)])

    def answer_nlls(self, questions: Sequence[str], answers: Sequence[ScoredAnswer]) -> list[float]:
        """Mean NLL per answer token (EOS included, looked-up value tokens excluded)."""
        import torch

        max_length = self.model.config.max_position_embeddings
        rows = [qa_example(q, self.answer_text(a), self.tokenizer, max_length) for q, a in zip(questions, answers)]
        out: list[float] = []
        self.model.eval()
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            ids, labels, mask = pad_rows([r["input_ids"] for r in batch], [r["labels"] for r in batch],
                                         self.tokenizer.pad_token_id, self.model.device)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            out.extend(sequence_nll(logits, labels).tolist())
        return out

    def teacher_forced(self, contexts: Sequence[str], targets: Sequence[str]) -> list[tuple[int, int, float]]:
        """Per pair: (target tokens predicted top-1, target tokens, summed NLL of the target).

        The target's tokens follow the context's (each encoded on its own, as in generation).
        """
        import torch

        enc = lambda texts: self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
        out = []
        self.model.eval()
        for start in range(0, len(contexts), self.batch_size):
            ctx, tgt = enc(contexts[start : start + self.batch_size]), enc(targets[start : start + self.batch_size])
            ids = [c + t for c, t in zip(ctx, tgt)]
            labels = [[IGNORE_INDEX] * len(c) + t for c, t in zip(ctx, tgt)]
            t_ids, t_labels, mask = pad_rows(ids, labels, self.tokenizer.pad_token_id, self.model.device)
            with torch.no_grad():
                logits = self.model(input_ids=t_ids, attention_mask=mask).logits
            gold = t_labels[:, 1:]
            scored = gold != IGNORE_INDEX
            hits = ((logits[:, :-1].argmax(-1) == gold) & scored).sum(1)
            nll = sequence_nll(logits, t_labels, "sum")
            out += [(int(h), int(n), float(l)) for h, n, l in zip(hits, scored.sum(1), nll)]
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int, force_call: bool = False, **decoding: Any) -> list[str]:
        """Greedy continuations of ``prompts`` as plain text (lookup blocks removed).

        ``force_call``: an LMLM starts with ``<|db_entity|>`` (the T-REx cloze protocol).
        ``decoding``: DecodingConfig fields over the subject's own (e.g. ``repetition_penalty``).
        """
        config = DecodingConfig(**{**self.decoding, **decoding, "max_new_tokens": max_new_tokens,
                                   "force_lookup_start": force_call and self.is_lmlm, "db_off": self.db_off})
        store = self.store if self.is_lmlm else None
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start : start + self.batch_size])
            out.extend(r.text for r in interleaved_generate(self.model, self.tokenizer, batch, store, config))
        return out


def pad_rows(ids: list[list[int]], labels: list[list[int]], pad_id: int, device=None):
    """Right-padded (input_ids, labels, attention_mask) tensors on ``device``."""
    import torch

    width = max(len(r) for r in ids)
    t_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    t_labels = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(ids, labels)):
        t_ids[i, : len(r)] = torch.tensor(r)
        t_labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(r)] = 1
    return t_ids.to(device), t_labels.to(device), mask.to(device)


def sequence_nll(logits, labels, reduction: str = "mean"):
    """Per-row NLL over the labelled tokens (labels are the input ids; -100 = not scored).

    ``mean``: per token (TOFU's answer loss); ``sum``: of the whole sequence (NPO's log-ratio).
    """
    import torch.nn.functional as F

    logits, labels = logits[:, :-1], labels[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=IGNORE_INDEX, reduction="none").sum(1)
    return nll if reduction == "sum" else nll / (labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
