"""`lmlm bench ... --run DIR` on a run directory of micro models (the layout `lmlm demo` writes)."""

import copy
import json

from bench_setup import micro_setup
from typer.testing import CliRunner

from lmlm_agent.cli import app
from lmlm_agent.model import save_checkpoint
from tools import open_store

FAST = ["tofu_questions=2", "rouge_tokens=3", "forget_splits=forget01", "methods=grad_ascent,npo",
        "unlearn_steps=1", "unlearn_batch=2", "factscore_people=2", "factscore_tokens=6", "cloze_items=3"]


def test_bench_all_writes_json_markdown_and_plots(tmp_path):
    world, tok, model = micro_setup()
    save_checkpoint(tmp_path / "lmlm", model, tok, kind="lmlm")
    save_checkpoint(tmp_path / "baseline", copy.deepcopy(model), tok, kind="baseline")
    open_store(tmp_path / "kb.sqlite", index=False).write_many(world.triples, source="world")
    world.save(tmp_path / "world")
    args = ["bench", "all", "--run", str(tmp_path)] + [a for kv in FAST for a in ("--set", kv)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "bench"
    for name in ("factscore", "cloze", "tofu"):
        for ext in ("json", "md", "png"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    report = (out / "report.md").read_text()
    assert "# Targets on this run" in report and "lmlm-delete" in report
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


def test_targets_ratio_with_zero_baseline():
    from benchmarks.report import targets_markdown

    def ratio_row(lmlm, base):
        rows = [{"subject": "lmlm", "score": lmlm}, {"subject": "baseline", "score": base}, {"subject": "lmlm-db-off", "score": 0.0}]
        return next(line for line in targets_markdown(rows, None, None).splitlines() if "LMLM / baseline" in line)

    assert ratio_row(0.0, 0.0) == "| FactScore: LMLM / baseline >= 2 | n/a | no |"  # 0 / 0: no evidence of a gain
    assert ratio_row(0.2, 0.0) == "| FactScore: LMLM / baseline >= 2 | ∞ | yes |"
    assert ratio_row(0.2, 0.05) == "| FactScore: LMLM / baseline >= 2 | 4.000 | yes |"
