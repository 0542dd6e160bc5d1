"""The lookup-call format: four special tokens, a total parser, and converters.

A call is written *before* the words that state a fact, and the words still follow it::

    born in <|db_entity|> Ko Itakura<|db_relationship|> Birthplace<|db_return|> Yokohama<|db_end|> Yokohama

Rendering inserts ``block + " "`` at a character offset of the plain text, and
stripping removes ``block`` plus at most one following space, so
``strip_calls(insert_calls(text, placements)) == text`` for any plain text.

The parser is total: whatever the input (malformed, nested, truncated calls, stray
tokens, empty fields, any unicode), :func:`parse` returns segments whose source
texts concatenate back to the input, and never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Union

DB_ENTITY = "<|db_entity|>"
DB_RELATIONSHIP = "<|db_relationship|>"
DB_RETURN = "<|db_return|>"
DB_END = "<|db_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, DB_END)

_TOKEN_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


@dataclass(frozen=True)
class LookupCall:
    """One lookup: ``value`` is None while the call waits for the database."""

    entity: str
    relation: str
    value: str | None = None
    start: int = -1  # character span of the call block in the parsed text
    end: int = -1

    def render(self) -> str:
        return render_call(self.entity, self.relation, self.value)

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.entity, self.relation, self.value or "")


ErrorKind = Literal["stray_token", "out_of_order", "nested", "unterminated", "empty_field"]


@dataclass(frozen=True)
class ParseError:
    """A fragment that is not a well-formed call; ``fragment`` is its exact source text."""

    kind: ErrorKind
    message: str
    fragment: str
    start: int
    end: int
    entity: str | None = None
    relation: str | None = None


Segment = Union[str, LookupCall, ParseError]


@dataclass
class ParsedText:
    source: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def calls(self) -> list[LookupCall]:
        return [s for s in self.segments if isinstance(s, LookupCall)]

    @property
    def errors(self) -> list[ParseError]:
        return [s for s in self.segments if isinstance(s, ParseError)]

    @property
    def plain(self) -> str:
        """The ordinary text: calls (with one following space) and broken fragments removed."""
        out: list[str] = []
        after_call = False
        for seg in self.segments:
            if isinstance(seg, str):
                out.append(seg[1:] if after_call and seg.startswith(" ") else seg)
                after_call = False
            else:
                after_call = isinstance(seg, LookupCall)
        return "".join(out)

    @property
    def pending(self) -> LookupCall | None:
        """The call left open at the end of the text after ``<|db_return|>``: what to look up."""
        if self.segments and isinstance(self.segments[-1], ParseError):
            err = self.segments[-1]
            if (
                err.kind == "unterminated"
                and err.entity
                and err.relation
                and err.fragment.rstrip().endswith(DB_RETURN)
            ):
                return LookupCall(err.entity, err.relation, None, err.start, err.end)
        return None


# The prompt a question-answer follows (after one space); training and the agent share it.
QA_PROMPT = "Question: {question}\nAnswer:"


def qa_prompt(question: str) -> str:
    return QA_PROMPT.format(question=question.strip())


def render_call(entity: str, relation: str, value: str | None = None) -> str:
    """The call block; with ``value=None`` it ends at ``<|db_return|>`` (a query)."""
    head = f"{DB_ENTITY} {entity.strip()}{DB_RELATIONSHIP} {relation.strip()}{DB_RETURN}"
    if value is None:
        return head
    return f"{head} {value.strip()}{DB_END}"


def clean_field(field_text: str) -> str:
    """A field or value made safe to render: special tokens removed, whitespace runs one space."""
    return " ".join(_TOKEN_RE.sub(" ", field_text).split())


def insert_calls(plain: str, placements: Iterable[tuple[int, LookupCall]]) -> str:
    """Insert calls at character offsets of ``plain`` (several may share one offset)."""
    ordered = sorted(placements, key=lambda p: p[0])
    out: list[str] = []
    last = 0
    for offset, call in ordered:
        if not 0 <= offset <= len(plain):
            raise ValueError(f"offset {offset} outside text of length {len(plain)}")
        out.append(plain[last:offset])
        out.append(call.render() + " ")
        last = offset
    out.append(plain[last:])
    return "".join(out)


def parse(text: str) -> ParsedText:
    """Split text into plain strings, calls and errors. Never raises."""
    result = ParsedText(source=text)
    pieces = _TOKEN_RE.split(text)
    pos = 0
    # An open call: where it began and the fields seen so far, in token order.
    open_start: int | None = None
    expected: str | None = None  # the next special token the open call needs
    fields: list[str] = []

    def abandon(kind: ErrorKind, message: str, end: int) -> None:
        nonlocal open_start, expected, fields
        assert open_start is not None
        names = [f.strip() for f in fields]
        result.segments.append(
            ParseError(
                kind,
                message,
                text[open_start:end],
                open_start,
                end,
                entity=names[0] if names else None,
                relation=names[1] if len(names) > 1 else None,
            )
        )
        open_start, expected, fields = None, None, []

    for i, piece in enumerate(pieces):
        start, end = pos, pos + len(piece)
        pos = end
        is_token = i % 2 == 1
        if not piece:
            continue
        if open_start is None:
            if not is_token:
                result.segments.append(piece)
            elif piece == DB_ENTITY:
                open_start, expected, fields = start, DB_RELATIONSHIP, []
            else:
                result.segments.append(
                    ParseError("stray_token", f"{piece} outside a call", piece, start, end)
                )
            continue
        if not is_token:
            fields.append(piece)
            continue
        if piece == expected:
            if piece == DB_END:
                entity, relation, value = (
                    [f.strip() for f in fields] + ["", "", ""]
                )[:3]
                if len(fields) > 3 or not entity or not relation:
                    abandon("empty_field", "call with an empty entity or relation", end)
                else:
                    result.segments.append(
                        LookupCall(entity, relation, value, open_start, end)
                    )
                    open_start, expected, fields = None, None, []
                continue
            if len(fields) != len(_ORDER[: _ORDER.index(piece)]):
                fields.append("")
            expected = _ORDER[_ORDER.index(piece) + 1]
            continue
        if piece == DB_ENTITY:
            abandon("nested", "a new call began before the open one ended", start)
            open_start, expected, fields = start, DB_RELATIONSHIP, []
        else:
            abandon("out_of_order", f"{piece} where {expected} was expected", end)
    if open_start is not None:
        abandon("unterminated", f"call ends without {DB_END}", len(text))
    return result


# The order of tokens inside a call; fields are the texts between them.
_ORDER = (DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, DB_END)


def strip_calls(text: str) -> str:
    """The plain text: every call block (and one following space) and broken fragment removed."""
    return parse(text).plain


def list_calls(text: str) -> list[LookupCall]:
    return parse(text).calls


def extract_triples(text: str) -> list[tuple[str, str, str]]:
    """The (entity, relation, value) triples of the complete calls in ``text``."""
    return [c.triple for c in parse(text).calls if c.value]


def strip_values(text: str) -> str:
    """Keep the calls as queries but drop the returned values (what a model must generate)."""
    out: list[str] = []
    for seg in parse(text).segments:
        if isinstance(seg, str):
            out.append(seg)
        elif isinstance(seg, LookupCall):
            out.append(render_call(seg.entity, seg.relation))
    return "".join(out)


# --------------------------------------------------------------------------- legacy form
# The published annotator writes ``[dblookup('Entity', 'Relation') -> Value]``.

_LEGACY_OPEN = "[dblookup("
_LEGACY_ARGS_RE = re.compile(r"^\s*(['\"])(?P<e>.*?)\1\s*,\s*(['\"])(?P<r>.*)\3\s*$", re.S)
# ``)`` then ``->``; the published data once has a stray ``]`` in between: ``[dblookup('E', 'R')] -> V]``.
_LEGACY_ARROW_RE = re.compile(r"\)\]?\s*->")
# The head of an unreadable call: through the first ``)`` (and a ``]`` right after it) or ``]``.
_LEGACY_HEAD_RE = re.compile(r"[^)\]]*(\)\]?|\])")


@dataclass
class Conversion:
    """Converted text plus what converted and what had to be dropped (with the raw text)."""

    text: str
    converted: int = 0
    dropped: list[str] = field(default_factory=list)


def _legacy_end(text: str, arrow_end: int) -> int:
    """Index of the ``]`` closing a legacy call whose value starts at ``arrow_end``."""
    depth = 0
    for j in range(arrow_end, len(text)):
        ch = text[j]
        if ch == "[":
            if text.startswith(_LEGACY_OPEN, j):
                return -1  # the next call began: this one never closed
            depth += 1
        elif ch == "]":
            if depth == 0:
                return j
            depth -= 1
        elif ch == "\n":
            return -1
    return -1


def legacy_to_special(text: str) -> Conversion:
    """Convert ``[dblookup('E', 'R') -> V]`` calls to the special-token form.

    A call must close on its own line, before the next call. One that cannot be
    read (no arrow, unbalanced brackets, unquoted arguments, empty entity or
    relation) is counted in ``dropped`` and removed with one following space; of an
    unclosed call only the head ``[dblookup(...) ->`` goes, so the ordinary text is kept.
    """
    out: list[str] = []
    conv = Conversion(text="")
    i = 0
    while True:
        j = text.find(_LEGACY_OPEN, i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        args_start = j + len(_LEGACY_OPEN)
        limit = min(k for k in (text.find("\n", args_start), text.find(_LEGACY_OPEN, args_start), len(text)) if k >= 0)
        arrow = _LEGACY_ARROW_RE.search(text, args_start, limit)
        close = _legacy_end(text, arrow.end()) if arrow else -1
        if close < 0:  # unclosed: drop through the arrow, or the head, and keep what follows
            head = _LEGACY_HEAD_RE.match(text, args_start, limit)
            end = arrow.end() if arrow else head.end() if head else limit
            conv.dropped.append(text[j:end])
        else:
            m = _LEGACY_ARGS_RE.match(text[args_start : arrow.start()])
            if m and m.group("e").strip() and m.group("r").strip():
                value = text[arrow.end() : close]
                out.append(render_call(clean_field(m.group("e")), clean_field(m.group("r")), clean_field(value)))
                conv.converted += 1
                i = close + 1
                continue
            end = close + 1
            conv.dropped.append(text[j:end])
        i = end + 1 if text.startswith(" ", end) else end
    conv.text = "".join(out)
    return conv


def strip_legacy(text: str) -> str:
    """Plain text of a legacy-annotated document."""
    return strip_calls(legacy_to_special(text).text)


# --------------------------------------------------------------------------- MemLLM dialect
# Reads:  ({MEM_READ(subj>>rel>>;>>rel>>obj)-->res1;res2})   (an empty slot is what is asked)
# Writes: ({MEM_WRITE--> s>>r>>o;s2>>r2>>o2})

_MEM_READ_RE = re.compile(r"\(\{MEM_READ\((?P<queries>.*?)\)-->(?P<results>.*?)\}\)", re.S)
_MEM_WRITE_RE = re.compile(r"\(\{MEM_WRITE-->(?P<triples>.*?)\}\)", re.S)


@dataclass(frozen=True)
class MemoryQuery:
    """A MemLLM read: exactly one of ``subject`` / ``obj`` is empty (the one asked for)."""

    subject: str
    relation: str
    obj: str

    @property
    def asks_object(self) -> bool:
        return bool(self.subject) and not self.obj


@dataclass
class MemLLMParse:
    reads: list[tuple[list[MemoryQuery], list[str]]] = field(default_factory=list)
    writes: list[tuple[str, str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _split_triple(raw: str) -> tuple[str, str, str] | None:
    parts = [p.strip() for p in raw.split(">>")]
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def parse_memllm(text: str) -> MemLLMParse:
    """Read every MemLLM read and write in ``text``; unreadable ones go to ``dropped``."""
    out = MemLLMParse()
    for m in _MEM_READ_RE.finditer(text):
        queries: list[MemoryQuery] = []
        for raw in m.group("queries").split(";"):
            t = _split_triple(raw)
            if t and t[1] and (bool(t[0]) != bool(t[2])):
                queries.append(MemoryQuery(*t))
            elif raw.strip():
                out.dropped.append(raw)
        results = [r.strip() for r in m.group("results").split(";") if r.strip()]
        if queries:
            out.reads.append((queries, results))
    for m in _MEM_WRITE_RE.finditer(text):
        for raw in m.group("triples").split(";"):
            t = _split_triple(raw)
            if t and all(t):
                out.writes.append(t)
            elif raw.strip():
                out.dropped.append(raw)
    return out


def memllm_to_special(text: str) -> tuple[Conversion, list[tuple[str, str, str]]]:
    """Convert MemLLM reads that ask for an object into calls; return the writes as triples.

    Reads that ask for a subject (``>>rel>>obj``) have no counterpart in the
    LMLM format: they are removed and counted in ``dropped``.
    """
    conv = Conversion(text="")
    writes: list[tuple[str, str, str]] = []

    def read_sub(m: re.Match[str]) -> str:
        parsed = parse_memllm(m.group(0))
        if len(parsed.reads) == 1 and len(parsed.reads[0][0]) == 1:
            (query,), results = parsed.reads[0]
            if query.asks_object:
                conv.converted += 1
                return render_call(query.subject, query.relation, "; ".join(results))
        conv.dropped.append(m.group(0))
        return ""

    def write_sub(m: re.Match[str]) -> str:
        parsed = parse_memllm(m.group(0))
        writes.extend(parsed.writes)
        conv.dropped.extend(parsed.dropped)
        return ""

    conv.text = _MEM_WRITE_RE.sub(write_sub, _MEM_READ_RE.sub(read_sub, text))
    return conv, writes


def special_to_memllm(text: str) -> str:
    """Export: each complete call becomes a MemLLM object read with its value as result."""
    out: list[str] = []
    for seg in parse(text).segments:
        if isinstance(seg, str):
            out.append(seg)
        elif isinstance(seg, LookupCall):
            out.append(f"({{MEM_READ({seg.entity}>>{seg.relation}>>)-->{seg.value or ''}}})")
    return "".join(out)
