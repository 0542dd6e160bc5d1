"""`lmlm demo` end to end at the tiny size, then the commands that read its run directory."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lmlm_agent.cli import app
from benchmarks.demo import DemoRun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny demo run (the models barely train: this checks the plumbing, not the numbers)."""
    directory = tmp_path_factory.mktemp("demo") / "run"
    lines: list[str] = []
    pipeline = DemoRun(directory, "tiny", threads=2, announce=lines.append, seed_count=2)
    report = pipeline.run()
    assert report == directory / "report.md"
    assert sum(line.startswith("[") for line in lines) == len(DemoRun.STAGES)  # every stage announced itself
    return directory


def test_run_directory_layout(run) -> None:
    for path in ("world/triples.jsonl", "teacher/annotations.jsonl", "annotator/annotator.json",
                 "annotator/annotation_eval.md", "corpus/annotated.jsonl", "kb.sqlite", "lmlm/config.json",
                 "baseline/config.json", "perplexity.json", "bench/report.md", "bench/summary.json",
                 "memory.json", "report.md", "summary.png", "perplexity.png", "demo.json",
                 "retain/lmlm/config.json", "retain/baseline/config.json", "no_abstention/lmlm/config.json",
                 "abstention_reference.json", "bench/claims.json", "bench/abstention.md", "claims.json",
                 "seed-1/lmlm/config.json", "seed-1/bench/claims.json"):
        assert (run / path).exists(), path
    state = json.loads((run / "demo.json").read_text())
    assert [s["name"] for s in state["stages"]] == list(DemoRun.STAGES)
    assert state["wall_seconds"] > 0


def test_report_has_the_results_table_and_the_next_steps(run) -> None:
    report = (run / "report.md").read_text()
    assert "| measure | LMLM | LMLM, DB off | baseline |" in report
    for measure in ("perplexity", "FactScore", "cloze hit@5", "forget quality", "model utility", "abstain"):
        assert measure in report
    assert "| claim | measure | value [95 % interval] | n | p | holds | note |" in report
    over_seeds = json.loads((run / "claims.json").read_text())
    assert over_seeds["seeds"] == [0, 1] and all(c["n"] == 2 for c in over_seeds["claims"])
    forget = next(c for c in over_seeds["claims"] if "forget quality" in c["claim"])
    assert "retain models" in forget["measure"]  # the references stage trained them
    assert f"lmlm chat --run {run}" in report and f"lmlm serve --run {run}" in report
    memory = json.loads((run / "memory.json").read_text())
    assert [s["stage"] for s in memory["steps"]] == ["before ingest", "after ingest", "after delete"]
    ingested_rows = {f["fact_id"] for f in memory["ingest"]["facts"]}
    assert memory["deleted_rows"] == len(ingested_rows)  # the delete removed exactly what was ingested
    # Misspelled or rephrased, the deleted fact is not found, nor another relation's or person's in its place.
    assert [p["query"] for p in memory["probes"]] == ["exact", "typo'd entity", "paraphrased relation", "typo'd and paraphrased"]
    assert all(p["right"] and p["value"] != memory["new_value"] for p in memory["probes"]), memory["probes"]
    assert "unknown, never another fact in its place" in report


def test_kb_ingest_command(run, tmp_path) -> None:
    text = tmp_path / "news.txt"
    text.write_text("Ada Lovelace was born in London.\n\nAda Lovelace works as a mathematician.\n")
    result = CliRunner().invoke(app, ["kb", "ingest", str(text), "--run", str(run), "--index", "off", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["documents"] == 2
    assert all(f["source"].startswith("news.txt#p") for f in report["facts"])


def test_chat_command(run) -> None:
    result = CliRunner().invoke(app, ["chat", "--run", str(run), "--max-tokens", "8"], input="Where was X born?\n\n")
    assert result.exit_code == 0, result.output
    assert "lmlm>" in result.output


def test_server_over_the_run(run) -> None:
    from starlette.testclient import TestClient

    from lmlm_agent.server import ServerConfig, create_app, load_run

    config = ServerConfig(semantic=False)
    with TestClient(create_app(load_run(run, config), config)) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "lmlm"
        resp = client.post("/v1/chat/completions", json={"model": "lmlm", "max_tokens": 8,
                                                         "messages": [{"role": "user", "content": "Who?"}]})
        assert resp.status_code == 200 and "citations" in resp.json()


def test_resume_refuses_other_settings(run) -> None:
    from benchmarks.demo import SettingsMismatch

    with pytest.raises(SettingsMismatch, match="other settings"):
        DemoRun(run, "small").run(resume=True)  # the tiny run's annotator and models are no small ones
