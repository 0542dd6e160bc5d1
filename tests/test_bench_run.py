"""`lmlm bench ... --run DIR` on a run directory of micro models (the layout `lmlm demo` writes)."""

import copy
import json

from bench_setup import micro_setup
from typer.testing import CliRunner

from lmlm_agent.cli import app
from lmlm_agent.model import save_checkpoint
from tools import open_store

FAST = ["tofu_questions=2", "rouge_tokens=3", "forget_splits=forget01", "methods=grad_ascent,npo",
        "unlearn_steps=1", "unlearn_batch=2", "factscore_people=2", "factscore_tokens=6", "cloze_items=3",
        "abstention_questions=2", "relation_match=exact"]


def run_directory(path, models=("lmlm", "baseline")):
    """The micro world and model as a run directory: checkpoints (each its own copy), kb.sqlite, world/."""
    world, tok, model = micro_setup()
    for name in models:
        save_checkpoint(path / name, copy.deepcopy(model), tok, kind=name.split("/")[-1])
    open_store(path / "kb.sqlite", index=False).write_many(world.triples, source="world")
    world.save(path / "world")


def bench(*args, settings=FAST):
    result = CliRunner().invoke(app, ["bench", *map(str, args)] + [a for kv in settings for a in ("--set", kv)])
    assert result.exit_code == 0, result.output


def test_bench_all_writes_json_markdown_and_plots(tmp_path):
    run_directory(tmp_path)
    bench("all", "--run", tmp_path)
    out = tmp_path / "bench"
    for name in ("factscore", "cloze", "tofu"):
        for ext in ("json", "md", "png"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    report = (out / "report.md").read_text()
    assert "# Claims on this run" in report and "lmlm-delete" in report and "# Abstention after a deletion" in report
    claimed = json.loads((out / "claims.json").read_text())["claims"]
    assert any(c["claim"].startswith("FactScore precision") for c in claimed)
    assert any("never-seen proxy (no retain models)" in c["measure"] for c in claimed)  # no RUN/retain here
    rows = json.loads((out / "tofu.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"lmlm before", "baseline before", "lmlm-delete", "grad_ascent", "npo"}
    cloze = {r["subject"] for r in json.loads((out / "cloze.json").read_text())["results"]}
    assert cloze == {"lmlm", "lmlm-db-off", "baseline"}


def test_bench_tofu_on_tofu_files(tmp_path):
    world, tok, model = micro_setup()
    save_checkpoint(tmp_path / "lmlm", model, tok, kind="lmlm")
    save_checkpoint(tmp_path / "baseline", model, tok, kind="baseline")
    open_store(tmp_path / "kb.sqlite", index=False).write_many(world.triples, source="world")
    world.save(tmp_path / "world")
    data = tmp_path / "tofu"
    data.mkdir()
    row = {"question": "Who wrote it?", "answer": "Ada wrote it.", "paraphrased_answer": "It was Ada.",
           "perturbed_answer": ["Bob wrote it.", "Cy wrote it."]}
    for stem in ("forget01_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
        (data / f"{stem}.json").write_text(json.dumps(row) + "\n")
    args = ["bench", "tofu", "--run", str(tmp_path), "--set", f"tofu_data={data}", "--set", "rouge_tokens=2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "bench" / "tofu.json").read_text())["results"]
    assert set(out) == {"lmlm", "baseline"} and set(out["lmlm"]["splits"]) == {"forget01", "retain", "real_authors", "world_facts"}


def test_retain_models_are_the_reference_when_the_run_has_them(tmp_path):
    """The retain-model path on a micro world: RUN/retain/{lmlm,baseline} become forget quality's reference."""
    run_directory(tmp_path, ("lmlm", "baseline", "retain/lmlm", "retain/baseline"))
    bench("tofu", "--run", tmp_path, settings=[kv for kv in FAST if not kv.startswith("methods=")] + ["methods=grad_ascent"])
    tofu = json.loads((tmp_path / "bench" / "tofu.json").read_text())
    assert "retain models" in tofu["reference"]
    delete = next(r for r in tofu["rows"] if r["method"] == "lmlm-delete")
    # Same weights, and the retain store lacks exactly the deleted rows: the deletion is the reference.
    assert delete["forget_quality"] == 1.0 and 0 <= delete["forget_quality_proxy"] <= 1


def test_bench_all_over_seeds(tmp_path):
    run_directory(tmp_path)
    bench("all", "--run", tmp_path, "--seeds", 2,
          settings=[kv for kv in FAST if not kv.startswith("methods=")] + ["methods=grad_ascent", "seed=3"])
    out = tmp_path / "bench"
    assert (out / "seed-3" / "claims.json").exists() and (out / "seed-4" / "report.md").exists()
    summary = json.loads((out / "claims_over_seeds.json").read_text())["claims"]
    assert summary and all(c["n"] == 2 for c in summary)
    assert "Claims over 2 item samples (seeds 3..4)" in (out / "claims_over_seeds.md").read_text()
