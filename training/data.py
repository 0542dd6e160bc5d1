"""Token-level data preparation: the value mask, packing to the context length, QA examples.

The value mask is built once, here, from token ids: label ``-100`` on the tokens
strictly between ``<|db_return|>`` and ``<|db_end|>`` and on ``<|db_end|>`` itself
(the database supplies them at inference, so the model must not learn them).
Everything else is trained: the call tokens, entity, relation, and the value
repeated as ordinary text after the call. The trainer's collator only pads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

from lmlm_agent.format import parse, qa_prompt, render_call, strip_calls
from lmlm_agent.tokenizer import CallTokenIds, call_token_ids

IGNORE_INDEX = -100


def value_mask(ids: Sequence[int], call: CallTokenIds, inside: bool | None = None) -> list[bool]:
    """For each token, whether it is excluded from the loss (a returned value or ``<|db_end|>``).

    ``inside`` is the state at the start of ``ids``: True when the sequence begins in
    the middle of a value (a call cut by the context window). With ``None`` it is
    inferred: a sequence whose first call token is ``<|db_end|>`` began inside a value.
    A value is closed by ``<|db_end|>``; any other call token, or a fresh
    ``<|db_entity|>``, ends a malformed, unterminated value and is trained as usual.
    """
    if inside is None:
        first = next((t for t in ids if t in call.all), None)
        inside = first == call.end
    mask = []
    for t in ids:
        if t == call.end:
            mask.append(True)
            inside = False
        elif t == call.ret:
            mask.append(False)
            inside = True
        elif t in (call.entity, call.relationship):
            mask.append(False)
            inside = False
        else:
            mask.append(inside)
    return mask


def mask_labels(ids: Sequence[int], call: CallTokenIds, inside: bool | None = None) -> list[int]:
    """``ids`` as labels with the value tokens and ``<|db_end|>`` set to -100."""
    return [IGNORE_INDEX if m else t for t, m in zip(ids, value_mask(ids, call, inside))]


def call_block_mask(ids: Sequence[int], call: CallTokenIds) -> list[bool]:
    """For each token, whether it lies in a lookup block, ``<|db_entity|>`` to ``<|db_end|>`` inclusive."""
    out, inside = [], False
    for t in ids:
        if t == call.entity:
            inside = True
        out.append(inside)
        if t == call.end:
            inside = False
    return out


@dataclass
class PackedData:
    """Rows of exactly ``context_length`` tokens (the last may be shorter), ready for the trainer."""

    input_ids: list[list[int]]
    labels: list[list[int]]

    @property
    def tokens(self) -> int:
        return sum(len(r) for r in self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(t != IGNORE_INDEX for row in self.labels for t in row)

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids, "labels": self.labels})


def encode(texts: Sequence[str], tokenizer) -> list[list[int]]:
    """Token ids of each text, without added special tokens (the call tokens are single ids)."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def pack(texts: Sequence[str], tokenizer, context_length: int, mask_values: bool = True) -> PackedData:
    """Concatenate ``texts`` with EOS after each, cut into ``context_length`` rows.

    The labels are masked over the whole stream before cutting, so a call cut by a
    row boundary stays masked up to its ``<|db_end|>`` in the next row. Rows with
    no trained token are dropped.
    """
    call = call_token_ids(tokenizer)
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in encode(texts, tokenizer):
        stream.extend(ids)
        stream.append(eos)
    labels = mask_labels(stream, call, inside=False) if mask_values else list(stream)
    rows, row_labels = [], []
    for start in range(0, len(stream), context_length):
        lab = labels[start : start + context_length]
        if any(t != IGNORE_INDEX for t in lab):
            rows.append(stream[start : start + context_length])
            row_labels.append(lab)
    return PackedData(rows, row_labels)


def baseline_texts(annotated: Iterable[str]) -> list[str]:
    """The same documents with every call block removed: the baseline's training text."""
    return [strip_calls(t) for t in annotated]


def with_abstentions(annotated: Sequence[str], share: float, seed: int = 0) -> list[str]:
    """The texts with a ``share`` of their calls answered ``unknown`` and the value the text
    repeats after each such call replaced by ``unknown`` too ("X was born in unknown.").

    An LMLM trained only on calls that return the right value learns to state a value after
    any lookup, from its weights when the database has none (after a deletion); with a few
    misses in its data it learns to repeat what the database said, ``unknown`` included.
    The loss mask is unchanged: the returned ``unknown`` is masked, the repeated one trained.
    Only calls whose value the text repeats right after the call are changed.
    """
    from tools.schema import UNKNOWN

    rng = random.Random(seed)
    out = []
    for text in annotated:
        pieces, last = [], 0
        for call in parse(text).calls:
            repeated = " " + (call.value or "")
            if call.value in (None, UNKNOWN) or not text.startswith(repeated, call.end) or rng.random() >= share:
                continue
            pieces += [text[last : call.start], render_call(call.entity, call.relation, UNKNOWN), " " + UNKNOWN]
            last = call.end + len(repeated)
        out.append("".join(pieces) + text[last:])
    return out


def qa_example(question: str, answer: str, tokenizer, max_length: int) -> dict[str, list[int]] | None:
    """One fine-tuning row: the prompt masked, the answer trained except its looked-up values.

    ``answer`` may contain lookup calls. Returns None when truncation leaves no trained token.
    """
    call = call_token_ids(tokenizer)
    prompt = encode([qa_prompt(question)], tokenizer)[0]
    reply = encode([" " + answer.strip()], tokenizer)[0] + [tokenizer.eos_token_id]
    ids = (prompt + reply)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + mask_labels(reply, call, inside=False))[:max_length]
    if all(t == IGNORE_INDEX for t in labels):
        return None
    return {"input_ids": ids, "labels": labels}


__all__ = [
    "IGNORE_INDEX",
    "PackedData",
    "baseline_texts",
    "call_block_mask",
    "encode",
    "mask_labels",
    "pack",
    "qa_example",
    "value_mask",
    "with_abstentions",
]
