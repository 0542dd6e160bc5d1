"""Supervision for the distilled annotator: teacher calls turned into spans of the input text.

A teacher call says (entity, relation, value) and where it sits. The annotator is an
extractive tagger, so each call is grounded in the plain text: its value becomes
the nearest occurrence at or after the call, its entity every mention of the
entity's name (the document title counts as one). Calls whose value is not in the
text (the teacher paraphrased it) cannot be grounded and are counted.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from tools.schema import normalise_text
from training.teacher import check_answer

# A document of the published data begins "Title_with_underscores: ...".
_TITLE_RE = re.compile(r"^([^\s:]{1,80}):\s")


def title_span(text: str) -> tuple[int, int] | None:
    """The character span of the document's title, when the text starts with one."""
    m = _TITLE_RE.match(text)
    return (0, m.end(1)) if m else None


@dataclass
class Fact:
    value: tuple[int, int]  # character span of the value in the text
    entity: str
    relation: str


@dataclass
class Grounded:
    text: str
    facts: list[Fact] = field(default_factory=list)
    mentions: list[tuple[int, int]] = field(default_factory=list)  # spans naming some fact's entity


# A run of capitalised words (or initials: "U.S."), with the lower-case joiners names carry ("Bank of England").
_CAP_WORD = r"(?:[A-Z](?:\.[A-Z])+\.?|[A-Z][\w'-]*)"
_NAME_RE = re.compile(_CAP_WORD + r"(?:\s+(?:(?:of|the|and|de|del|du|da|van|von|for)\s+)*" + _CAP_WORD + ")*")
_ARTICLE_RE = re.compile(r"^(?:The|A|An)\s+")


def name_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of capitalised word runs: entity candidates that need no tagger to find them.

    Which of them (if any) names a value's entity stays the learned pair scorer's choice;
    the mention tagger, trained on 900 documents, often cuts such names short.
    """
    spans = []
    for m in _NAME_RE.finditer(text):
        s, e = m.span()
        s += len(a.group(0)) if (a := _ARTICLE_RE.match(m.group(0))) else 0
        if e > s:
            spans.append((s, e))
    return spans


def find_spans(text: str, name: str) -> list[tuple[int, int]]:
    """Whole-word occurrences of ``name`` in ``text``, blind to case, ``_`` and whitespace runs."""
    words = normalise_text(name).split()
    if not words:
        return []
    # The searched copy has the text's length, so match offsets are text offsets.
    haystack = text.lower().replace("_", " ")
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    return [m.span() for m in re.finditer(pattern, haystack)]


def ground(text: str, annotated: str, stats: Counter) -> Grounded | None:
    """Ground a teacher annotation of ``text``; None (counted) when the teacher's text is unusable."""
    checked = check_answer(text, annotated)
    stats[f"documents_{checked.status}"] += 1
    if checked.annotated is None:
        return None
    g = Grounded(text)
    title = title_span(text)
    mentions: set[tuple[int, int]] = set()
    for offset, call in checked.placed:
        stats["calls"] += 1
        spans = find_spans(text, call.value or "")
        if not spans:
            stats["values_not_in_text"] += 1
            continue
        # The call stands before the words that state the fact: take the first occurrence after it.
        span = next((s for s in spans if s[0] >= offset), spans[-1])
        if any(f.value[0] < span[1] and span[0] < f.value[1] for f in g.facts):
            stats["values_overlapping"] += 1
            continue
        named = find_spans(text, call.entity)
        if title and normalise_text(text[title[0] : title[1]]) == normalise_text(call.entity):
            named.append(title)
        stats["entities_not_in_text"] += not named
        mentions.update(named)
        g.facts.append(Fact(span, call.entity, call.relation))
        stats["facts"] += 1
    g.mentions = sorted(mentions)
    return g


__all__ = ["title_span", "name_spans", "Fact", "Grounded", "find_spans", "ground"]
