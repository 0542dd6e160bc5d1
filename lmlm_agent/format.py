"""The lookup-call format: four special tokens, a total parser, and converters.

A call is written *before* the words that state a fact, and the words still follow it::

    born in <|db_entity|> Ko Itakura<|db_relationship|> Birthplace<|db_return|> Yokohama<|db_end|> Yokohama

Rendering inserts ``block + " "`` at a character offset of the plain text, and
stripping removes ``block`` plus at most one following space, so
``strip_calls(insert_calls(text, placements)) == text`` for any plain text.

The parser is total: whatever the input (malformed, nested, truncated calls, stray
tokens, empty fields, any unicode), :func:`parse` returns segments whose source
texts concatenate back to the input, and never raises. :func:`strip_calls` never
leaves a special token (so it is idempotent), :func:`strip_values` never leaves a
value, and the converters count every call they convert or drop; every function
takes time linear in its input. tests/test_format_properties.py states each
invariant precisely and checks it on generated input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal, Union

DB_ENTITY = "<|db_entity|>"
DB_RELATIONSHIP = "<|db_relationship|>"
DB_RETURN = "<|db_return|>"
DB_END = "<|db_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, DB_END)

_TOKEN_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
_LONGEST_TOKEN = max(len(t) for t in SPECIAL_TOKENS)


def _join_removing_formed_tokens(pieces: Iterable[str]) -> str:
    """Concatenate ``pieces``, removing every special token that only the joining forms.

    Dropping a fragment can join ``<|db_`` and ``end|>`` into ``<|db_end|>``; such a
    token is removed like a stray one, and so is the next one its removal forms.
    Tokens inside a piece are kept. Linear: each removal shortens the output by a
    whole token, only the last ``_LONGEST_TOKEN - 1`` characters of the output and
    the next ones of the piece are searched, and the output is cut by moving an end
    index, never by copying. (Two tokens never overlap: each holds ``<|`` only at
    its start, so a token across a join cannot overlap a kept one.)
    """
    out = _CuttableText()
    reach = _LONGEST_TOKEN - 1
    for piece in pieces:
        at = 0
        # A token across the join ends in the piece's head (with ">") and starts in the output's tail (with "<").
        while at < len(piece) and ">" in piece[at : at + reach]:
            tail = out.last(reach)
            if "<" not in tail:
                break
            window = tail + piece[at : at + reach]
            formed = next((m for m in _TOKEN_RE.finditer(window) if m.start() < len(tail) < m.end()), None)
            if formed is None:
                break
            out.drop(len(tail) - formed.start())
            at += formed.end() - len(tail)
        out.append(piece[at:] if at else piece)
    return out.text()


class _CuttableText:
    """Text built from parts, whose end can be read and cut cheaply: part ``k`` counts up to ``ends[k]``."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.ends: list[int] = []

    def append(self, part: str) -> None:
        if part:
            self.parts.append(part)
            self.ends.append(len(part))

    def last(self, n: int) -> str:
        taken: list[str] = []
        size = 0
        for part, end in zip(reversed(self.parts), reversed(self.ends)):
            if size >= n:
                break
            taken.append(part[max(0, end - (n - size)) : end])
            size += len(taken[-1])
        return "".join(reversed(taken))

    def drop(self, n: int) -> None:
        while n > 0:
            cut = min(n, self.ends[-1])
            self.ends[-1] -= cut
            n -= cut
            if self.ends[-1] == 0:
                self.parts.pop()
                self.ends.pop()

    def text(self) -> str:
        return "".join(p if e == len(p) else p[:e] for p, e in zip(self.parts, self.ends))


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
        """The ordinary text: calls (with one following space) and broken fragments removed.

        It holds no special token: one that the removals would form by joining the
        text around them (``<|db_`` + ``end|>``) is removed too, so ``strip_calls``
        is idempotent.
        """
        out: list[str] = []
        after_call = False
        for seg in self.segments:
            if isinstance(seg, str):
                out.append(seg[1:] if after_call and seg.startswith(" ") else seg)
                after_call = False
            else:
                after_call = isinstance(seg, LookupCall)
        return _join_removing_formed_tokens(out)

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
    """Keep the calls as queries but drop the returned values (what a model must generate).

    Broken fragments are dropped; the output holds no ``<|db_end|>``, so no value can be read back.
    """
    out: list[str] = []
    for seg in parse(text).segments:
        if isinstance(seg, str):
            out.append(seg)
        elif isinstance(seg, LookupCall):
            out.append(render_call(seg.entity, seg.relation))
    return _join_removing_formed_tokens(out)


# --------------------------------------------------------------------------- legacy form
# The published annotator writes ``[dblookup('Entity', 'Relation') -> Value]``.

_LEGACY_OPEN = "[dblookup("
_LEGACY_QUOTES = "'\""
# Between the two quoted arguments.
_LEGACY_SEPARATOR_RE = re.compile(r"\s*,\s*")
# ``)`` then ``->``; the published data once has a stray ``]`` in between: ``[dblookup('E', 'R')] -> V]``.
_LEGACY_ARROW_RE = re.compile(r"\)\]?\s*->")
# The head of an unreadable call: through the first ``)`` (and a ``]`` right after it) or ``]``.
_LEGACY_HEAD_RE = re.compile(r"[^)\]]*(\)\]?|\])")
_BRACKET_RE = re.compile(r"[\[\]]")


@dataclass
class Conversion:
    """Converted text plus what converted and what had to be dropped (with the raw text)."""

    text: str
    converted: int = 0
    dropped: list[str] = field(default_factory=list)


def _legacy_args(args: str) -> tuple[str, str] | None:
    """Entity and relation of ``'E', 'R'`` (either quote, quotes allowed inside: ``'O'Brien'``).

    The entity is the shortest quoted run that a ``,`` and the relation's opening
    quote follow; the relation runs to the last quote. One pass over ``args``
    (a backtracking regex took quadratic time on arguments full of quotes).
    """
    body = args.strip()
    if len(body) < 2 or body[0] not in _LEGACY_QUOTES or body[-1] not in _LEGACY_QUOTES:
        return None
    entity_quote, relation_quote, last = body[0], body[-1], len(body) - 1
    k = body.find(entity_quote, 1)
    while 0 <= k < last:
        sep = _LEGACY_SEPARATOR_RE.match(body, k + 1)
        if sep and sep.end() < last and body[sep.end()] == relation_quote:
            return body[1:k], body[sep.end() + 1 : last]
        k = body.find(entity_quote, k + 1)
    return None


def _legacy_end(text: str, start: int, limit: int) -> int:
    """Index of the ``]`` closing a legacy call whose value runs from ``start``; -1 if none before ``limit``."""
    depth = 0
    for m in _BRACKET_RE.finditer(text, start, limit):
        if m.group() == "[":
            depth += 1
        elif depth == 0:
            return m.start()
        else:
            depth -= 1
    return -1


def legacy_to_special(text: str) -> Conversion:
    """Convert ``[dblookup('E', 'R') -> V]`` calls to the special-token form.

    A call must close on its own line, before the next call. One that cannot be
    read (no arrow, unbalanced brackets, unquoted arguments, empty entity or
    relation) is counted in ``dropped`` and removed with one following space; of an
    unclosed call only the head ``[dblookup(...) ->`` goes, so the ordinary text is kept.
    Every ``[dblookup(`` is either converted or dropped. Linear time: each call is
    read up to the next call or the end of its line, found once.
    """
    out: list[str] = []
    conv = Conversion(text="")
    i = 0
    newline = -1  # the first "\n" at or after the arguments of the current call (len(text): none)
    j = text.find(_LEGACY_OPEN)
    while j >= 0:
        out.append(text[i:j])
        args_start = j + len(_LEGACY_OPEN)
        next_open = text.find(_LEGACY_OPEN, args_start)
        if newline < args_start:
            newline = text.find("\n", args_start)
            newline = len(text) if newline < 0 else newline
        limit = min(newline, next_open) if next_open >= 0 else newline
        arrow = _LEGACY_ARROW_RE.search(text, args_start, limit)
        close = _legacy_end(text, arrow.end(), limit) if arrow else -1
        names = _legacy_args(text[args_start : arrow.start()]) if close >= 0 else None
        if names and names[0].strip() and names[1].strip():
            value = text[arrow.end() : close]
            out.append(render_call(clean_field(names[0]), clean_field(names[1]), clean_field(value)))
            conv.converted += 1
            i = close + 1
        else:
            if close >= 0:
                end = close + 1
            else:  # unclosed: drop through the arrow, or the head, and keep what follows
                head = _LEGACY_HEAD_RE.match(text, args_start, limit)
                end = arrow.end() if arrow else head.end() if head else limit
            conv.dropped.append(text[j:end])
            i = end + 1 if text.startswith(" ", end) else end
        j = next_open
    out.append(text[i:])
    conv.text = _join_removing_formed_tokens(out)
    return conv


def strip_legacy(text: str) -> str:
    """Plain text of a legacy-annotated document."""
    return strip_calls(legacy_to_special(text).text)


# --------------------------------------------------------------------------- MemLLM dialect
# Reads:  ({MEM_READ(subj>>rel>>;>>rel>>obj)-->res1;res2})   (an empty slot is what is asked)
# Writes: ({MEM_WRITE--> s>>r>>o;s2>>r2>>o2})

_MEM_READ_OPEN, _MEM_READ_ARROW, _MEM_WRITE_OPEN, _MEM_CLOSE = "({MEM_READ(", ")-->", "({MEM_WRITE-->", "})"
_MEM_OPEN_RE = re.compile("|".join(re.escape(o) for o in (_MEM_READ_OPEN, _MEM_WRITE_OPEN)))


@dataclass(frozen=True)
class _MemBlock:
    """One read (``body`` the queries, ``results``) or write (``body`` the triples), at ``start:end``."""

    is_read: bool
    start: int
    end: int
    body: str
    results: str = ""


def _memllm_blocks(text: str) -> Iterator[_MemBlock]:
    """The MemLLM reads and writes of ``text``, left to right.

    A read runs from ``({MEM_READ(`` to the first ``)-->`` and then the first
    ``})``; a write from ``({MEM_WRITE-->`` to the first ``})``. Like a legacy
    call, a block must close before the next block opens: an opening that does
    not is ordinary text. Each stretch between two openings is searched once, so
    the time is linear (a lazy regex retried every unclosed opening up to the end
    of the text: quadratic).
    """
    openings = [(m.start(), m.group() == _MEM_READ_OPEN) for m in _MEM_OPEN_RE.finditer(text)]
    for k, (start, is_read) in enumerate(openings):
        limit = openings[k + 1][0] if k + 1 < len(openings) else len(text)
        if is_read:
            body_start = start + len(_MEM_READ_OPEN)
            arrow = text.find(_MEM_READ_ARROW, body_start, limit)
            close = text.find(_MEM_CLOSE, arrow + len(_MEM_READ_ARROW), limit) if arrow >= 0 else -1
            if close >= 0:
                results = text[arrow + len(_MEM_READ_ARROW) : close]
                yield _MemBlock(True, start, close + len(_MEM_CLOSE), text[body_start:arrow], results)
        else:
            body_start = start + len(_MEM_WRITE_OPEN)
            close = text.find(_MEM_CLOSE, body_start, limit)
            if close >= 0:
                yield _MemBlock(False, start, close + len(_MEM_CLOSE), text[body_start:close])


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


def _read_queries(block: _MemBlock, dropped: list[str]) -> tuple[list[MemoryQuery], list[str]]:
    """The well-formed queries and the results of a read; unreadable queries go to ``dropped``."""
    queries: list[MemoryQuery] = []
    for raw in block.body.split(";"):
        t = _split_triple(raw)
        if t and t[1] and (bool(t[0]) != bool(t[2])):
            queries.append(MemoryQuery(*t))
        elif raw.strip():
            dropped.append(raw)
    return queries, [r.strip() for r in block.results.split(";") if r.strip()]


def _write_triples(block: _MemBlock, dropped: list[str]) -> list[tuple[str, str, str]]:
    """The complete triples of a write; unreadable ones go to ``dropped``."""
    triples: list[tuple[str, str, str]] = []
    for raw in block.body.split(";"):
        t = _split_triple(raw)
        if t and all(t):
            triples.append(t)
        elif raw.strip():
            dropped.append(raw)
    return triples


def parse_memllm(text: str) -> MemLLMParse:
    """Read every MemLLM read and write in ``text``; unreadable ones go to ``dropped``."""
    out = MemLLMParse()
    for block in _memllm_blocks(text):
        if block.is_read:
            queries, results = _read_queries(block, out.dropped)
            if queries:
                out.reads.append((queries, results))
        else:
            out.writes.extend(_write_triples(block, out.dropped))
    return out


def memllm_to_special(text: str) -> tuple[Conversion, list[tuple[str, str, str]]]:
    """Convert MemLLM reads that ask for an object into calls; return the writes as triples.

    Reads that ask for a subject (``>>rel>>obj``), several queries in one read, and
    reads whose subject or relation is empty once special tokens are removed have
    no counterpart in the LMLM format: they are removed and counted in ``dropped``.
    Names and the value are cleaned (:func:`clean_field`), so each conversion is
    exactly one well-formed call; the writes are those :func:`parse_memllm` reads.
    """
    conv = Conversion(text="")
    writes: list[tuple[str, str, str]] = []
    out: list[str] = []
    pos = 0
    for block in _memllm_blocks(text):
        out.append(text[pos : block.start])
        pos = block.end
        if not block.is_read:
            writes.extend(_write_triples(block, conv.dropped))
            continue
        queries, results = _read_queries(block, [])
        if len(queries) == 1 and queries[0].asks_object:
            entity, relation = clean_field(queries[0].subject), clean_field(queries[0].relation)
            if entity and relation:
                conv.converted += 1
                out.append(render_call(entity, relation, clean_field("; ".join(results))))
                continue
        conv.dropped.append(text[block.start : block.end])
    out.append(text[pos:])
    conv.text = _join_removing_formed_tokens(out)
    return conv, writes


def render_memllm_write(entity: str, relation: str, value: str) -> str | None:
    """A MemLLM memory write of one triple, or None when a field holds what the dialect uses as syntax."""
    fields = (entity, relation, value)
    if any(mark in f for f in fields for mark in (">>", ";", _MEM_CLOSE, "\n")) or not all(f.strip() for f in fields):
        return None
    return f"{_MEM_WRITE_OPEN} {entity}>>{relation}>>{value}{_MEM_CLOSE}"


def special_to_memllm(text: str) -> str:
    """Export: each complete call becomes a MemLLM object read with its value as result."""
    out: list[str] = []
    for seg in parse(text).segments:
        if isinstance(seg, str):
            out.append(seg)
        elif isinstance(seg, LookupCall):
            out.append(f"({{MEM_READ({seg.entity}>>{seg.relation}>>)-->{seg.value or ''}}})")
    return _join_removing_formed_tokens(out)
