"""The agreement metric on hand-computed cases."""

from __future__ import annotations

import json

import pytest

from lmlm_agent.format import LookupCall, render_call
from tools.schema import normalise_text
from training.annotation_eval import AgreementReport, agreement, score_document


def call(e: str, r: str, v: str) -> LookupCall:
    return LookupCall(e, r, v)


def test_normalise() -> None:
    assert normalise_text("  Yuan_Dynasty \n Emperors ") == "yuan dynasty emperors"


def test_multiset_matching_by_hand() -> None:
    predicted = [call("Ada", "born", "1815"), call("Ada", "born", "1815"), call("Bob", "city", "Paris")]
    reference = [call("ada", "birth year", "1815"), call("Carl", "city", "paris"), call("Ada", "x", "London")]
    s = score_document(predicted, reference)
    # values: pred {1815 x2, paris}, ref {1815, paris, london} -> 2 matched
    assert (s["value"].tp, s["value"].predicted, s["value"].reference) == (2, 3, 3)
    # (entity, value): pred {(ada,1815) x2, (bob,paris)}, ref {(ada,1815), (carl,paris), (ada,london)} -> 1
    assert s["entity_value"].tp == 1
    assert s["triple"].tp == 0
    assert s["value"].precision == pytest.approx(2 / 3)
    assert s["entity_value"].f1 == pytest.approx(1 / 3)


def test_micro_average_over_documents_and_report(tmp_path) -> None:
    doc1 = render_call("A", "r", "1") + " 1"
    doc2 = render_call("B", "r", "2") + " 2 " + render_call("B", "s", "3") + " 3"
    report = agreement([(doc1, doc1), ("2 3", doc2)])
    assert report.documents == 2
    c = report.counts["triple"]
    assert (c.tp, c.predicted, c.reference) == (1, 1, 3)
    assert c.precision == 1.0 and c.recall == pytest.approx(1 / 3) and c.f1 == pytest.approx(0.5)
    js, md = report.write(tmp_path)
    assert json.loads(js.read_text())["scores"]["triple"]["f1"] == pytest.approx(0.5)
    assert "| triple | 1.000 | 0.333 | 0.500 |" in md.read_text()


def test_empty_sides_score_zero_without_error() -> None:
    assert score_document([], [])["value"].f1 == 0.0
    assert AgreementReport().counts["value"].precision == 0.0
