"""The documented invariants of lmlm_agent/format.py, on every input (hypothesis).

Inputs are random mixes of the four special tokens and their fragments, legacy
``[dblookup('E', 'R') -> V]`` and MemLLM ``({MEM_READ(...)-->...})`` fragments,
complete calls, words, any unicode and control characters. Each invariant is a
function returning what broke (an empty list when it holds), so the same checks
serve the hypothesis tests here and a seeded fuzz run over many more inputs.

The invariants (docs/ARCHITECTURE.md, "The lookup-call format"):

- parse: total; its segments' source texts concatenate to the input, every
  ``LookupCall``/``ParseError`` starts where the previous segment ended, a
  string segment is non-empty and holds no special token, a call has non-empty
  entity and relation and no special token in any field, an error's fragment is
  its source text; ``pending`` (if any) is the last segment and the input,
  right-stripped, ends with ``<|db_return|>``.
- strip_calls: total; its output holds no special token, so it is idempotent;
  on text without special tokens it is the identity; and
  ``strip_calls(insert_calls(t, p)) == t`` for every plain ``t`` (that one is
  tests/test_format.py's ``test_strip_of_insert_gives_the_plain_text_back``).
- strip_values: total; its output holds no ``<|db_end|>`` (no value can be read
  back), one query (``<|db_entity|>``) per complete call of the input, in order,
  and strips to the same plain text as the input minus broken fragments.
- legacy_to_special: total; every ``[dblookup(`` of the input is either
  converted or dropped (``converted + len(dropped) == count``), each dropped
  fragment is a piece of the input; on input without special tokens the output
  parses without errors into exactly ``converted`` calls.
- MemLLM: total; ``memllm_to_special`` returns the writes ``parse_memllm``
  reads; on input without special tokens its output parses without errors into
  exactly ``converted`` calls, and ``converted`` never exceeds the reads
  ``parse_memllm`` finds; ``memllm_to_special(special_to_memllm(t)).text == t``
  for well-formed ``t`` whose fields are clean (``clean_field(f) == f``) and whose
  fields and text hold none of the MemLLM delimiters ``> ; { }``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlm_agent.format import (
    DB_END,
    DB_ENTITY,
    DB_RETURN,
    SPECIAL_TOKENS,
    LookupCall,
    ParseError,
    extract_triples,
    insert_calls,
    legacy_to_special,
    memllm_to_special,
    parse,
    parse_memllm,
    render_call,
    special_to_memllm,
    strip_calls,
    strip_values,
)

PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LEGACY_OPEN = "[dblookup("
MEMLLM_DELIMITERS = ">;{}"


def has_token(text: str) -> bool:
    return any(tok in text for tok in SPECIAL_TOKENS)


# --------------------------------------------------------------------------- invariants

def parse_breaks(text: str) -> list[str]:
    parsed = parse(text)
    breaks: list[str] = []
    pos = 0
    for seg in parsed.segments:
        if isinstance(seg, str):
            if not seg or has_token(seg):
                breaks.append("parse: empty string segment or one holding a special token")
            src = seg
        else:
            if seg.start != pos:
                breaks.append("parse: a segment does not start where the previous ended")
            src = text[seg.start : seg.end]
            if isinstance(seg, ParseError) and seg.fragment != src:
                breaks.append("parse: an error's fragment is not its source text")
            if isinstance(seg, LookupCall) and (
                not seg.entity or not seg.relation or has_token(seg.entity + seg.relation + (seg.value or ""))
            ):
                breaks.append("parse: a call with an empty name or a special token in a field")
        pos += len(src)
    if "".join(s if isinstance(s, str) else text[s.start : s.end] for s in parsed.segments) != text:
        breaks.append("parse: segments do not concatenate to the input")
    pending = parsed.pending
    if pending is not None and not (
        text.rstrip().endswith(DB_RETURN) and parsed.segments[-1].start == pending.start
    ):
        breaks.append("parse: pending is not the open call at the end")
    return breaks


def strip_calls_breaks(text: str) -> list[str]:
    plain = strip_calls(text)
    breaks: list[str] = []
    if has_token(plain):
        breaks.append("strip_calls: output holds a special token")
    if strip_calls(plain) != plain:
        breaks.append("strip_calls: not idempotent")
    if not has_token(text) and plain != text:
        breaks.append("strip_calls: changed text without special tokens")
    return breaks


def strip_values_breaks(text: str) -> list[str]:
    queries = strip_values(text)
    breaks: list[str] = []
    if DB_END in queries or extract_triples(queries):
        breaks.append("strip_values: output holds a value (<|db_end|>)")
    if queries.count(DB_ENTITY) != len(parse(text).calls):
        breaks.append("strip_values: not one query per call")
    return breaks


def legacy_breaks(text: str) -> list[str]:
    conv = legacy_to_special(text)
    breaks: list[str] = []
    if conv.converted + len(conv.dropped) != text.count(LEGACY_OPEN):
        breaks.append("legacy: a [dblookup( neither converted nor dropped")
    if any(d not in text for d in conv.dropped):
        breaks.append("legacy: a dropped fragment is not from the input")
    if not has_token(text):
        parsed = parse(conv.text)
        if parsed.errors or len(parsed.calls) != conv.converted:
            breaks.append("legacy: output calls differ from the converted count")
    return breaks


def memllm_breaks(text: str) -> list[str]:
    conv, writes = memllm_to_special(text)
    read = parse_memllm(text)
    breaks: list[str] = []
    if writes != read.writes:
        breaks.append("memllm: memllm_to_special and parse_memllm disagree on writes")
    if conv.converted > len(read.reads):
        breaks.append("memllm: more conversions than reads")
    if not has_token(text):
        parsed = parse(conv.text)
        if parsed.errors or len(parsed.calls) != conv.converted:
            breaks.append("memllm: output calls differ from the converted count")
    special_to_memllm(text)
    return breaks


def all_breaks(text: str) -> list[str]:
    """Every invariant on one input (also what the seeded fuzz run counts)."""
    extract_triples(text)
    return parse_breaks(text) + strip_calls_breaks(text) + strip_values_breaks(text) + legacy_breaks(text) + memllm_breaks(text)


# --------------------------------------------------------------------------- generators

FRAGMENTS = [
    *SPECIAL_TOKENS,
    "<|db_", "<|", "|>", "entity|>", "end|>", "return|>", "relationship|>", "<|db_end", "db_",
    LEGACY_OPEN, "'", '"', ", ", ") -> ", ")] -> ", ") ->", "->", "]", "[", ")", "(",
    "({MEM_READ(", "({MEM_WRITE-->", ")-->", "})", ">>", ";", "({", "MEM_READ(",
    " ", "  ", "\n", "\t", "\r", "\x00", "\x0b", "\x1c", "\u2028", "\u200b", "\u00a0", "\ufeff",
    "é", "e\u0301", "日本", "\U0001f600", "\u05e9\u05dc\u05d5\u05dd", "ß",
    "Ada", "born", "1815", "Paris", "x", "",
]
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
plain_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(lambda t: not has_token(t))
field_text = plain_text.map(str.strip).filter(bool)

call_block = st.builds(
    render_call, field_text, field_text, st.one_of(st.none(), plain_text)
)
legacy_call = st.builds(
    lambda e, r, v, q: f"{LEGACY_OPEN}{q}{e}{q}, {q}{r}{q}) -> {v}]", field_text, field_text, plain_text, st.sampled_from("'\"")
)
memllm_read = st.builds(
    lambda s, r, o, res: f"({{MEM_READ({s}>>{r}>>{o})-->{res}}})", any_text, any_text, any_text, any_text
)
memllm_write = st.builds(lambda s, r, o: f"({{MEM_WRITE--> {s}>>{r}>>{o}}})", any_text, any_text, any_text)

mixed_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), any_text, call_block, legacy_call, memllm_read, memllm_write),
    max_size=30,
).map("".join)


# --------------------------------------------------------------------------- tests

@PROPERTIES
@given(mixed_text)
def test_parse_invariants(text):
    assert parse_breaks(text) == []


@PROPERTIES
@given(mixed_text)
def test_strip_calls_leaves_no_token_and_is_idempotent(text):
    assert strip_calls_breaks(text) == []


@PROPERTIES
@given(mixed_text)
def test_strip_values_leaves_only_queries(text):
    assert strip_values_breaks(text) == []


@PROPERTIES
@given(mixed_text)
def test_legacy_conversion_counts_every_call(text):
    assert legacy_breaks(text) == []


@PROPERTIES
@given(mixed_text)
def test_memllm_conversion_counts_consistently(text):
    assert memllm_breaks(text) == []


# Clean fields (what clean_field gives: single spaces) without MemLLM delimiters.
no_memllm = plain_text.filter(lambda t: not any(c in t for c in MEMLLM_DELIMITERS))
clean_name = no_memllm.map(lambda t: " ".join(t.split())).filter(bool)


@PROPERTIES
@given(no_memllm, st.lists(st.tuples(st.integers(0, 40), clean_name, clean_name, no_memllm), max_size=4))
def test_memllm_export_round_trips(plain, raw):
    placements = [(min(off, len(plain)), LookupCall(e, r, " ".join(v.split()))) for off, e, r, v in raw]
    special = insert_calls(plain, placements)
    back, writes = memllm_to_special(special_to_memllm(special))
    assert back.text == special and back.converted == len(placements) and writes == []


# --------------------------------------------------------------------------- the breaks the fuzz run found

def test_a_token_formed_by_removing_a_fragment_is_removed_too():
    # "<|db_" + a stray <|db_end|> + "end|>": dropping the stray token joins the halves into a token.
    text = f"a <|db_{DB_END}end|> b"
    assert strip_calls(text) == "a  b" and strip_calls_breaks(text) == []
    # The same join after a call made strip_values hand back a value: "<query> v<|db_end|>".
    text = render_call("A", "r", "1") + f" v<|db_{DB_END}end|>"
    assert strip_values(text) == render_call("A", "r") + " v" and strip_values_breaks(text) == []


def test_memllm_blocks_close_before_the_next_opens():
    # An unclosed write no longer swallows the read after it, and both functions see the same blocks.
    text = "({MEM_WRITE--> a>>b>>c ({MEM_READ(Ada>>born>>)-->1815}) x ({MEM_WRITE--> d>>e>>f})"
    conv, writes = memllm_to_special(text)
    assert conv.converted == 1 and writes == parse_memllm(text).writes == [("d", "e", "f")]
    assert conv.text == "({MEM_WRITE--> a>>b>>c " + render_call("Ada", "born", "1815") + " x "
    # An unclosed read before a closed one: only the closed one is a block.
    conv, _ = memllm_to_special("({MEM_READ(a>>b ({MEM_READ(Ada>>born>>)-->1815})")
    assert conv.converted == 1 and extract_triples(conv.text) == [("Ada", "born", "1815")]


def test_memllm_names_with_special_tokens_are_cleaned_or_dropped():
    conv, _ = memllm_to_special(f"({{MEM_READ(Ada{DB_END}L >>born>>)-->18{DB_RETURN}15}})")
    assert extract_triples(conv.text) == [("Ada L", "born", "18 15")] and parse(conv.text).errors == []
    conv, _ = memllm_to_special(f"({{MEM_READ({DB_END} >>born>>)-->1815}})")
    assert conv.converted == 0 and len(conv.dropped) == 1 and conv.text == ""


def test_legacy_arguments_full_of_quotes():
    # The entity is the shortest quoted run followed by a comma and a quote; the relation runs to the last quote.
    conv = legacy_to_special("[dblookup('a', 'b', 'c') -> v] t")
    assert extract_triples(conv.text) == [("a", "b', 'c", "v")]
    conv = legacy_to_special("[dblookup('a" + "', 'a" * 2000 + "x) -> v] t")
    assert conv.converted == 0 and len(conv.dropped) == 1 and strip_calls(conv.text) == "t"
