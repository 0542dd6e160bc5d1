"""The distilled annotator: grounding, windows, a tiny model trained two steps, corpus runs with bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lmlm_agent.format import render_call, strip_calls
from tools.schema import normalise_text
from training.annotator import (
    CASE_DIGIT,
    CASE_LOWER,
    CASE_NONE,
    CASE_OTHER,
    CASE_TITLE,
    CASE_UPPER,
    AnnotatorConfig,
    Annotator,
    Window,
    _candidate_features,
    _continues_word,
    _decode_bio,
    choose_values,
    value_candidates,
    make_windows,
    train_annotator,
    word_cores,
    word_ids,
)
from training.annotator_data import ground, name_spans, title_span
from training.annotator_run import annotate_corpus
from training.corpus import load_lmlm_annotations

DOC = "Ada_Lovelace: Ada Lovelace was born in 1815 in London. She wrote the first program."
ANNOTATED = (
    "Ada_Lovelace: Ada Lovelace was born in "
    + render_call("Ada Lovelace", "birth year", "1815")
    + " 1815 in "
    + render_call("Ada Lovelace", "birth place", "london")
    + " London. She wrote the "
    + render_call("Ada Lovelace", "known for", "the first computer program")
    + " first program."
)


def test_ground_finds_values_after_their_calls_and_entity_mentions() -> None:
    stats: Counter = Counter()
    g = ground(DOC, ANNOTATED, stats)
    assert [DOC[s:e] for s, e in (f.value for f in g.facts)] == ["1815", "London"]
    assert stats["values_not_in_text"] == 1  # the paraphrased value cannot be grounded
    assert [DOC[s:e] for s, e in g.mentions] == ["Ada_Lovelace", "Ada Lovelace"]
    assert title_span(DOC) == (0, 12) and title_span("No title here: at all") is None


def test_name_spans_are_whole_capitalised_runs() -> None:
    text = "The Bank of England in 1815 met U.S. Army officers. Lan Yu. The Ming founder Zhu Yuanzhang"
    assert [text[s:e] for s, e in name_spans(text)] == [
        "Bank of England", "U.S. Army", "Lan Yu", "Ming", "Zhu Yuanzhang"
    ]


def test_viterbi_tags_whole_words_and_never_starts_a_span_with_i() -> None:
    import torch

    text = "paid 50000 dollars on Monday"
    # Tokens: "paid", "500", "00", "dollars", "on", "Monday"; "00" continues "500".
    spans = [(0, 4), (5, 8), (8, 10), (11, 18), (19, 21), (22, 28)]
    w = Window(ids=[0] * 6, spans=spans, body=[True] * 6, title=None, word_of=word_ids(spans, word_cores(text)))
    cont = _continues_word(w)
    assert cont == [False, False, True, False, False, False]
    logits = torch.tensor(
        [
            [4.0, 0.0, 0.0],  # paid: O
            [0.0, 3.0, 0.0],  # 500: B
            [2.0, 0.0, 1.0],  # 00: argmax O would cut the number in two; a word is tagged whole (I)
            [0.0, 0.0, 4.0],  # dollars: I continues the value
            [6.0, 0.0, 0.0],  # on: O
            [0.0, 1.0, 4.0],  # Monday: an I right after an O is ill-formed; the best well-formed tag is B
        ]
    )
    # One batch: the window as is, the same with its last token not allowed, and a shorter one (padding).
    batch = torch.stack([logits, logits, logits])
    allowed = [[True] * 6, [True] * 5 + [False], [True] * 4]
    assert _decode_bio(batch, allowed, [cont, cont, cont[:4]]) == [[(1, 3), (5, 5)], [(1, 3)], [(1, 3)]]


def test_word_cores_keep_numbers_and_ranges_whole_and_drop_outer_punctuation() -> None:
    text = 'Paid $38,000 (1603–1639), to the U.S. Army—its "best" year; Germany\'s.[citation'
    words = [text[s:e] for s, e in word_cores(text)]
    assert words == ["Paid", "$38,000", "1603–1639", "to", "the", "U.S", "Army", "its", "best", "year", "Germany", "citation"]
    # "$", "38", ",", "000": one word, so a value cannot stop at "$"; the comma after ")" is not part of it.
    spans = [(5, 6), (6, 8), (8, 9), (9, 12), (13, 14), (14, 18), (18, 19), (19, 23), (23, 24), (24, 25)]
    w = Window(ids=[0] * len(spans), spans=spans, body=[True] * len(spans), title=None, word_of=word_ids(spans, word_cores(text)))
    assert _continues_word(w) == [False, True, True, True, False, False, True, True, False, False]


def test_value_candidates_are_whole_words_and_chosen_best_first_without_overlap(tokenizer) -> None:
    text = "Paid $38,000 (1603–1639) to U.S. Army."
    w = make_windows(tokenizer, text, 64)[0]
    assert [text[s:e] for s, e in w.word_chars] == ["Paid", "$38,000", "1603–1639", "to", "U.S", "Army"]
    assert [text[w.spans[a][0] : w.spans[b][1]] for a, b in w.words] == [text[s:e] for s, e in w.word_chars]
    assert value_candidates(4, 2) == [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3)]
    words = value_candidates(6, 3)
    logits = [-1.0] * len(words)
    logits[words.index((4, 5))] = 2.0  # "U.S Army"
    logits[words.index((5, 5))] = 3.0  # "Army": better, and it shares a word with "U.S Army", which loses
    logits[words.index((1, 1))] = 0.5  # "$38,000"
    logits[words.index((1, 2))] = 0.4  # overlaps "$38,000", which is better
    assert [words[i] for i in choose_values(logits, words)] == [(1, 1), (5, 5)]


def test_window_casing_classes(tokenizer) -> None:
    text = "NASA sent Ada 2 probes, ok"
    w = make_windows(tokenizer, text, 32)[0]
    pieces = [text[s[0] : s[1]] if s else "" for s in w.spans]
    case = {p: c for p, c in zip(pieces, w.case) if p}
    assert case == {"NASA": CASE_UPPER, "sent": CASE_LOWER, "Ada": CASE_TITLE, "2": CASE_DIGIT, ",": CASE_OTHER, "ok": CASE_LOWER} | {
        p: CASE_LOWER for p in pieces if p.startswith("prob") or p == "s"
    }
    assert w.case[0] == w.case[-1] == CASE_NONE  # [CLS], [SEP]


def test_candidate_features_mark_the_title_and_count_repeated_names() -> None:
    text = "Ada: Ada met Bo. Bo met Ada and Ada."
    spans = [(0, 3), (3, 4), (5, 8), (9, 12), (13, 15), (15, 16), (17, 19), (20, 23), (24, 27), (28, 31), (32, 35), (35, 36)]
    w = Window(ids=[0] * len(spans), spans=spans, body=[True] * len(spans), title=(0, 0))
    cands = [(0, 0), (2, 2), (4, 4), (6, 6), (10, 10)]  # title, Ada, Bo, Bo, Ada
    dist, count = _candidate_features(w, text, [(8, 8)], cands)
    assert count == [2, 2, 1, 1, 2]  # buckets count - 1: "ada" names three candidates, "bo" two
    assert dist[0][0] == 17  # the title has its own bucket, whatever its distance
    assert dist[0][1] < 8 < dist[0][4]  # before the value / after it


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from training.annotator import default_encoder

    return AutoTokenizer.from_pretrained(default_encoder())


def test_windows_cover_a_long_text_once_and_repeat_the_title(tokenizer) -> None:
    text = "Some_Title: " + " ".join(f"Sentence {i} says a thing about item {i}." for i in range(60))
    windows = make_windows(tokenizer, text, 48)
    assert len(windows) > 5 and all(len(w.ids) <= 48 for w in windows)
    body = [s for w in windows for s, b in zip(w.spans, w.body) if b]
    every = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert body == [tuple(o) for o in every]  # each token in exactly one window, in order
    assert all(text[w.spans[-2][0] : w.spans[-2][1]] == "." for w in windows)  # cut at sentence ends
    assert all(w.title is not None for w in windows)


@pytest.fixture(scope="module")
def tiny(annotations_dir, tmp_path_factory) -> Annotator:
    docs = load_lmlm_annotations(annotations_dir / "squad-train1k.gpt4o.json")[:8]
    config = AnnotatorConfig(encoder_layers=1, max_length=64, batch_size=4, max_steps=2, progress=False, calibration_documents=2)
    annotator, report = train_annotator([(d.plain, d.annotated) for d in docs], config)
    assert report.steps == 2 and report.documents == 6 and report.relations > 0
    assert report.calibration["documents"] == 2 and annotator.config.value_bias == report.calibration["chosen_value_bias"]
    path = annotator.save(tmp_path_factory.mktemp("annotator"))
    loaded = Annotator.load(path)
    assert loaded.relations == annotator.relations and loaded.config.value_bias == annotator.config.value_bias
    loaded.config.value_bias = 4.0  # an untrained tagger is shy: force calls so the corpus path has triples
    return loaded


BAD_INPUT = [
    "",
    "   \n ",
    "Zürich: Die Stadt Zürich liegt am Zürichsee und hat 1351 den Bund beschworen. 東京は日本の首都です。",
    "Long_document: " + " ".join(f"In {1800 + i} the town of Place{i} founded a school." for i in range(120)),
    "Ada wrote <|db_entity|> about engines.",
]


def test_tiny_annotator_round_trips_every_document(tiny) -> None:
    results = tiny.annotate(BAD_INPUT)
    assert [r.status for r in results] == ["empty", "empty", "ok", "ok", "contains_call_tokens"]
    assert all(strip_calls(r.annotated) == r.text for r in results[:4])
    assert results[4].annotated == BAD_INPUT[4]
    assert results[3].windows > 1 and results[3].calls  # split, annotated, re-joined
    for offset, call in results[3].calls:
        assert normalise_text(BAD_INPUT[3][offset : offset + len(call.value)]) == normalise_text(call.value)  # "_" reads as a space


def test_corpus_run_is_resumable_and_fills_the_knowledge_base(tiny, tmp_path) -> None:
    from tools import open_store

    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(BAD_INPUT)]
    src.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    out = tmp_path / "out.jsonl"
    store = open_store(tmp_path / "kb.sqlite", index=False)
    summary = annotate_corpus(tiny, src, out, store)
    assert summary["documents"] == 5 and summary["bad_lines"] == 1 and summary["empty"] == 2
    assert summary["contains_call_tokens"] == 1 and summary["split_documents"] >= 1
    assert store.count() > 0 and summary["triples_written"] == store.count()
    fact = next(iter(store.iter_facts()))
    doc_id, at = fact.source.removeprefix("doc:").split("@")
    row = next(json.loads(x) for x in out.read_text().splitlines() if json.loads(x)["id"] == doc_id)
    assert normalise_text(row["plain"][int(at) : int(at) + len(fact.value)]) == normalise_text(fact.value)
    assert all(strip_calls(json.loads(x)["text"]) == json.loads(x)["plain"] for x in out.read_text().splitlines()[:4])
    again = annotate_corpus(tiny, src, out, store)
    assert again.get("documents", 0) == 0 and again["skipped_done"] == 5
    assert len(out.read_text().splitlines()) == 5


def test_calibrate_command_rechooses_the_value_bias_in_place(tiny, annotations_dir, tmp_path) -> None:
    from typer.testing import CliRunner

    from lmlm_agent.cli import app

    original, tiny.config.value_bias = tiny.config.value_bias, 9.0  # far outside the grid: calibration must replace it
    path = tiny.save(tmp_path / "annotator")
    tiny.config.value_bias = original
    records = str(annotations_dir / "squad-train1k.gpt4o.json")
    result = CliRunner().invoke(app, ["annotate", "calibrate", "--records", records, "--annotator", str(path), "--documents", "3"])
    assert result.exit_code == 0, result.output
    meta = json.loads((path / "annotator.json").read_text())
    assert meta["train"]["calibration"]["documents"] == 3
    assert meta["config"]["value_bias"] == meta["train"]["calibration"]["chosen_value_bias"] != 9.0
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = CliRunner().invoke(app, ["annotate", "calibrate", "--records", str(empty), "--annotator", str(path)])
    assert result.exit_code != 0 and "no documents" in result.output
