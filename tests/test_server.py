"""The OpenAI-compatible server, driven over loopback by the real `openai` client (and httpx for the rest)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlm_agent.agent import LMLMAgent
from lmlm_agent.chat_model import render_prompt
from lmlm_agent.format import strip_values
from lmlm_agent.server import ServerConfig, create_app
from training.teacher_server import running_server  # uvicorn in a thread on a free loopback port
from runtime_fakes import ScriptedLM, tokenizer

TOKEN = "s3cret-token"
QUESTION = "When was Ada Lovelace born?"
ANSWER = "<|db_entity|> Ada Lovelace<|db_relationship|> birth year<|db_return|> 1815<|db_end|> Ada Lovelace was born in 1815."
RAW_PROMPT = "Ada Lovelace was born in"
CONTINUATION = " <|db_entity|> Ada Lovelace<|db_relationship|> birth year<|db_return|> 1815<|db_end|> 1815 in London."


@pytest.fixture(scope="module")
def served():
    """(base_url, store): a scripted LMLM over an in-memory store, served on a free loopback port."""
    from langchain_core.messages import HumanMessage

    from tools import open_store

    tok = tokenizer()
    scripts = {render_prompt([HumanMessage(QUESTION)]): ANSWER, RAW_PROMPT: CONTINUATION}
    model = ScriptedLM(tok, {p: strip_values(s) for p, s in scripts.items()})
    store = open_store(None, index=False)
    store.write("Ada Lovelace", "birth year", "1815", source="doc:ada@12")
    app = create_app(LMLMAgent(model, tok, store), ServerConfig(token=TOKEN, max_tokens=64, max_request_bytes=20_000))
    with running_server(app) as url:
        yield url, store


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0], api_key="anything", max_retries=0, timeout=30)


@pytest.fixture
def http(served) -> httpx.Client:
    with httpx.Client(base_url=served[0].removesuffix("/v1"), timeout=30) as c:
        yield c


def ask(client: openai.OpenAI, **extra):
    return client.chat.completions.create(model="lmlm", messages=[{"role": "user", "content": QUESTION}], **extra)


def test_models(client) -> None:
    assert [m.id for m in client.models.list()] == ["lmlm"]
    assert client.models.retrieve("lmlm").owned_by == "lmlm-agent"


def test_chat_completion_with_citations(client) -> None:
    resp = ask(client)
    assert resp.choices[0].message.content == "Ada Lovelace was born in 1815."
    assert resp.choices[0].finish_reason == "stop"
    (cite,) = resp.model_extra["citations"]
    assert {k: cite[k] for k in ("entity", "relation", "value", "source", "namespace")} == {
        "entity": "Ada Lovelace", "relation": "birth year", "value": "1815", "source": "doc:ada@12", "namespace": "default"}
    assert isinstance(cite["fact_id"], int)
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0


def test_chat_stream_matches_and_cites(client) -> None:
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ask(client).choices[0].message.content
    cites = [x for c in chunks for x in (c.model_extra or {}).get("citations", [])]
    assert [c["value"] for c in cites] == ["1815"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_text_completion_keeps_spacing(client) -> None:
    resp = client.completions.create(model="lmlm", prompt=RAW_PROMPT, max_tokens=30)
    assert resp.choices[0].text == " 1815 in London."
    assert [c["value"] for c in resp.model_extra["citations"]] == ["1815"]
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="lmlm", prompt=RAW_PROMPT, max_tokens=30, stream=True))
    assert streamed == " 1815 in London."


def test_knowledge_write_needs_the_token_and_changes_answers(client, http) -> None:
    fact = {"entity": "Ada Lovelace", "relation": "birth year", "value": "1816", "source": "correction"}
    assert http.post("/v1/knowledge/team/facts", json=fact).status_code == 401
    wrong = http.post("/v1/knowledge/team/facts", json=fact, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    written = http.post("/v1/knowledge/team/facts", json=fact, headers=auth)
    assert written.status_code == 201 and written.json()["action"] == "inserted"
    # Reads are public; the namespace is a hard boundary.
    assert http.get("/v1/knowledge/team/lookup", params={"entity": "Ada Lovelace", "relation": "birth year"}).json()["value"] == "1816"
    assert http.get("/v1/knowledge/default/lookup", params={"entity": "Ada Lovelace", "relation": "birth year"}).json()["value"] == "1815"
    assert http.get("/v1/knowledge/team/facts").json()["total"] == 1
    # A running server answers from the new row (the namespace travels as an extra body field).
    (cite,) = ask(client, extra_body={"namespace": "team"}).model_extra["citations"]
    assert (cite["value"], cite["source"], cite["namespace"]) == ("1816", "correction", "team")
    gone = http.request("DELETE", "/v1/knowledge/team/facts", params={"entity": "Ada Lovelace"}, headers=auth)
    assert gone.status_code == 200 and gone.json()["verified"] and len(gone.json()["removed"]) == 1
    assert ask(client, extra_body={"namespace": "team"}).model_extra["citations"] == []


def test_openai_errors_are_clear_4xx(client) -> None:
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="at most 64"):
        ask(client, max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        ask(client, temperature=7)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="lmlm", messages=[])
    with pytest.raises(openai.APIStatusError) as big:
        client.chat.completions.create(model="lmlm", messages=[{"role": "user", "content": "x" * 30_000}])
    assert big.value.status_code == 413


BAD_REQUESTS = [
    ("POST", "/v1/chat/completions", b"{not json", {}),
    ("POST", "/v1/chat/completions", b"[1, 2]", {}),
    ("POST", "/v1/chat/completions", b'{"model": "lmlm"}', {}),
    ("POST", "/v1/chat/completions", b'{"model": "lmlm", "messages": [{"role": "wizard", "content": "x"}]}', {}),
    ("POST", "/v1/chat/completions", b'{"model": "lmlm", "messages": "hello"}', {}),
    ("POST", "/v1/chat/completions", b'{"model": "lmlm", "messages": [{"role": "user", "content": "x"}], "n": 99}', {}),
    ("POST", "/v1/chat/completions", b'{"model": "lmlm", "messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}', {}),
    ("POST", "/v1/chat/completions", b'{"model": "lmlm", "messages": [{"role": "user", "content": "x"}], "namespace": "bad ns!"}', {}),
    ("POST", "/v1/chat/completions", b'{"model": "lmlm", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', {}),
    ("POST", "/v1/chat/completions", b"\xff\xfe\x00garbage", {"content-type": "application/json"}),
    ("POST", "/v1/completions", b'{"model": "lmlm", "prompt": [1, 2]}', {}),
    ("POST", "/v1/completions", b'{"model": "lmlm", "prompt": []}', {}),
    ("POST", "/v1/completions", b'{"model": "lmlm", "prompt": "x", "echo": true, "logprobs": 1}', {}),
    ("POST", "/v1/completions", b'{"model": "lmlm", "prompt": "x", "stream": true, "logprobs": 1}', {}),
    ("POST", "/v1/completions", b'{"model": "lmlm", "prompt": "x", "suffix": "y"}', {}),
    ("POST", "/v1/completions", b'{"model": "lmlm", "prompt": "x", "seed": 123456789012345678901234567890}', {}),
    ("POST", "/v1/completions", b'{"model": "lmlm", "prompt": "\\ud800 lone surrogate"}', {}),
    ("POST", "/v1/chat/completions", b'{"model": "lmlm", "messages": [{"role": "user", "content": "\\udfff"}]}', {}),
    ("POST", "/v1/chat/completions", b'{"model": "lmlm", "messages": [{"role": "user", "content": "x"}], "max_tokens": "100"}', {}),
    ("POST", "/v1/completions", b'{"model": "lmlm", "prompt": "x", "max_tokens": -1}', {}),
    ("POST", "/v1/completions", b'{"model": "lmlm", "prompt": "x", "top_p": 0}', {}),
    ("GET", "/v1/knowledge/default/lookup?entity=Ada", b"", {}),
    ("GET", "/v1/knowledge/default/lookup?entity=&relation=x", b"", {}),
    ("GET", "/v1/knowledge/default/facts?limit=0", b"", {}),
    ("GET", "/v1/knowledge/default/facts?limit=abc", b"", {}),
    ("GET", "/v1/knowledge/%20bad%20/lookup?entity=a&relation=b", b"", {}),
    ("POST", "/v1/knowledge/default/facts", b'{"entity": "A", "relation": "r", "value": "<|db_end|>"}', {"authorization": f"Bearer {TOKEN}"}),
    ("POST", "/v1/knowledge/default/facts", b'{"entity": "", "relation": "r", "value": "v"}', {"authorization": f"Bearer {TOKEN}"}),
    ("DELETE", "/v1/knowledge/default/facts", b"", {"authorization": f"Bearer {TOKEN}"}),
    ("DELETE", "/v1/knowledge/default/facts?fact_id=1&entity=A", b"", {"authorization": f"Bearer {TOKEN}"}),
    ("DELETE", "/v1/knowledge/default/facts?fact_id=-4", b"", {"authorization": f"Bearer {TOKEN}"}),
    ("DELETE", "/v1/knowledge/default/facts?fact_id=99999999999999999999999", b"", {"authorization": f"Bearer {TOKEN}"}),
    ("GET", "/v1/knowledge/default/facts?offset=99999999999999999999999", b"", {}),
    ("GET", "/v1/nowhere", b"", {}),
    ("PUT", "/v1/models", b"", {}),
]


@pytest.mark.parametrize("method,path,body,headers", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_with_an_error_body(http, method, path, body, headers) -> None:
    resp = http.request(method, path, content=body, headers={"content-type": "application/json", **headers})
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["error"]["message"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {}, optional={k: _json for k in ("model", "messages", "prompt", "max_tokens", "temperature", "stop", "stream", "namespace", "n")}
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_fields, endpoint=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_no_input_makes_a_5xx(http, body, endpoint) -> None:
    resp = http.post(endpoint, content=json.dumps(body))
    assert resp.status_code < 500, (body, resp.text)


def test_private_reads_need_the_token(served) -> None:
    from lmlm_agent.server import ServerConfig as Config

    url, store = served
    tok = tokenizer()
    app = create_app(LMLMAgent(ScriptedLM(tok, {}), tok, store), Config(token=TOKEN, public_read=False))
    with running_server(app) as private:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=private, api_key="wrong", max_retries=0).models.list()
        assert [m.id for m in openai.OpenAI(base_url=private, api_key=TOKEN, max_retries=0).models.list()] == ["lmlm"]


def test_writes_refused_without_a_configured_token(served) -> None:
    tok = tokenizer()
    app = create_app(LMLMAgent(ScriptedLM(tok, {}), tok, served[1]), ServerConfig(token=None))
    with running_server(app) as url:
        resp = httpx.post(url + "/knowledge/default/facts", json={"entity": "a", "relation": "b", "value": "c"},
                          headers={"Authorization": "Bearer x"})
    assert resp.status_code == 403 and "no token configured" in resp.json()["error"]["message"]
