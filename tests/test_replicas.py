"""Two `lmlm serve` processes on one PostgreSQL store and one Chroma server: what one writes or forgets, the other answers at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import chromadb
import httpx
import pytest
from chromadb.config import Settings
from conftest import free_port
from runtime_fakes import tokenizer

from lmlm_agent.model import build_model, save_checkpoint
from tools import open_store

ADMIN = "replica-admin-token"


def _serve(run: Path, pg_url: str, chroma: str, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMLM_")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "lmlm_agent.cli", "serve", "--run", str(run), "--port", str(port), "--token", ADMIN,
            "--store", pg_url, "--semantic", "--index", chroma]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait(server: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            pytest.fail(f"lmlm serve exited with {server.returncode}:\n{server.communicate()[0]}")
        assert time.monotonic() < deadline, "lmlm serve did not start within 120 s"
        try:
            httpx.get(url + "/v1/models", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.3)


def _index_ids(chroma: str, collection_prefix: str) -> set[int]:
    """Fact ids in the shared Chroma server's collections for the store, read by a third client."""
    client = chromadb.HttpClient(host="127.0.0.1", port=int(chroma.rsplit(":", 1)[1]),
                                 settings=Settings(anonymized_telemetry=False))
    ids: set[int] = set()
    for collection in client.list_collections():
        if collection.name.startswith(collection_prefix):
            ids.update(int(i) for i in collection.get(include=[])["ids"])
    return ids


@pytest.mark.postgres
@pytest.mark.slow
def test_two_replicas_share_writes_deletes_and_the_index(tmp_path, pg_url: str, chroma_server: str) -> None:
    ns = f"t-replica-{uuid.uuid4().hex[:10]}"
    run = tmp_path / "run"
    save_checkpoint(run / "lmlm", build_model("micro", tokenizer()), tokenizer(), kind="lmlm", preset="micro")
    seed = open_store(pg_url, index=chroma_server, namespace=ns)  # the operator creates the store once
    seed.write("Ada Lovelace", "birth year", "1815")
    prefix = seed.index.collection_name(ns)
    seed.close()

    ports = free_port(), free_port()
    servers = [_serve(run, pg_url, chroma_server, port) for port in ports]
    a, b = (f"http://127.0.0.1:{port}" for port in ports)
    facts = f"/v1/knowledge/{ns}/facts"
    lookup = f"/v1/knowledge/{ns}/lookup"
    try:
        for server, url in zip(servers, (a, b)):
            _wait(server, url)
        with httpx.Client(base_url=a, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as via_a, \
             httpx.Client(base_url=b, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as via_b:
            assert via_b.get(lookup, params={"entity": "Ada Lovelace", "relation": "birth year"}).json()["value"] == "1815"

            written = via_a.post(facts, json={"entity": "Grace Hopper", "relation": "place of birth", "value": "New York City"})
            assert written.status_code == 201, written.text
            # B answers A's write at once: exactly, with a typo'd entity, and with a paraphrased relation.
            for query in ({"entity": "Grace Hopper", "relation": "place of birth"},
                          {"entity": "Grace Hoper", "relation": "place of birth"},
                          {"entity": "Grace Hopper", "relation": "birthplace"}):
                assert via_b.get(lookup, params=query).json()["value"] == "New York City", query
            hopper_ids = {row["id"] for row in via_b.get(facts).json()["data"] if row["entity"] == "Grace Hopper"}
            assert len(hopper_ids) == 1 and hopper_ids <= _index_ids(chroma_server, prefix)

            receipt = via_b.request("DELETE", facts, params={"entity": "Grace Hopper"}).json()
            assert receipt["verified"] and {r["id"] for r in receipt["removed"]} == hopper_ids
            assert set(receipt["index_removed"]) == hopper_ids and receipt["index_remaining"] == 0
            # Forgotten for A too: no lookup, exact or fuzzy, finds the fact or anyone else's in its place.
            for query in ({"entity": "Grace Hopper", "relation": "place of birth"},
                          {"entity": "Grace Hoper", "relation": "birthplace"}):
                assert via_a.get(lookup, params=query).json()["value"] == "unknown", query
            assert not hopper_ids & {row["id"] for row in via_a.get(facts).json()["data"]}
            assert not hopper_ids & _index_ids(chroma_server, prefix)
            again = via_a.request("DELETE", facts, params={"entity": "Grace Hopper"}).json()
            assert again["removed"] == [] and again["sql_remaining"] == 0
    finally:
        logs = []
        for server in servers:
            server.terminate()
            logs.append(server.communicate(timeout=30)[0])
        cleanup = open_store(pg_url, index=chroma_server, namespace=ns)
        cleanup.delete(entity="Ada Lovelace")
        cleanup.close()
    for log in logs:
        assert "over postgresql" in log, log


def test_a_named_store_must_exist_and_an_index_needs_semantic_lookups(tmp_path) -> None:
    from lmlm_agent.server import ServerConfig, load_run

    run = tmp_path / "run"
    save_checkpoint(run / "lmlm", build_model("micro", tokenizer()), tokenizer(), kind="lmlm", preset="micro")
    with pytest.raises(FileNotFoundError, match="no knowledge base"):
        load_run(run, ServerConfig(store=str(tmp_path / "elsewhere.sqlite")))
    assert not (tmp_path / "elsewhere.sqlite").exists()
    with pytest.raises(ValueError, match="semantic"):
        ServerConfig(index="http://127.0.0.1:8000")
    assert load_run(run).store is None  # a run without kb.sqlite: served, every lookup unknown
