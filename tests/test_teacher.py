"""Teacher client: answer checking, and a round trip through the offline endpoint with the real openai client."""

from __future__ import annotations

import time

import pytest

from lmlm_agent.format import render_call, strip_calls
from training.teacher import TeacherClient, TeacherConfig, check_answer
from training.teacher_server import create_app, load_records, requested_text, running_server

TEXT = "Ada Lovelace was born in 1815 in London."
GOOD = "Ada Lovelace was born in " + render_call("Ada Lovelace", "birth year", "1815") + " 1815 in London."


def test_check_answer_accepts_exact_and_legacy() -> None:
    assert check_answer(TEXT, GOOD).status == "ok"
    legacy = "Ada Lovelace was born in [dblookup('Ada Lovelace', 'birth year') -> 1815] 1815 in London."
    got = check_answer(TEXT, "```\n" + legacy + "\n```")
    assert got.status == "ok" and got.annotated == GOOD and got.calls == 1


def test_check_answer_realigns_small_edits_and_rejects_the_rest() -> None:
    edited = GOOD.replace("1815 in London", "1815, in London")
    got = check_answer(TEXT, edited)
    assert got.status == "realigned" and strip_calls(got.annotated) == TEXT and got.calls == 1
    assert check_answer(TEXT, edited, realign=False).status == "rejected_text"
    assert check_answer(TEXT, "I cannot help with that.").status == "rejected_text"
    broken = "Ada Lovelace was born in <|db_entity|> Ada Lovelace<|db_relationship|> 1815 in London."
    assert check_answer(TEXT, broken).status == "rejected_calls"


def test_requested_text_uses_markers_or_whole_message() -> None:
    from training.teacher import USER_TEMPLATE

    assert requested_text([{"role": "user", "content": USER_TEMPLATE.format(text=TEXT)}]) == TEXT
    assert requested_text([{"role": "user", "content": TEXT}]) == TEXT


@pytest.fixture(scope="module")
def eval_records(annotations_dir):
    return load_records([annotations_dir / "squad-eval100.gpt4o.json"])


def test_round_trip_over_loopback_with_cache(eval_records, tmp_path) -> None:
    texts = [t for t in list(eval_records)[:4]]
    # Keys are whitespace-normalised texts; the published texts have no runs, so they are the texts.
    config = TeacherConfig(cache_dir=tmp_path / "cache", progress=False, concurrency=2)
    with running_server(create_app(eval_records)) as url:
        config.base_url = url
        client = TeacherClient(config)
        assert [m.id for m in client._client.models.list()] == ["lmlm-offline-teacher"]
        results, summary = client.run(texts + ["A text nobody recorded.", "   "])
    assert [r.status for r in results[4:]] == ["unknown", "empty"]
    kept = [r for r in results[:4] if r.annotated is not None]
    assert kept and all(strip_calls(r.annotated) == r.text for r in kept)
    assert summary.documents == 6 and summary.prompt_tokens > 0 and summary.calls == sum(r.calls for r in kept)
    # The server is gone: a rerun is answered from the cache alone, at no token cost.
    config.base_url = "http://127.0.0.1:9/v1"
    again, summary2 = TeacherClient(config).run(texts)
    assert [r.status for r in again] == [r.status for r in results[:4]]
    assert summary2.cache_hits == 4 and summary2.prompt_tokens == 0


def test_timeouts_and_garbage_are_counted_not_raised(tmp_path) -> None:
    from fastapi import FastAPI

    app = FastAPI()
    calls = {"n": 0}

    @app.post("/v1/chat/completions")
    def slow_or_garbage(body: dict):
        calls["n"] += 1
        if "slow" in requested_text(body["messages"]):
            time.sleep(1.0)
        return {
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "garbage"}, "finish_reason": "stop"}],
        }

    with running_server(app) as url:
        config = TeacherConfig(base_url=url, cache_dir=None, progress=False, timeout_s=0.2, max_retries=1, backoff_s=0.01)
        results, summary = TeacherClient(config).run(["a slow text", "a normal text"])
    assert [r.status for r in results] == ["failed", "rejected_text"]
    assert "Timeout" in results[0].detail
    assert calls["n"] == 3  # the slow one was tried twice
    assert summary.kept == 0 and summary.statuses["failed"] == 1


def test_unreachable_teacher_fails_each_document(tmp_path) -> None:
    config = TeacherConfig(base_url="http://127.0.0.1:9/v1", cache_dir=None, progress=False, max_retries=0)
    results, summary = TeacherClient(config).run(["one", "two"])
    assert summary.statuses["failed"] == 2
