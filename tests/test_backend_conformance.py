"""Every registered knowledge backend passes tools.conformance: swapping backends is a tested promise."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tools import KnowledgeStore, open_store, registered_backends
from tools.conformance import KnowledgeStoreConformance
from tools.remote import RemoteKnowledgeStore


def _namespace() -> str:
    """A namespace of this test alone: the shared PostgreSQL is never cleared, only this namespace's rows."""
    return f"conf-{uuid.uuid4().hex[:12]}"


class TestSQLite(KnowledgeStoreConformance):
    @pytest.fixture
    def store(self, tmp_path) -> Iterator[KnowledgeStore]:
        with open_store(f"sqlite:///{tmp_path / 'kb.sqlite'}", index=False, namespace=_namespace()) as s:
            yield s


@pytest.mark.postgres
class TestPostgreSQL(KnowledgeStoreConformance):
    @pytest.fixture
    def store(self, pg_url: str) -> Iterator[KnowledgeStore]:
        ns = _namespace()
        s = open_store(pg_url.replace("postgresql+psycopg://", "postgresql://"), index=False, namespace=ns)
        yield s
        for name in (ns, f"{ns}-other"):
            for fact in list(s.iter_facts(namespace=name)):
                s.delete(fact_id=fact.id, namespace=name)
        s.close()


class TestMemory(KnowledgeStoreConformance):
    @pytest.fixture
    def store(self) -> KnowledgeStore:
        return open_store("memory://", namespace=_namespace())


@pytest.fixture(scope="module")
def knowledge_server(tmp_path_factory) -> Iterator[tuple[str, KnowledgeStore]]:
    """(URL, the store it serves): an `lmlm serve` app in a thread on a free loopback port over a SQLite store."""
    from lmlm_agent.agent import LMLMAgent
    from lmlm_agent.server import ServerConfig, create_app
    from runtime_fakes import ScriptedLM, tokenizer
    from training.teacher_server import running_server

    backing = open_store(tmp_path_factory.mktemp("remote") / "kb.sqlite", index=False)
    tok = tokenizer()
    with running_server(create_app(LMLMAgent(ScriptedLM(tok, {}), tok, backing), ServerConfig())) as url:
        yield url.removesuffix("/v1"), backing
    backing.close()


class TestRemote(KnowledgeStoreConformance):
    read_only = True

    @pytest.fixture
    def store(self, knowledge_server) -> Iterator[KnowledgeStore]:
        with open_store(knowledge_server[0], namespace=_namespace()) as s:
            yield s

    @pytest.fixture
    def writer(self, store: KnowledgeStore, knowledge_server) -> KnowledgeStore:
        return knowledge_server[1].with_namespace(store.namespace)


def test_every_registered_scheme_has_a_suite_above() -> None:
    tested = {"sqlite", "postgresql", "postgresql+psycopg", "postgres", "memory", "http", "https"}
    assert set(registered_backends()) == tested


def test_a_bare_path_and_a_sqlite_url_open_the_same_file(tmp_path) -> None:
    path = tmp_path / "kb.sqlite"
    with open_store(path, index=False) as s:
        s.write("Ada Lovelace", "birth year", "1815")
    with open_store(f"sqlite:///{path}", index=False, create=False) as s:
        assert s.read("Ada Lovelace", "birth year").value == "1815"


def test_an_unregistered_scheme_goes_to_sqlalchemy_and_a_registered_one_opens() -> None:
    from sqlalchemy.exc import NoSuchModuleError

    from tools import register_backend
    from tools.backends import _BACKENDS

    with pytest.raises(NoSuchModuleError, match="mykv"):
        open_store("mykv://somewhere")
    register_backend("mykv", lambda url, **options: open_store("memory://", **options))
    try:
        assert open_store("mykv://somewhere", namespace="x").namespace == "x"
    finally:
        del _BACKENDS["mykv"]


def test_a_remote_store_takes_no_index_of_its_own(knowledge_server) -> None:
    from tools import InvalidInput

    with pytest.raises(InvalidInput, match="index"):
        RemoteKnowledgeStore(knowledge_server[0], index=":memory:")


def test_the_decoder_reads_through_a_remote_store_and_records_a_dead_one_as_an_error(knowledge_server) -> None:
    from lmlm_agent.decoding import resolve
    from tools import UNKNOWN

    url, backing = knowledge_server
    ns = _namespace()
    fact = backing.write("Ada Lovelace", "birth year", "1815", source="doc:1", namespace=ns)
    with open_store(url, namespace=ns) as remote:
        record = resolve(remote, "Ada Lovelace", "birth year")
    assert (record.value, record.fact_id, record.match, record.source) == ("1815", fact.id, "exact", "doc:1")
    with RemoteKnowledgeStore("http://127.0.0.1:1", timeout_s=2) as dead:  # nothing listens there
        failed = resolve(dead, "Ada Lovelace", "birth year")
    assert failed.match == "error" and failed.value == UNKNOWN and "ConnectError" in failed.error


def test_kb_get_reads_a_remote_store_and_refuses_a_policy_it_cannot_apply(knowledge_server) -> None:
    """`lmlm kb get --db http://...`: the command line opens any backend by URL."""
    from typer.testing import CliRunner

    from lmlm_agent.cli import app

    url, backing = knowledge_server
    ns = _namespace()
    backing.with_namespace(ns).write("Ada Lovelace", "birth year", "1815")
    runner = CliRunner()
    got = runner.invoke(app, ["kb", "get", "ada lovelace", "birth year", "--db", url, "-n", ns, "--json"])
    assert got.exit_code == 0, got.output
    assert '"value": "1815"' in got.output
    refused = runner.invoke(app, ["kb", "get", "Ada Lovelace", "birth year", "--db", url, "-n", ns, "--policy", "published"])
    assert refused.exit_code == 1 and "server's policy" in refused.output
