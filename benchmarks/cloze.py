"""T-REx-style cloze: complete "X was born in ___" with the object.

- Generation: the prompt is the text before the object; an LMLM is forced to begin a
  lookup (``<|db_entity|>``), the baseline simply continues; a hit is the gold object
  within the first 5 words of the plain continuation (the LMLM's lookup block removed,
  so it must state the value like any model).
- Teacher forcing: token precision@1 over the object's tokens (micro-averaged) and
  their mean NLL, given the prompt, plus for an LMLM the gold call with the value its
  database returns (``unknown`` with the database off).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field

from benchmarks.stats import wilson
from benchmarks.subject import Subject
from benchmarks.world import RELATION_BY_NAME, World
from lmlm_agent.format import render_call


@dataclass(frozen=True)
class ClozeItem:
    prompt: str  # the text before the object, without the trailing space
    entity: str
    relation: str
    answer: str


def cloze_items(world: World, n: int | None = 200, seed: int = 0) -> list[ClozeItem]:
    """One item per gold fact (a random sample of ``n``), each with a random statement template."""
    rng = random.Random(seed)
    triples = world.triples
    if n is not None and n < len(triples):
        triples = rng.sample(triples, n)
    items = []
    for entity, relation, value in triples:
        template = rng.choice(RELATION_BY_NAME[relation].statements)
        items.append(ClozeItem(template.split("{v}")[0].format(e=entity).rstrip(), entity, relation, value))
    return items


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def is_hit(continuation: str, answer: str, k: int = 5) -> bool:
    """Whether the answer's words appear, in order and adjacent, within the first ``k`` words."""
    head, gold = _words(continuation)[:k], _words(answer)
    return bool(gold) and any(head[i : i + len(gold)] == gold for i in range(len(head) - len(gold) + 1))


@dataclass
class ClozeConfig:
    max_new_tokens: int = field(default=40, metadata={"help": "Greedy tokens per item: a lookup block and 5 words."})
    words: int = field(default=5, metadata={"help": "A hit is the object within this many first words."})


@dataclass
class ClozeResult:
    subject: str
    n: int
    hit_at_k: float
    precision_at_1: float  # object tokens predicted top-1 under teacher forcing, micro-averaged
    object_nll: float  # mean NLL per object token under teacher forcing
    hit_interval: dict = field(default_factory=dict)  # Estimate: Wilson 95 % interval of hit@k
    hits: list[int] = field(default_factory=list, repr=False)  # per item, in item order (for paired tests)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_cloze(subject: Subject, items: list[ClozeItem], config: ClozeConfig) -> ClozeResult:
    if not items:
        return ClozeResult(subject.name, 0, math.nan, math.nan, math.nan)
    # In training text a call follows a space ("born in <|db_entity|> ..."), so a forced call does too.
    lead = " " if subject.is_lmlm else ""
    outputs = subject.generate([it.prompt + lead for it in items], config.max_new_tokens, force_call=True)
    hits = [is_hit(o, it.answer, config.words) for o, it in zip(outputs, items)]
    if subject.is_lmlm:
        contexts = [f"{it.prompt} {render_call(it.entity, it.relation, subject.lookup(it.entity, it.relation))}"
                    for it in items]
    else:
        contexts = [it.prompt for it in items]
    forced = subject.teacher_forced(contexts, [" " + it.answer for it in items])
    correct, tokens, nll = (sum(col) for col in zip(*forced))
    interval = wilson(sum(hits), len(hits))
    return ClozeResult(subject.name, len(items), interval.value, correct / tokens, nll / tokens, interval.to_dict(),
                       [int(h) for h in hits])
