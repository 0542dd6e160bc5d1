"""The OpenAI-compatible server, driven over loopback by the real `openai` client (and httpx for the rest)."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlm_agent.agent import LMLMAgent, chat_prompt
from lmlm_agent.format import strip_values
from lmlm_agent.server import ServerConfig, create_app
from training.teacher_server import running_server  # uvicorn in a thread on a free loopback port
from runtime_fakes import ScriptedLM, tokenizer

TOKEN = "s3cret-token"
QUESTION = "When was Ada Lovelace born?"
ANSWER = "<|db_entity|> Ada Lovelace<|db_relationship|> birth year<|db_return|> 1815<|db_end|> Ada Lovelace was born in 1815."
RAW_PROMPT = "Ada Lovelace was born in"
CONTINUATION = " <|db_entity|> Ada Lovelace<|db_relationship|> birth year<|db_return|> 1815<|db_end|> 1815 in London."
# Raw prompts that end inside a call: after <|db_return|>, and mid-entity. The model writes the rest of the call.
AFTER_RETURN = RAW_PROMPT + " <|db_entity|> Ada Lovelace<|db_relationship|> birth year<|db_return|>"
MID_ENTITY = RAW_PROMPT + " <|db_entity|> Ada Lov"


@pytest.fixture(scope="module")
def served():
    """(base_url, store): a scripted LMLM over an in-memory store, served on a free loopback port."""
    from tools import open_store

    tok = tokenizer()
    scripts = {chat_prompt([("user", QUESTION)]): ANSWER, RAW_PROMPT: CONTINUATION}
    model = ScriptedLM(tok, {**{p: strip_values(s) for p, s in scripts.items()},
                             AFTER_RETURN: " 1815 in London.",  # the value comes from the runtime first
                             MID_ENTITY: "elace<|db_relationship|> birth year<|db_return|> 1815 in London."})
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


def test_a_requests_stop_string_ends_the_answer_streamed_or_not(client) -> None:
    resp = ask(client, stop=[" born"])
    assert resp.choices[0].message.content == "Ada Lovelace was" and resp.choices[0].finish_reason == "stop"
    chunks = list(ask(client, stop=[" born"], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Ada Lovelace was"


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


def test_an_offset_near_the_64_bit_limit_lists_nothing(http) -> None:
    resp = http.get("/v1/knowledge/default/facts", params={"offset": 2**63 - 100})  # offset + limit is past 2**63 - 1
    assert resp.status_code == 200 and resp.json()["data"] == []


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


# --------------------------------------------------------------------------- OpenAI parameters, as a client sends them


def test_n_and_prompt_lists(client) -> None:
    resp = ask(client, n=3)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert {c.message.content for c in resp.choices} == {"Ada Lovelace was born in 1815."}
    many = client.completions.create(model="lmlm", prompt=[RAW_PROMPT, "unknown prompt"], n=2, max_tokens=30)
    # Choice i*n + j answers prompt i.
    assert [c.text for c in sorted(many.choices, key=lambda c: c.index)] == [" 1815 in London."] * 2 + [""] * 2
    streamed = {}
    for chunk in ask(client, n=2, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert streamed == {0: "Ada Lovelace was born in 1815.", 1: "Ada Lovelace was born in 1815."}


def test_logprobs_and_top_logprobs(client) -> None:
    resp = ask(client, logprobs=True, top_logprobs=2)
    content = resp.choices[0].logprobs.content
    # The tokens the model chose for the text (the lookup call's tokens are not in the text, so not here).
    assert "".join(t.token for t in content).strip() == resp.choices[0].message.content
    assert all(t.logprob == pytest.approx(0.0, abs=1e-3) for t in content)  # the scripted model is certain
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in content)
    plain = client.completions.create(model="lmlm", prompt=RAW_PROMPT, max_tokens=30, logprobs=1)
    lp = plain.choices[0].logprobs
    assert "".join(lp.tokens).strip() == plain.choices[0].text.strip() and len(lp.token_logprobs) == len(lp.tokens)
    assert lp.text_offset[0] == 0 and all(len(d) == 1 for d in lp.top_logprobs)
    assert ask(client).choices[0].logprobs is None


def test_echo(client) -> None:
    resp = client.completions.create(model="lmlm", prompt=RAW_PROMPT, max_tokens=30, echo=True)
    assert resp.choices[0].text == RAW_PROMPT + " 1815 in London."
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="lmlm", prompt=RAW_PROMPT, max_tokens=30, echo=True, stream=True) if c.choices)
    assert streamed == RAW_PROMPT + " 1815 in London."


@pytest.mark.parametrize("param,value", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]),
    ("response_format", {"type": "json_object"}),
    ("tool_choice", "auto"),
    ("frequency_penalty", 0.5),
    ("logit_bias", {"50": 10}),
    ("functions", [{"name": "f"}]),
])
def test_unsupported_parameters_are_refused_by_name(client, param, value) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, **{param: value})
    assert err.value.body["param"] == param and param in err.value.body["message"]


def test_neutral_values_of_unsupported_parameters_pass(client) -> None:
    resp = ask(client, response_format={"type": "text"}, tool_choice="none", frequency_penalty=0, user="u-1")
    assert resp.choices[0].message.content == "Ada Lovelace was born in 1815."


@pytest.mark.parametrize("prompt", [AFTER_RETURN, MID_ENTITY], ids=["after-db_return", "mid-entity"])
def test_raw_prompt_ending_inside_a_call_is_looked_up_once(client, served, prompt) -> None:
    resp = client.completions.create(model="lmlm", prompt=prompt, max_tokens=30)
    assert resp.choices[0].text == "1815 in London."  # the call (begun in the prompt) stripped whole, the value once
    assert [c["value"] for c in resp.model_extra["citations"]] == ["1815"]
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="lmlm", prompt=prompt, max_tokens=30,
                                                                              stream=True) if c.choices)
    assert streamed == "1815 in London."


# --------------------------------------------------------------------------- concurrency, batching, disconnects


@pytest.fixture(scope="module")
def slow():
    """(base_url, model, scheduler): a scripted model that takes 30 ms a forward pass and writes 60 tokens."""
    from tools import open_store

    tok = tokenizer()
    long = " and then" * 30
    model = ScriptedLM(tok, {chat_prompt([("user", QUESTION)]): " Ada" + long, chat_prompt([("user", "short")]): " Yes."},
                       delay_s=0.03)
    app = create_app(LMLMAgent(model, tok, open_store(None, index=False)),
                     ServerConfig(max_tokens=100, default_max_tokens=100, max_batch=8, max_queue=4))
    with running_server(app) as url:
        yield url, model, app.state.scheduler


# Another namespace than the long answer's: it cannot join that batch, so it waits unless the batch was released.
SHORT = {"model": "lmlm", "namespace": "elsewhere", "messages": [{"role": "user", "content": "short"}]}


def test_a_dropped_stream_releases_the_decoder(slow) -> None:
    import time

    url, model, _ = slow
    body = {"model": "lmlm", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", url + "/chat/completions", json=body) as resp:
            first = next(resp.iter_lines())
            assert first.startswith("data: ")
        # The client went away after one chunk; the 60-token answer (~2 s) must not hold up the next request.
        start = time.monotonic()
        short = http.post(url + "/chat/completions", json=SHORT)
        took = time.monotonic() - start
    assert short.status_code == 200 and short.json()["choices"][0]["message"]["content"] == "Yes."
    assert took < 1.0, f"the next request waited {took:.2f} s"


def test_concurrent_requests_share_a_batch_and_a_full_queue_says_busy(slow) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url, model, scheduler = slow
    body = {"model": "lmlm", "max_tokens": 20, "messages": [{"role": "user", "content": QUESTION}]}
    scheduler.batch_sizes.clear()
    decoded = scheduler.rows_decoded

    def post(i):  # different temperatures, top_p and stops still share a batch (the scripted model is certain)
        return httpx.post(url + "/chat/completions", json={**body, "temperature": i * 0.3, "top_p": 1 - i * 0.1,
                                                          "stop": [f"never{i}"]}, timeout=30)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.json()["choices"][0]["message"]["content"] for a in answers}) == 1
    assert max(scheduler.batch_sizes) >= 2  # requests that arrived together were decoded together
    assert scheduler.rows_decoded - decoded == 4

    def plain(_):
        return httpx.post(url + "/chat/completions", json=body, timeout=30)

    with ThreadPoolExecutor(20) as pool:
        burst = list(pool.map(plain, range(20)))  # at most 8 rows decoding + 4 waiting fit; the rest are refused
    busy = [a for a in burst if a.status_code == 503]
    assert busy and all(a.json()["error"]["code"] == "server_busy" and a.headers["retry-after"] for a in busy)
    assert all(a.status_code in (200, 503) for a in burst)


# --------------------------------------------------------------------------- no input makes a 5xx, on every route


@pytest.fixture(scope="module")
def fuzz_http():
    from tools import open_store

    tok = tokenizer()
    store = open_store(None, index=False)
    store.write("Ada Lovelace", "birth year", "1815")
    app = create_app(LMLMAgent(ScriptedLM(tok, {}), tok, store), ServerConfig(token=TOKEN, max_tokens=8, default_max_tokens=8))
    with running_server(app) as url:
        with httpx.Client(base_url=url.removesuffix("/v1"), timeout=30,
                          headers={"authorization": f"Bearer {TOKEN}"}) as c:
            yield c


_odd_text = st.text(max_size=12) | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
_odd_int = st.integers() | st.integers(min_value=2**63 - 2, max_value=2**70) | st.integers(max_value=-(2**63))
_value = st.recursive(
    st.none() | st.booleans() | _odd_int | st.floats(allow_nan=False) | _odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "wizard"]) | _value},
                                  optional={"content": _odd_text | _value, "name": _value})
_GENERATION = ("model", "max_tokens", "temperature", "top_p", "stop", "stream", "seed", "n", "namespace", "logprobs",
               "top_logprobs", "echo", "user", "stream_options", "response_format", "tools", "best_of")
_chat = st.fixed_dictionaries({"model": st.just("lmlm") | _value, "messages": st.lists(_message, max_size=3) | _value},
                              optional={k: _value for k in _GENERATION if k != "model"})
_completion = st.fixed_dictionaries({"model": st.just("lmlm") | _value, "prompt": _odd_text | st.lists(_odd_text, max_size=3) | _value},
                                    optional={k: _value for k in _GENERATION if k != "model"})
_fact = st.fixed_dictionaries({}, optional={k: _odd_text | _value for k in ("entity", "relation", "value", "source", "extra")})
_query_value = st.text(max_size=12) | _odd_int.map(str)
_query = st.dictionaries(st.sampled_from(["entity", "relation", "fact_id", "limit", "offset"]), _query_value, max_size=3)
_namespace = (st.sampled_from(["default", "team"]) | st.text(st.characters(blacklist_categories=["Cs"]), max_size=10)).map(
    lambda ns: quote(ns, safe=""))

_REQUESTS = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/chat/completions"), _chat, st.just({})),
    st.tuples(st.just("POST"), st.just("/v1/completions"), _completion, st.just({})),
    st.tuples(st.just("POST"), _namespace.map(lambda ns: f"/v1/knowledge/{ns}/facts"), _fact, st.just({})),
    st.tuples(st.just("GET"), _namespace.map(lambda ns: f"/v1/knowledge/{ns}/lookup"), st.none(), _query),
    st.tuples(st.just("GET"), _namespace.map(lambda ns: f"/v1/knowledge/{ns}/facts"), st.none(), _query),
    st.tuples(st.just("DELETE"), _namespace.map(lambda ns: f"/v1/knowledge/{ns}/facts"), st.none(), _query),
    st.tuples(st.just("GET"), st.text(st.characters(blacklist_categories=["Cs"]), max_size=10).map(lambda m: f"/v1/models/{quote(m, safe='')}"), st.none(), st.just({})),
    st.tuples(st.just("GET"), st.just("/v1/models"), st.none(), st.just({})),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=_REQUESTS)
def test_no_request_to_any_route_makes_a_5xx(fuzz_http, request) -> None:
    method, path, body, params = request
    content = None if body is None else json.dumps(body)  # lone surrogates travel as \\ud800 escapes: valid JSON
    resp = fuzz_http.request(method, path, content=content, params=params, headers={"content-type": "application/json"})
    assert resp.status_code < 500, (method, path, body, params, resp.text)
    if resp.status_code >= 400:
        assert resp.json()["error"]["message"]


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("text,field", [
    ("max_tokens: '100'\n", "max_tokens"),
    ("token: 12345\n", "token"),
    ("public_read: 'yes'\n", "public_read"),
    ("max_batch: 0\n", "max_batch"),
    ("max_tokens: [1]\n", "max_tokens"),
])
def test_server_yaml_of_the_wrong_type_is_refused_naming_the_field(tmp_path, text, field) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"server.yaml: {field} must be"):
        ServerConfig.load(path)


def test_broken_server_yaml_is_one_clear_error(tmp_path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("max_tokens: [1\n")
    with pytest.raises(ValueError, match="not readable YAML"):
        ServerConfig.load(path)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        ServerConfig.load(path)


def test_serve_refuses_a_bad_server_yaml_in_one_line(tmp_path) -> None:
    from typer.testing import CliRunner

    from lmlm_agent.cli import app

    (tmp_path / "server.yaml").write_text("max_tokens: '100'\n")
    result = CliRunner().invoke(app, ["serve", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "max_tokens must be int" in result.output and "Traceback" not in result.output


def test_throughput_benchmark_runs_small(tmp_path) -> None:
    """benchmarks/serve_speed.py itself, tiny: both cases answer every request and the files are written."""
    from benchmarks.serve_speed import ServeSpeedConfig, run

    result = run(ServeSpeedConfig(preset="micro", vocab_size=400, max_tokens=8, requests=4, clients=2, repeats=1), tmp_path)
    assert [c["requests"] for c in result["cases"].values()] == [4, 4]
    assert all(c["completion_tokens"] >= 4 * 8 for c in result["cases"].values())  # 8 written each, plus injected values
    assert json.loads((tmp_path / "serve_speed.json").read_text())["cases"]["2 clients"]["most_rows_at_once"] >= 1
    assert "2 clients / 1 client" in (tmp_path / "serve_speed.md").read_text()


def test_a_client_that_gives_up_on_a_plain_request_releases_the_decoder(slow) -> None:
    import time

    url, _, _ = slow
    long = {"model": "lmlm", "messages": [{"role": "user", "content": QUESTION}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/chat/completions", json=long, timeout=0.3)  # gives up on a ~2 s answer
    time.sleep(0.2)  # the server's watch on the connection sees it close
    start = time.monotonic()
    short = httpx.post(url + "/chat/completions", json=SHORT, timeout=30)
    assert short.status_code == 200 and time.monotonic() - start < 1.0


def test_an_answer_sent_back_as_history_is_accepted(client) -> None:
    first = ask(client).choices[0].message
    follow = client.chat.completions.create(model="lmlm", messages=[
        {"role": "user", "content": "Hi"}, first.model_dump(), {"role": "user", "content": QUESTION}])
    assert follow.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError, match="tool_calls"):
        client.chat.completions.create(model="lmlm", messages=[
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                   "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": QUESTION}])
