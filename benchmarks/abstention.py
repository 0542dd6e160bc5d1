"""Abstention after a miss: what an LMLM answers once its database has no row for the question.

The questions are the forget split's QA (TOFU's forget10 authors). Each is asked twice, greedy,
with the prompt the corpus drills use (``Question: ...\\nAnswer:``):

- before: with the full store: the share of answers that state the gold value;
- after: with a copy of the store from which those people were deleted: the share of answers
  that abstain (say ``unknown``) against the share that still state a value (the gold one,
  from the weights, or another: a hallucination in place of the fact); an answer that states
  no value ("X was born in" and nothing after) is neither.

Only the answer's first line is judged (a model may go on with a new ``Question:``). Shares
carry Wilson intervals; abstaining vs stating after the deletion is a paired comparison on the
same questions (``benchmarks.stats.compare``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

from benchmarks.cloze import is_hit
from benchmarks.stats import compare, wilson
from benchmarks.subject import Subject
from benchmarks.world import RELATION_BY_NAME, QAItem, template_parts
from tools.schema import UNKNOWN
from lmlm_agent.format import qa_prompt

CORRECT, ABSTAIN, STATED, EMPTY = "correct", "abstain", "stated", "empty"  # stated: a value other than the gold one


@dataclass
class AbstentionConfig:
    questions: int = field(default=200, metadata={"help": "Forget-split questions asked (at most the split's)."})
    max_new_tokens: int = field(default=32, metadata={"help": "Greedy tokens per answer: one sentence and its lookup."})


def first_line(answer: str) -> str:
    return re.split(r"\n|Question:", answer, maxsplit=1)[0].strip()


def _head(template: str) -> re.Pattern[str]:
    before, between, _ = template_parts(template)
    return re.compile(re.escape(before.lstrip()) + r".+?" + re.escape(between.rstrip()))


# The asked relation's heads are tried first; any relation's after them, with any name written for the person:
# "Where was X born?" answered "X was born on unknown." (another relation), or "Xy was born in unknown." (the name
# misspelled) states no value either.
_HEADS = {name: [_head(t) for t in relation.statements] for name, relation in RELATION_BY_NAME.items()}


def stated_part(line: str, item: QAItem) -> str:
    """The line less the sentence head of a relation's templates ("X was born in "): what it says the value is."""
    for head in [h for name in sorted(_HEADS, key=lambda n: n != item.relation) for h in _HEADS[name]]:
        m = head.match(line)
        if m:
            return line[m.end():]
    return line


def judge(answer: str, item: QAItem) -> str:
    """correct: the gold value is in the answer; abstain: its value is ``unknown`` and nothing else ("born on
    unknown 18." states a year); empty: it states no value; else stated. The value ends with its sentence."""
    line = first_line(answer)
    value = re.split(r"[.!?](?:\s|$)", stated_part(line, item), maxsplit=1)[0]
    words = re.findall(r"\w+", value.lower())
    if is_hit(line, item.value, k=len(re.findall(r"\w+", line))):
        return CORRECT
    if words == [UNKNOWN]:
        return ABSTAIN
    return STATED if words else EMPTY


@dataclass
class AbstentionResult:
    subject: str
    n: int
    correct_before: dict  # Estimate: answers stating the gold value, full store
    abstain_after: dict  # Estimate: answers that abstain once the people are deleted
    stated_after: dict  # Estimate: answers that state a value (gold or not) once they are deleted
    correct_after: dict  # Estimate: answers still stating the gold value (from the weights)
    abstain_vs_stated: dict  # Comparison: abstain share - stated share after deletion, paired
    answers: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_abstention(subject: Subject, items: Sequence[QAItem], config: AbstentionConfig) -> AbstentionResult:
    """``subject``: an LMLM with its store; the deletion is made on a copy (the store is not touched)."""
    from benchmarks.forgetting import copy_store

    if subject.store is None:
        raise ValueError("abstention after a deletion needs an LMLM with a store")
    items = list(items)[: config.questions]
    prompts = [qa_prompt(q.question) for q in items]
    before = subject.generate(prompts, config.max_new_tokens)
    deleted = replace(subject, store=copy_store(subject.store, without=dict.fromkeys(q.entity for q in items)))
    after = deleted.generate(prompts, config.max_new_tokens)
    verdicts = [(judge(b, q), judge(a, q)) for q, b, a in zip(items, before, after)]
    n = len(items)
    share = lambda which, label: wilson(sum(v[which] == label for v in verdicts), n).to_dict()  # noqa: E731
    abstained = [float(a == ABSTAIN) for _, a in verdicts]
    stated = [float(a in (CORRECT, STATED)) for _, a in verdicts]
    return AbstentionResult(
        subject.name, n, share(0, CORRECT), share(1, ABSTAIN),
        wilson(int(sum(stated)), n).to_dict(), share(1, CORRECT),
        compare(abstained, stated).to_dict(),
        [{"question": q.question, "value": q.value, "before": first_line(b), "after": first_line(a),
          "verdict_before": vb, "verdict_after": va} for q, b, a, (vb, va) in zip(items, before, after, verdicts)],
    )
