"""Nothing lost, nothing left behind: kills, concurrent processes and forgetting, with real processes and files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmlm_agent.cli import app
from tools import InvalidInput, open_store
from tools.index import LOCK_FILE, IndexBusy, SemanticIndex
from tools.store import TEST_PAUSE_ENV

import cheap_embedding as cheap_embedding_module

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
LMLM = [sys.executable, "-m", "lmlm_agent.cli"]
runner = CliRunner()


@pytest.fixture
def cheap_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hashed-trigram stand-in for MiniLM in this process (what is tested here is not the embedding)."""
    from tools.index import MiniLMEmbedding

    monkeypatch.setattr(MiniLMEmbedding, "__call__", cheap_embedding_module.embed)
    monkeypatch.setattr(MiniLMEmbedding, "embed_query", cheap_embedding_module.embed)


def _triples(path: Path, n: int, tag: str, people: int = 0) -> list[tuple[str, str, str]]:
    """``n`` triples of made-up people (``people`` of them shared between files), written as JSONL."""
    rows = [(f"{tag} person {i:04d}" if i >= people else f"shared person {i:04d}", rel, f"{tag}-{i}-{rel}")
            for i in range(n // 3 + 1) for rel in ("birthplace", "employer", "motto")][:n]
    path.write_text("".join(json.dumps({"entity": e, "relation": r, "value": v}) + "\n" for e, r, v in rows))
    return rows


def _outbox(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM kb_outbox").fetchone()[0]


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _kill_when_journalled(cmd: list[str], db: Path) -> None:
    """Run ``cmd`` with the index step paused; kill -9 it once its SQL transaction (with the journal) committed."""
    proc = subprocess.Popen(cmd, env={**ENV, TEST_PAUSE_ENV: "60"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: db.is_file() and _outbox(db) > 0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


# --------------------------------------------------------------------------- crashes


def test_kill_9_mid_import_is_repaired_by_the_next_open(tmp_path: Path, cheap_embedding: None) -> None:
    db = tmp_path / "kb.sqlite"
    rows = _triples(tmp_path / "facts.jsonl", 300, "imp")
    _kill_when_journalled([*LMLM, "kb", "import", str(tmp_path / "facts.jsonl"), "--db", str(db)], db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM kb_fact").fetchone()[0] == len(rows)  # SQL committed
    assert _outbox(db) == len(rows)  # ... and every index change is journalled, none applied

    store = open_store(db)  # the next writable open replays the journal
    [report] = store.check_index()
    assert (report["facts"], report["indexed"], report["missing"], report["stale"], report["pending"]) == (300, 300, 0, 0, 0)


def test_kill_9_mid_delete_is_repaired_by_the_next_open(tmp_path: Path, cheap_embedding: None) -> None:
    db, chroma = tmp_path / "kb.sqlite", tmp_path / "kb.chroma"
    store = open_store(db)
    store.write_many([(f"Person {i}", rel, f"{rel} {i}") for i in range(30) for rel in ("birthplace", "employer")])
    gone = sorted(f.id for f in store.iter_facts() if f.entity == "Person 7")
    store.close()
    code = f"from tools import open_store; open_store({str(db)!r}).delete(entity='Person 7')"
    _kill_when_journalled([sys.executable, "-c", code], db)
    assert SemanticIndex(str(chroma), _store_id(db)).present("default", gone) == gone  # the index never heard of it
    again = open_store(db)
    assert again.index.present("default", gone) == [] and again.count() == 58
    [report] = again.check_index()
    assert (report["missing"], report["stale"], report["pending"]) == (0, 0, 0)


def _store_id(db: Path) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT value FROM kb_meta WHERE name = 'store_id'").fetchone()[0]


def test_check_reports_drift_both_ways_and_repair_fixes_it(tmp_path: Path, cheap_embedding: None) -> None:
    db = tmp_path / "kb.sqlite"
    store = open_store(db)
    store.write_many([("Ada Lovelace", "birth year", "1815"), ("Alan Turing", "birthplace", "London")])
    open_store(db, index=False).write("Grace Hopper", "employer", "US Navy")  # no index: not journalled, not indexed
    stale = store.write("Marie Curie", "birthplace", "Warsaw")
    with store.engine.begin() as conn:  # a row lost behind the index's back (as before journalling)
        conn.exec_driver_sql(f"DELETE FROM kb_fact WHERE id = {stale.id}")
    check = runner.invoke(app, ["kb", "check", "--db", str(db), "--json"])
    assert check.exit_code == 1, check.output
    [ns] = json.loads(check.output)["namespaces"]
    assert (ns["facts"], ns["indexed"], ns["missing"], ns["stale"]) == (3, 3, 1, 1)
    repaired = runner.invoke(app, ["kb", "check", "--db", str(db), "--repair"])
    assert repaired.exit_code == 0 and "repaired" in repaired.output
    assert runner.invoke(app, ["kb", "check", "--db", str(db)]).exit_code == 0
    grace = next(f for f in store.iter_facts() if f.entity == "Grace Hopper")
    assert [h.fact_id for h in store.index.query("default", grace.key, 1)] == [grace.id]


def test_rebuild_killed_midway_keeps_the_old_index(tmp_path: Path, cheap_embedding: None) -> None:
    store = open_store(tmp_path / "kb.sqlite")
    store.write_many([(f"Person {i}", "birthplace", f"Town {i}") for i in range(40)])

    def dies_half_way():
        for n, fact in enumerate(store.iter_facts()):
            if n == 20:
                raise KeyboardInterrupt  # the process is interrupted while embedding
            yield fact.id, fact.key

    with pytest.raises(KeyboardInterrupt):
        store.index.rebuild("default", lambda after: dies_half_way())
    assert store.index.count("default") == 40  # the live collection was never dropped
    assert store.rebuild_index() == {"default": 40} and store.check_index()[0]["missing"] == 0
    chroma = Path(store.index.location)
    assert len([d for d in chroma.iterdir() if d.is_dir()]) == 1  # the replaced collection's files are gone
    store.close()
    again = open_store(tmp_path / "kb.sqlite")
    assert all([h.fact_id for h in again.index.query("default", f.key, 1)] == [f.id] for f in again.iter_facts())


BUILD_CHILD = """
import sys, time
import cheap_embedding; cheap_embedding.install()
import tools.index
tools.index.BUILD_STEP = 10
from tools import open_store
def parked(n):
    print(n, flush=True)
    time.sleep(120)  # killed here, after its first step
open_store(sys.argv[1], relation_match="exact").rebuild_index(progress=parked)
"""


def test_kill_9_mid_build_resumes_and_lookups_answer_meanwhile(tmp_path: Path, cheap_embedding: None) -> None:
    db = tmp_path / "kb.sqlite"
    open_store(db, index=False).write_many([(f"Person {i}", "birthplace", f"Town {i}") for i in range(40)])
    child = subprocess.Popen([sys.executable, "-c", BUILD_CHILD, str(db)], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        first_step = child.stdout.readline()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert first_step.strip() == "10", child.stderr.read()[-2000:]

    store = open_store(db, relation_match="exact")
    ids = [f.id for f in store.iter_facts()]
    assert store.index_building() == ids[9]  # the mark of the one step that finished
    # An incomplete first build: exact lookups answer under both policies, a near key says the index is building.
    assert store.read("person 3", "Birthplace").value == "Town 3"
    published = store.with_policy("published")
    assert published.read("Person 30", "birthplace").value == "Town 30"
    assert published.read("Person 30", "place of birth").rule == "index_building"

    store.delete(entity="Person 2")  # a row the killed build had embedded: the removal reaches its collection too
    store.write("Person 40", "birthplace", "Town 40")
    steps: list[int] = []
    assert store.rebuild_index(progress=steps.append) == {"default": 40}
    assert sum(steps) == 31  # resumed after the mark: the 30 rows the kill left, plus the new one
    [report] = store.check_index()
    assert (report["facts"], report["indexed"], report["missing"], report["stale"]) == (40, 40, 0, 0)
    assert store.index_building() is None
    assert published.read("Person 30", "place of birth").rule != "index_building"


def test_a_row_deleted_while_its_build_step_is_embedded_stays_out_of_the_new_index(tmp_path: Path, monkeypatch) -> None:
    """The delete's index change is applied (to both collections) before the step is inserted: the step must
    ask SQL again, under the lock, or it would put the deleted key back."""
    db = tmp_path / "kb.sqlite"
    store = open_store(db, relation_match="exact")
    other = open_store(db, relation_match="exact")  # another writer, while the build embeds
    store.write_many([(f"Person {i}", "birthplace", f"Town {i}") for i in range(30)])
    deleted: list[int] = []

    def embed_while_someone_deletes(self: object, input: list[str]) -> list:
        if len(input) == 30 and not deleted:  # the build's step, not the delete's own index change
            deleted.extend(r.id for r in other.delete(entity="Person 4").removed)
        return cheap_embedding_module.embed(self, input)

    from tools.index import MiniLMEmbedding

    monkeypatch.setattr(MiniLMEmbedding, "__call__", embed_while_someone_deletes)
    monkeypatch.setattr(MiniLMEmbedding, "embed_query", cheap_embedding_module.embed)
    assert store.rebuild_index() == {"default": 29} and len(deleted) == 1
    [report] = store.check_index()
    assert (report["facts"], report["indexed"], report["stale"]) == (29, 29, 0)


def test_a_first_open_never_leaves_a_file_without_tables(tmp_path: Path) -> None:
    db = tmp_path / "kb.sqlite"
    db.touch()  # what an older version left when killed at its first open
    open_store(db, index=False).write("Ada Lovelace", "birth year", "1815")
    assert open_store(db, index=False, create=False).count() == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_a_read_only_open_reads_and_never_writes(tmp_path: Path, cheap_embedding: None) -> None:
    import hashlib

    db = tmp_path / "kb.sqlite"
    writer = open_store(db)
    writer.write_many([("Ada Lovelace", "birth year", "1815"), ("Alan Turing", "birthplace", "London")])
    writer.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    reader = open_store(db, read_only=True)
    assert reader.read("ada lovelace", "birth_year").value == "1815"
    assert reader.with_policy("published").read("Alan Turing", "place of birth").found
    for write in (lambda: reader.write("X", "y", "z"), lambda: reader.delete(entity="Ada Lovelace"),
                  lambda: reader.check_index(repair=True)):
        with pytest.raises(InvalidInput, match="read-only"):
            write()
    reader.close()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_database_from_before_the_journal_is_read_as_is_and_upgraded_on_a_writable_open(tmp_path: Path) -> None:
    db = tmp_path / "kb.sqlite"
    open_store(db, index=False).write("Geri Halliwell", "birthplace", "Watford")
    with sqlite3.connect(db) as conn:  # what the previous version made
        conn.executescript("DROP TABLE kb_outbox; DROP TABLE kb_tombstone; DELETE FROM kb_meta WHERE name = 'audit_key';")
    old = open_store(db, index=False, create=False)
    assert old.read("Geri Halliwel", "birthplace").value == "Watford"  # the fuzzy step needs no tombstone table
    with pytest.raises(InvalidInput, match="previous schema"):
        old.delete(entity="Geri Halliwell")
    upgraded = open_store(db, index=False)
    assert upgraded.delete(entity="Geri Halliwell").verified
    assert upgraded.read("Geri Halliwel", "birthplace").rule == "entity_forgotten"


# --------------------------------------------------------------------------- concurrency


def test_four_concurrent_imports_into_one_sqlite_file_all_succeed(tmp_path: Path) -> None:
    db = tmp_path / "kb.sqlite"  # does not exist yet: four first opens race too
    files = [tmp_path / f"part{k}.jsonl" for k in range(4)]
    expected = {}
    for k, path in enumerate(files):
        for e, r, v in _triples(path, 150, f"w{k}", people=10):  # 10 people in every file: the same keys race
            expected[(e, r)] = expected.get((e, r), set()) | {v}
    procs = [subprocess.Popen([*LMLM, "kb", "import", str(p), "--db", str(db), "--index", "off", "--single-valued"],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in files]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    store = open_store(db, index=False, create=False)
    stored = {(f.entity, f.relation): f.value for f in store.iter_facts()}
    assert stored.keys() == expected.keys()  # every row there, one per single-valued pair
    assert all(v in expected[k] for k, v in stored.items())


CHEAP_EMBEDDING = "import cheap_embedding; cheap_embedding.install()\n"

def _writer(db: str, index: str, k: int) -> None:
    """One writing process: two batches of its own people, and an upsert of the key every writer writes."""
    cheap_embedding_module.install()
    store = open_store(db, index=index, index_wait_s=120)
    for b in range(2):
        store.write_many([(f"writer {k} person {b * 30 + i}", "birthplace", f"town {k}-{b}-{i}") for i in range(30)])
        store.write("shared person", "motto", f"from writer {k}")


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_concurrent_writers_on_one_local_index_lose_no_row(tmp_path: Path, database: str, request,
                                                           cheap_embedding: None) -> None:
    """Three processes write through one local Chroma directory (first opens racing, the same key upserted by
    all); afterwards every row is found by a semantic search on its own exact key."""
    import multiprocessing

    if database == "sqlite":
        db = str(tmp_path / "kb.sqlite")
    else:
        import uuid

        from sqlalchemy import create_engine, text
        base = request.getfixturevalue("pg_url")
        name = f"durable_{uuid.uuid4().hex[:8]}"
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        db = base.rsplit("/", 1)[0] + "/" + name
        request.addfinalizer(lambda: _drop_pg(admin, name))
    chroma = str(tmp_path / "kb.chroma")
    # Real processes, forked from a server that imported the store once (three fresh interpreters cost 20 s here).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tools.store", "tools.index", "cheap_embedding"])
    procs = [context.Process(target=_writer, args=(db, chroma, k)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0] * 3
    store = open_store(db, index=chroma)  # this process has no client of that directory yet: it reads the disk
    facts = list(store.iter_facts())
    lost = [f.key for f in facts if [h.fact_id for h in store.index.query("default", f.key, 1)] != [f.id]]
    assert (len(facts), lost, store.check_index()[0]["pending"]) == (3 * 60 + 1, [], 0)
    store.close()


def _drop_pg(admin, name: str) -> None:
    from sqlalchemy import text

    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def test_a_held_local_index_is_a_clear_error_after_the_wait(tmp_path: Path, cheap_embedding: None) -> None:
    db, chroma = tmp_path / "kb.sqlite", tmp_path / "kb.chroma"
    open_store(db).write("Ada Lovelace", "birth year", "1815")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1],'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(60)", str(chroma / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(IndexBusy, match="held by another process"):
            open_store(db, index_wait_s=0.5)
        assert time.monotonic() - start < 5
        cli = runner.invoke(app, ["kb", "add", "X", "y", "z", "--db", str(db)], env={"LMLM_KB_INDEX_WAIT_S": "0.3"})
        assert cli.exit_code == 1 and "held by another process" in cli.output and "Traceback" not in cli.output
    finally:
        holder.kill()
        holder.wait()
    assert open_store(db, index_wait_s=5).read("Ada Lovelace", "birth year").value == "1815"


# --------------------------------------------------------------------------- forgetting on disk


def test_forgetting_a_person_leaves_none_of_their_bytes_on_disk(tmp_path: Path, cheap_embedding: None) -> None:
    run = tmp_path / "run"
    store = open_store(run / "kb.sqlite")
    store.write_many([(f"Person {i:03d}", "birthplace", f"Town {i:03d}") for i in range(60)])
    store.write_many([("Qwerina Blastoquel", "motto", "Nevermore-Unique-Saying-77", "doc:9"),
                      ("Qwerina Blastoquel", "birthplace", "Frobozzville", "doc:10")])
    store.write("Qwerina Blastoquel", "motto", "Nevermore-Unique-Saying-78")  # the audit held the old value
    receipt = store.delete(entity="Qwerina Blastoquel")
    assert receipt.verified and receipt.disk is not None and receipt.disk.files >= 2 and receipt.disk.bytes > 0
    files = [p for p in run.rglob("*") if p.is_file()]
    for value in (b"Nevermore-Unique-Saying", b"Frobozzville", b"Qwerina Blastoquel"):  # only ever in SQLite
        assert [str(p) for p in files if value in p.read_bytes()] == [], value
    # The key is embedded by Chroma, whose vector files are written from buffers that may hold stray heap
    # bytes (rarely a recent key); nothing else may hold it, and the receipt must report exactly what is there.
    holding = {str(p) for p in files if b"qwerina blastoquel" in p.read_bytes()}
    assert all(path.endswith(".bin") for path in holding), holding
    assert {f for found in receipt.disk.found.values() for f in found} == holding
    # Still accountable, still unknown: the audit keeps digests, the tombstone keeps a typo from a neighbour.
    deletes = [e for e in store.audit(limit=2) if e.action == "delete"]
    assert len(deletes) == 2 and all(e.entity.startswith("hmac:") and e.old_value.startswith("hmac:") for e in deletes)
    assert {e.source for e in deletes} == {"doc:10", None}  # provenance is kept
    assert store.read("Qwerina Blastoquell", "motto").rule == "entity_forgotten"
    assert store.read("Person 001", "birthplace").value == "Town 001"
    store.close()
    again = open_store(run / "kb.sqlite")  # the compaction kept every vector the index still needs
    assert all([h.fact_id for h in again.index.query("default", f.key, 1)] == [f.id] for f in again.iter_facts())


def test_the_delete_receipt_reports_bytes_it_still_finds(tmp_path: Path) -> None:
    store = open_store(tmp_path / "kb.sqlite", index=False)
    store.write("Kalo Veri", "birthplace", "Ostmerhaven")
    (tmp_path / "notes.txt").write_text("Ostmerhaven")  # not one of the store's files: not scanned
    receipt = store.delete(entity="Kalo Veri")
    assert receipt.disk is not None and receipt.disk.clean
    with store.engine.begin() as conn:  # an audit row an older version wrote, with the value in clear
        conn.exec_driver_sql("INSERT INTO kb_audit (at, action, namespace, fact_id, entity, relation, old_value) "
                             "VALUES ('2026-01-01', 'update', 'default', 999, 'x', 'y', 'Ostmerhaven')")
    store.write("Kalo Veri", "birthplace", "Ostmerhaven")
    found = store.delete(entity="Kalo Veri").disk
    assert found is not None and found.found == {"Ostmerhaven": [str(tmp_path / "kb.sqlite")]}
