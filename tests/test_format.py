"""The lookup-call format: property tests, malformed calls, converters, and the published annotations."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlm_agent.format import (
    DB_END,
    DB_ENTITY,
    DB_RELATIONSHIP,
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

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Ordinary text: any unicode (no surrogates) in which no special token occurs.
plain_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60).filter(
    lambda t: not any(tok in t for tok in SPECIAL_TOKENS)
)
name = plain_text.map(str.strip).filter(bool)
# Special-token soup: tokens, their fragments and unicode, glued in any order.
soup = st.lists(
    st.one_of(st.sampled_from([*SPECIAL_TOKENS, "<|db_", "|>", "<|", " ", "\n", "é", "日本", "\U0001f600"]), plain_text),
    max_size=25,
).map("".join)


def source_of(text: str, seg) -> str:
    if isinstance(seg, str):
        return seg
    if isinstance(seg, ParseError):
        assert text[seg.start : seg.end] == seg.fragment
        return seg.fragment
    return text[seg.start : seg.end]


# --------------------------------------------------------------------------- properties

@FAST
@given(name, name, plain_text)
def test_render_then_parse_round_trips(entity, relation, value):
    block = render_call(entity, relation, value)
    (call,) = parse(block).segments
    assert (call.entity, call.relation, call.value) == (entity, relation, value.strip())
    assert (call.start, call.end) == (0, len(block))
    query = parse(render_call(entity, relation))
    assert query.pending == LookupCall(entity, relation, None, 0, len(render_call(entity, relation)))


@FAST
@given(plain_text, st.lists(st.tuples(st.integers(0, 60), name, name, plain_text), max_size=5))
def test_strip_of_insert_gives_the_plain_text_back(plain, raw):
    placements = [(min(off, len(plain)), LookupCall(e, r, v.strip())) for off, e, r, v in raw]
    annotated = insert_calls(plain, placements)
    assert strip_calls(annotated) == plain
    expected = [(c.entity, c.relation, c.value) for _, c in sorted(placements, key=lambda p: p[0])]
    assert [(c.entity, c.relation, c.value) for c in parse(annotated).calls] == expected
    assert parse(annotated).errors == []


@FAST
@given(soup)
def test_parse_is_total_and_segments_rebuild_the_input(text):
    parsed = parse(text)
    rebuilt, pos = [], 0
    for seg in parsed.segments:
        src = source_of(text, seg)
        if not isinstance(seg, str):
            assert seg.start == pos
        rebuilt.append(src)
        pos += len(src)
    assert "".join(rebuilt) == text
    plain = parsed.plain
    assert not any(tok in plain for tok in SPECIAL_TOKENS)
    assert strip_calls(plain) == plain
    # Every helper is total too.
    strip_values(text), extract_triples(text), special_to_memllm(text), legacy_to_special(text), parse_memllm(text)
    assert parsed.pending is None or text.rstrip().endswith(DB_RETURN)


# --------------------------------------------------------------------------- malformed calls, by hand

def kinds(text: str) -> list[str]:
    return [s.kind if isinstance(s, ParseError) else type(s).__name__ for s in parse(text).segments]


@pytest.mark.parametrize(
    "text,expected,plain",
    [
        (f"a {DB_ENTITY} A {DB_ENTITY} B{DB_RELATIONSHIP} r{DB_RETURN} v{DB_END} b", ["str", "nested", "LookupCall", "str"], "a b"),
        (f"a {DB_ENTITY} A{DB_RELATIONSHIP} r", ["str", "unterminated"], "a "),
        (f"a {DB_ENTITY} A{DB_RELATIONSHIP} r{DB_RETURN} 18", ["str", "unterminated"], "a "),
        (f"{DB_ENTITY}{DB_RELATIONSHIP} r{DB_RETURN} v{DB_END} x", ["empty_field", "str"], " x"),
        (f"{DB_ENTITY} A{DB_RELATIONSHIP}{DB_RETURN} v{DB_END}", ["empty_field"], ""),
        (f"{DB_ENTITY} A{DB_RETURN} v{DB_END} x", ["out_of_order", "str", "stray_token", "str"], " v x"),
        (f"{DB_END} a {DB_RETURN} b {DB_RELATIONSHIP}", ["stray_token", "str", "stray_token", "str", "stray_token"], " a  b "),
        (f"{DB_ENTITY} A{DB_RELATIONSHIP} r{DB_RETURN}{DB_END} x", ["LookupCall", "str"], "x"),
        (DB_ENTITY, ["unterminated"], ""),
        ("", [], ""),
    ],
)
def test_malformed_calls(text, expected, plain):
    assert kinds(text) == expected
    assert strip_calls(text) == plain


def test_empty_value_is_a_call_and_pending_needs_both_names():
    (call,) = parse(f"{DB_ENTITY} A{DB_RELATIONSHIP} r{DB_RETURN}{DB_END}").calls
    assert call.value == ""
    assert parse(f"x {DB_ENTITY} A{DB_RELATIONSHIP} r{DB_RETURN}").pending.entity == "A"
    assert parse(f"x {DB_ENTITY}{DB_RELATIONSHIP} r{DB_RETURN}").pending is None
    assert parse(f"x {DB_ENTITY} A{DB_RELATIONSHIP} r{DB_RETURN} 1{DB_END}").pending is None
    nested = parse(f"{DB_ENTITY} A {DB_ENTITY} B{DB_RELATIONSHIP} r{DB_RETURN}")
    assert (nested.pending.entity, nested.pending.relation) == ("B", "r")


# --------------------------------------------------------------------------- legacy form

@FAST
@given(
    st.text(st.characters(blacklist_characters="'\n[]", blacklist_categories=("Cs",)), max_size=20).map(str.strip).filter(bool),
    st.text(st.characters(blacklist_characters="'\n[]", blacklist_categories=("Cs",)), max_size=20).map(str.strip).filter(bool),
    st.text(st.characters(blacklist_characters="\n[]", blacklist_categories=("Cs",)), max_size=20),
)
def test_legacy_round_trip(entity, relation, value):
    if any(tok in entity + relation + value for tok in SPECIAL_TOKENS):
        return
    conv = legacy_to_special(f"x [dblookup('{entity}', '{relation}') -> {value}] y")
    assert conv.converted == 1 and conv.dropped == []
    (call,) = parse(conv.text).calls
    assert (call.entity, call.relation, call.value) == tuple(" ".join(f.split()) for f in (entity, relation, value))
    assert strip_calls(conv.text) == "x y"


@pytest.mark.parametrize(
    "text,converted,dropped,plain",
    [
        ("[dblookup('O'Brien', 'born') -> 1900] O'Brien", 1, 0, "O'Brien"),
        ('[dblookup("Bob \'B\'", "r") -> [1] v] t', 1, 0, "t"),
        ("[dblookup('Euramerica', 'Start')] -> near the equator] near", 1, 0, "near"),  # the published typo
        ("a [dblookup('A', 'B') text", 0, 1, "a text"),
        ("a [dblookup('A', 'B' -> x] text", 0, 1, "a text"),
        ("a [dblookup(A, B) -> v] text", 0, 1, "a text"),
        ("a [dblookup('', 'B') -> v] text", 0, 1, "a text"),
        ("a [dblookup('A', 'B') -> v\nnext line", 0, 1, "a v\nnext line"),
        ("a [dblookup('A", 0, 1, "a "),
        ("[dblookup('A', 'B') -> [dblookup('C', 'D') -> v] w", 1, 1, "w"),
    ],
)
def test_legacy_messy_calls(text, converted, dropped, plain):
    conv = legacy_to_special(text)
    assert (conv.converted, len(conv.dropped)) == (converted, dropped)
    assert strip_calls(conv.text) == plain


# --------------------------------------------------------------------------- MemLLM dialect

def test_memllm_reads_writes_and_export():
    text = "Ada was born ({MEM_READ(Ada>>birth year>>)-->1815}) 1815 ({MEM_READ(>>capital>>Paris)-->France}) ({MEM_WRITE--> Ada>>field>>maths;bad>>x})."
    parsed = parse_memllm(text)
    assert [(q.subject, q.relation, q.obj, q.asks_object) for q, in (r[0] for r in parsed.reads)] == [
        ("Ada", "birth year", "", True),
        ("", "capital", "Paris", False),
    ]
    assert parsed.writes == [("Ada", "field", "maths")] and parsed.dropped == ["bad>>x"]
    conv, writes = memllm_to_special(text)
    assert conv.converted == 1 and len(conv.dropped) == 2  # the subject read and the bad write
    assert extract_triples(conv.text) == [("Ada", "birth year", "1815")]
    assert writes == [("Ada", "field", "maths")]
    special = "born " + render_call("Ada", "birth year", "1815") + " 1815."
    back, _ = memllm_to_special(special_to_memllm(special))
    assert back.text == special


# --------------------------------------------------------------------------- the published annotations

# (documents, legacy calls, converted, dropped, documents whose stripped text equals the source text)
PUBLISHED = {
    "squad-train1k.gpt4o.json": (990, 6050, 6050, 0, 509),
    "squad-eval100.gpt4o.json": (99, 585, 585, 0, 53),
}


@pytest.mark.parametrize("filename", list(PUBLISHED))
def test_published_annotations_convert(annotations_dir, filename):
    examples = json.loads((annotations_dir / filename).read_text())["examples"]
    legacy = converted = dropped = exact = 0
    for ex in examples:
        conv = legacy_to_special(ex["annotated_text"])
        parsed = parse(conv.text)
        assert parsed.errors == [] and len(parsed.calls) == conv.converted
        legacy += ex["annotated_text"].count("[dblookup(")
        converted += conv.converted
        dropped += len(conv.dropped)
        exact += parsed.plain == ex["text"]
    assert (len(examples), legacy, converted, dropped, exact) == PUBLISHED[filename]
