"""Two tenants on one server: private namespaces over HTTP (the `openai` client and httpx), and logs that forget.

Tenant A owns namespace `team-a`, tenant B `team-b`, each with its own token; `default`
is shared (public reads, the server token writes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest

from lmlm_agent.agent import LMLMAgent, chat_prompt
from lmlm_agent.format import strip_values
from lmlm_agent.server import ACCESS_LOGGER, REDACT_QUERIES, ServerConfig, create_app
from conftest import free_port
from runtime_fakes import ScriptedLM, tokenizer
from training.teacher_server import running_server

ADMIN, TOKEN_A, TOKEN_B = "admin-token", "tenant-a-token", "tenant-b-token"
QUESTION = "When was Grace Hopper born?"
ANSWER = "<|db_entity|> Grace Hopper<|db_relationship|> birth year<|db_return|> 1906<|db_end|> She was born then."
SECRET = ("Grace Hopper", "birth year", "1906")
LOOKUP = "/v1/knowledge/{ns}/lookup"
FACTS = "/v1/knowledge/{ns}/facts"


def _app(**config):
    from tools import open_store

    tok = tokenizer()
    model = ScriptedLM(tok, {chat_prompt([("user", QUESTION)]): strip_values(ANSWER)})
    store = open_store(None, index=False)
    store.write(*SECRET, source="hr:a", namespace="team-a")
    settings = ServerConfig(token=ADMIN, namespace_tokens={"team-a": TOKEN_A, "team-b": TOKEN_B}, max_tokens=64, **config)
    return create_app(LMLMAgent(model, tok, store), settings)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_server(_app()) as base:
        yield base


def _http(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.removesuffix("/v1"), headers=headers, timeout=30)


def _ask(url: str, token: str, namespace: str):
    client = openai.OpenAI(base_url=url, api_key=token, max_retries=0, timeout=30)
    return client.chat.completions.create(model="lmlm", messages=[{"role": "user", "content": QUESTION}],
                                          extra_body={"namespace": namespace})


def test_a_private_namespace_is_read_only_with_its_token(url) -> None:
    query = {"entity": SECRET[0], "relation": SECRET[1]}
    with _http(url, TOKEN_A) as a:
        assert a.get(LOOKUP.format(ns="team-a"), params=query).json()["value"] == "1906"
        assert [f["value"] for f in a.get(FACTS.format(ns="team-a")).json()["data"]] == ["1906"]
    for token, status in ((None, 401), ("not-a-token", 401), (TOKEN_B, 403), (ADMIN, 403)):
        with _http(url, token) as other:
            for resp in (other.get(LOOKUP.format(ns="team-a"), params=query), other.get(FACTS.format(ns="team-a"))):
                assert resp.status_code == status, (token, resp.text)
                assert "1906" not in resp.text and resp.json()["error"]["code"] in ("unauthorized", "forbidden")


def test_generation_over_a_private_namespace_needs_its_token_and_cites_nothing_elsewhere(url) -> None:
    (cite,) = _ask(url, TOKEN_A, "team-a").model_extra["citations"]
    assert (cite["value"], cite["namespace"]) == ("1906", "team-a")
    with pytest.raises(openai.PermissionDeniedError, match="team-a"):
        _ask(url, TOKEN_B, "team-a")
    with pytest.raises(openai.AuthenticationError):
        _ask(url, "guess", "team-a")
    # B's own namespace and the shared one do not hold A's fact: the model's lookup comes back unknown.
    for token, namespace in ((TOKEN_B, "team-b"), (TOKEN_B, "default"), ("anything", "default")):
        answer = _ask(url, token, namespace)
        assert answer.model_extra["citations"] == [], (token, namespace)
    # A stream is checked before it starts, too.
    with _http(url, TOKEN_B) as b:
        body = {"model": "lmlm", "prompt": "x", "namespace": "team-a", "stream": True}
        streamed = b.post("/v1/completions", json=body)
        assert streamed.status_code == 403 and "1906" not in streamed.text


def test_writes_to_a_private_namespace_need_its_token(url) -> None:
    fact = {"entity": "Ada Lovelace", "relation": "birth year", "value": "1815"}
    for token, status in ((None, 401), (ADMIN, 403), (TOKEN_A, 403)):
        with _http(url, token) as client:
            assert client.post(FACTS.format(ns="team-b"), json=fact).status_code == status
    with _http(url, TOKEN_B) as b:
        assert b.post(FACTS.format(ns="team-b"), json=fact).status_code == 201
        assert b.request("DELETE", FACTS.format(ns="team-b"), params={"entity": "Ada Lovelace"}).json()["verified"]
        assert b.post(FACTS.format(ns="default"), json=fact).status_code == 403  # shared: the server token writes
    with _http(url, ADMIN) as admin:
        written = admin.post(FACTS.format(ns="default"), json=fact)
        assert written.status_code == 201
        assert admin.request("DELETE", FACTS.format(ns="default"), params={"fact_id": written.json()["fact"]["id"]}).status_code == 200


def test_private_reads_everywhere_take_any_token_of_the_server() -> None:
    with running_server(_app(public_read=False)) as url:
        with _http(url) as anonymous:
            assert anonymous.get("/v1/models").status_code == 401
            assert anonymous.get(FACTS.format(ns="default")).status_code == 401
        for token in (ADMIN, TOKEN_A, TOKEN_B):
            with _http(url, token) as client:
                assert client.get("/v1/models").status_code == 200
                assert client.get(FACTS.format(ns="default")).status_code == 200
        with _http(url, ADMIN) as admin:
            assert admin.get(FACTS.format(ns="team-a")).status_code == 403


@pytest.mark.parametrize("tokens,message", [
    ({"bad ns!": "t"}, "namespace_tokens"),
    ({"team": ""}, "token of 'team' is empty"),
    (["team"], "namespace_tokens must be a mapping"),
    ({"team": 123}, "namespace_tokens must be a mapping"),
])
def test_namespace_tokens_are_checked_at_start_up(tokens, message) -> None:
    with pytest.raises(ValueError, match=message) as err:
        ServerConfig(namespace_tokens=tokens)
    assert "123" not in str(err.value)  # a token, even a wrong one, is not echoed


def test_namespace_tokens_from_server_yaml(tmp_path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("namespace_tokens:\n  team-a: abc\n  hr/payroll: def\n")
    assert ServerConfig.load(path).namespace_tokens == {"team-a": "abc", "hr/payroll": "def"}


# --------------------------------------------------------------------------- logs


@contextmanager
def _logged_server(app) -> Iterator[tuple[str, list[str]]]:
    """A real uvicorn server with its own logging set-up at INFO; yields its URL and every line logged in the process.

    The access log is formatted by uvicorn's own AccessFormatter, as `lmlm serve` writes it.
    """
    import uvicorn
    from uvicorn.logging import AccessFormatter

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not record.name.startswith(("httpx", "httpcore", "openai")):  # the test's own clients
                lines.append(self.format(record))

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="info", lifespan="off"))
    access = Keep()
    access.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False))
    everything = Keep()
    logging.getLogger("uvicorn.access").addHandler(access)  # uvicorn's loggers do not propagate to the root
    for name in ("", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).addHandler(everything)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1", lines
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        logging.getLogger("uvicorn.access").removeHandler(access)
        for name in ("", "uvicorn", "uvicorn.error"):
            logging.getLogger(name).removeHandler(everything)


def _lookup_ask_and_forget(url: str) -> None:
    with _http(url, TOKEN_A) as a:
        assert a.get(LOOKUP.format(ns="team-a"), params={"entity": SECRET[0], "relation": SECRET[1]}).json()["value"] == "1906"
        assert _ask(url, TOKEN_A, "team-a").model_extra["citations"]
        gone = a.request("DELETE", FACTS.format(ns="team-a"), params={"entity": SECRET[0], "relation": SECRET[1]})
        assert gone.json()["verified"]


def test_logs_keep_no_key_or_value_of_a_forgotten_fact(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with _logged_server(_app()) as (url, lines):
        _lookup_ask_and_forget(url)
    log = "\n".join(lines + [r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore", "openai"))])
    assert "GET /v1/knowledge/team-a/lookup?<redacted> HTTP/1.1\" 200" in log  # the request is logged, its query not
    assert "DELETE /v1/knowledge/team-a/facts?<redacted>" in log
    for needle in ("Grace", "Hopper", "birth", "1906"):
        assert needle not in log, needle


def test_log_queries_keeps_them_when_asked() -> None:
    app = _app(log_queries=True)
    logging.getLogger(ACCESS_LOGGER).removeFilter(REDACT_QUERIES)  # process-wide: another test's app installed it
    try:
        with _logged_server(app) as (url, lines):
            _lookup_ask_and_forget(url)
        assert any("entity=Grace+Hopper" in line for line in lines)
        assert not any("1906" in line for line in lines)  # values are never logged
    finally:
        logging.getLogger(ACCESS_LOGGER).addFilter(REDACT_QUERIES)


def test_lmlm_serve_keeps_a_private_namespace_and_no_key_in_its_log(tmp_path) -> None:
    """The real `lmlm serve` process, configured by server.yaml, with uvicorn's own logging set-up."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from lmlm_agent.model import build_model, save_checkpoint
    from tools import open_store

    run = tmp_path / "run"
    save_checkpoint(run / "lmlm", build_model("micro", tokenizer()), tokenizer(), kind="lmlm", preset="micro")
    store = open_store(run / "kb.sqlite", index=False)
    store.write(*SECRET, namespace="team-a")
    store.close()
    (run / "server.yaml").write_text(f"namespace_tokens:\n  team-a: {TOKEN_A}\nmax_tokens: 8\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMLM_")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    server = subprocess.Popen([sys.executable, "-m", "lmlm_agent.cli", "serve", "--run", str(run), "--port", str(port),
                               "--token", ADMIN], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "lmlm serve did not start"
            try:
                httpx.get(url + "/models", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        query = {"entity": SECRET[0], "relation": SECRET[1]}
        with _http(url, ADMIN) as admin:
            assert admin.get(LOOKUP.format(ns="team-a"), params=query).status_code == 403
            refused = admin.post("/v1/chat/completions", json={"model": "lmlm", "namespace": "team-a",
                                                                "messages": [{"role": "user", "content": QUESTION}]})
            assert refused.status_code == 403
        with _http(url, TOKEN_A) as a:
            assert a.get(LOOKUP.format(ns="team-a"), params=query).json()["value"] == "1906"
            assert a.request("DELETE", FACTS.format(ns="team-a"), params=query).json()["verified"]
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert "private namespaces: team-a" in log
    assert '"GET /v1/knowledge/team-a/lookup?<redacted> HTTP/1.1" 200' in log, log
    for needle in ("Grace", "Hopper", "1906"):
        assert needle not in log, log
