"""TOFU on TOFU's files: the loader on each file shape, annotate -> KB, scoring with lookups before/after a deletion, the run."""

import json
import time

import pytest
from bench_setup import micro_setup

from benchmarks.tofu_config import TofuRunConfig
from benchmarks.tofu_files import (
    RECORDS_FILE,
    BadRows,
    MissingSplit,
    QARow,
    load_eval,
    load_eval_sets,
    load_train,
    world_for_authors,
    write_world_files,
)
from benchmarks.subject import ScoredAnswer
from benchmarks.tofu_run import (
    Annotated,
    AnnotationSummary,
    LookupSubject,
    TofuRun,
    annotate_cached,
    delete_forget_rows,
    forget_quality_interval,
    placements,
    working_copy,
    write_kb,
)
from lmlm_agent.format import LookupCall
from training.teacher import calls_with_offsets


@pytest.fixture(scope="module")
def world():
    return world_for_authors(30, seed=0)  # forget01, forget05 and forget10 then hold 1, 2 and 3 authors


@pytest.mark.parametrize("json_lines", [False, True])
def test_loader_reads_each_file_shape(world, tmp_path, json_lines):
    data = write_world_files(world, tmp_path / "tofu", json_lines=json_lines)
    assert (data / f"full{'.jsonl' if json_lines else '.json'}").read_text().lstrip()[0] == ("{" if json_lines else "[")
    full = load_train(data, "full")
    authors = list(dict.fromkeys(r.author for r in full))
    f01, f05, f10 = (load_train(data, s) for s in ("forget01", "forget05", "forget10"))
    # TOFU's order: the forget authors are the last ones, forget01 within forget05 within forget10.
    assert {r.index for r in f01} < {r.index for r in f05} < {r.index for r in f10}
    assert [r.index for r in f10] == list(range(len(full) - len(f10), len(full)))
    assert {r.author for r in f10} == set(world.splits["forget10"]) and authors[-1] in world.splits["forget01"]
    for forget, retain in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
        kept = {r.index for r in load_train(data, retain)}
        assert kept.isdisjoint({r.index for r in load_train(data, forget)}) and len(kept) + len(load_train(data, forget)) == len(full)
    sets = load_eval_sets(data, ["forget01", "forget05", "forget10"])
    item = sets["forget10"][0]
    assert item.paraphrased_answer != item.answer and item.perturbed_answer and item.value_offsets == []
    assert len(sets["forget10"]) == len(f10) and sets["real_authors"] and sets["world_facts"]
    # real_authors / world_facts have no paraphrase: the answer is the base of the truth ratio.
    assert all(q.paraphrased_answer == q.answer for q in sets["real_authors"])


def test_loader_without_author_fields_counts_authors_by_position(tmp_path):
    rows = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(6)]
    (tmp_path / "full.json").write_text(json.dumps(rows))
    (tmp_path / "forget10.json").write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    assert [r.author for r in load_train(tmp_path, "full", qa_per_author=2)] == ["author-0"] * 2 + ["author-1"] * 2 + ["author-2"] * 2
    assert [r.source for r in load_train(tmp_path, "forget10", qa_per_author=2)] == ["full#4", "full#5"]


def test_loader_errors_say_what_is_wrong(world, tmp_path):
    data = write_world_files(world, tmp_path / "tofu")
    (data / "forget05_perturbed.json").unlink()
    with pytest.raises(MissingSplit, match="forget05_perturbed.*full.json"):
        load_eval_sets(data, ["forget05"])
    rows = json.loads((data / "retain_perturbed.json").read_text())
    for r in rows[:3]:
        del r["perturbed_answer"]
    (data / "retain_perturbed.json").write_text(json.dumps(rows))
    with pytest.raises(BadRows, match=r"3 of \d+ rows lack 'perturbed_answer' \(rows 0, 1, 2\)"):
        load_eval(data, "retain")
    (data / "forget01.json").write_text('[{"question": "Not in full?", "answer": "x"}]')
    with pytest.raises(BadRows, match="not in full.json"):
        load_train(data, "forget01")
    (data / "full.json").write_text("{not json")
    with pytest.raises(BadRows, match="not a JSON list nor JSON lines"):
        load_train(data, "full")
    with pytest.raises(MissingSplit, match="does not exist"):
        load_train(tmp_path / "nowhere", "full")


def test_annotate_to_kb_with_sources_refusals_and_timeouts(world, tmp_path):
    from fastapi import FastAPI

    from tools import open_store
    from training.teacher_server import running_server

    data = write_world_files(world, tmp_path / "tofu")
    rows = load_train(data, "full")[:6]
    config = TofuRunConfig(data=str(data), out=str(tmp_path / "run"), annotator="offline", progress=False)
    (tmp_path / "run").mkdir()
    unknown = "An answer the teacher never saw."
    summary = AnnotationSummary()
    got = annotate_cached([r.answer for r in rows] + [unknown], config, tmp_path / "run", summary)
    assert summary.statuses == {"ok": 6, "unknown": 1} and got[unknown].calls == []
    # A QA row whose answer yields no call: its author is counted, not dropped.
    rows.append(QARow(99, "Who?", unknown, "Nobody Known"))
    store = open_store(None, index=False)
    write_kb(store, rows, got, "tofu-test", summary)
    facts = list(store.iter_facts(namespace="tofu-test"))
    assert summary.triples_written == len(facts) == summary.calls == 6 and summary.authors_without_calls == ["Nobody Known"]
    for f in facts:  # each row's source is its QA item, whose answer states the value
        row = rows[int(f.source.removeprefix("full#"))]
        assert f.value in row.answer and f.entity == row.author
    # The rerun reads the cache: no teacher needed (the offline one is not even started for cached texts).
    again = AnnotationSummary()
    annotate_cached([r.answer for r in rows[:6]], TofuRunConfig(data=str(data), annotator="teacher",
                                                                teacher_url="http://127.0.0.1:9/v1", progress=False),
                    tmp_path / "run", again)
    assert again.cached == 6
    # A teacher that times out: counted as failed, not cached, asked again next time.
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def slow(body: dict):
        time.sleep(1.0)
        return {}  # too late: the client has given up

    slow_text = load_train(data, "full")[7].answer
    with running_server(app) as url:
        timed_out = AnnotationSummary()
        out = annotate_cached([slow_text], TofuRunConfig(annotator="teacher", teacher_url=url, teacher_timeout=0.2,
                                                         teacher_retries=0, progress=False), tmp_path / "run", timed_out)
    assert timed_out.statuses == {"failed": 1} and out[slow_text].calls == []
    assert slow_text not in (tmp_path / "run" / "annotations.jsonl").read_text()
    # A triple the store refuses (a call token inside a field) is counted with its reason.
    bad = {rows[0].answer: Annotated("ok", [(0, LookupCall("<|db_end|>", "x", "y"))])}
    refused = AnnotationSummary()
    write_kb(open_store(None, index=False), rows[:1], bad, "t", refused)
    assert refused.triples_refused == 1 and "full#0" in refused.refused[0]
    # A teacher that answers nothing stops the run before any training.
    down = TofuRunConfig(data=str(data), out=str(tmp_path / "down"), annotator="teacher", teacher_url="http://127.0.0.1:9/v1",
                         teacher_retries=0, forget_splits="forget01", eval_questions=1, progress=False)
    with pytest.raises(ValueError, match=r"no training answer got a lookup call .*'failed'"):
        TofuRun(down).run()
    assert not (tmp_path / "down" / "models").exists()


def test_forget_quality_interval_is_the_paired_bootstrap_of_the_ks_p_value():
    import numpy as np

    from benchmarks.stats import bootstrap
    from benchmarks.tofu import forget_quality

    rng = np.random.default_rng(1)
    u, r = rng.random(25), rng.random(25) + 0.2
    got = forget_quality_interval(u, r)
    slow = bootstrap(np.arange(25), lambda i: forget_quality(u[i.astype(int)], r[i.astype(int)]))
    assert (got["forget_quality"], got["fq_low"], got["fq_high"]) == pytest.approx((slow.value, slow.low, slow.high))
    assert got["fq_low"] < got["forget_quality"] < got["fq_high"]


def test_scoring_executes_lookups_before_and_after_deletion(tmp_path):
    from tools import open_store

    world, tokenizer, model = micro_setup()
    data = write_world_files(world, tmp_path / "tofu")
    records = [json.loads(line)["text"] for line in (data / RECORDS_FILE).read_text().splitlines()]
    annotations = {}
    for annotated in records:
        plain, calls, _ = calls_with_offsets(annotated)
        annotations[plain] = Annotated("ok", calls)
    full = load_train(data, "full")
    qa = load_eval_sets(data, ["forget10"])
    store = open_store(None, index=False)
    write_kb(store, full, annotations, "default", AnnotationSummary())
    lmlm = LookupSubject("lmlm", model, tokenizer, store=store, placements=placements(annotations))
    baseline = LookupSubject("baseline", model, tokenizer, placements=placements(annotations))

    def nlls(subject, items):
        answers = [a for q in items for a in q.answers]
        return subject.answer_nlls([q.question for q in items for _ in q.answers], [ScoredAnswer(a) for a in answers])

    forget, retain = qa["forget10"], qa["retain"][:6]
    text = lmlm.answer_text(ScoredAnswer(forget[0].answer))
    assert "<|db_return|>" in text and "unknown" not in text
    before = {"forget": nlls(lmlm, forget), "retain": nlls(lmlm, retain), "baseline": nlls(baseline, forget)}
    forgotten = working_copy(store, "exact")
    receipt = delete_forget_rows(forgotten, {r.source for r in load_train(data, "forget10")})
    assert receipt["verified"] and receipt["rows_removed"] == sum(len(annotations[r.answer].calls)
                                                                  for r in load_train(data, "forget10"))
    after_lmlm = LookupSubject("lmlm", model, tokenizer, store=forgotten, placements=lmlm.placements)
    assert "<|db_return|> unknown<|db_end|>" in after_lmlm.answer_text(ScoredAnswer(forget[0].answer))
    after = {"forget": nlls(after_lmlm, forget), "retain": nlls(after_lmlm, retain), "baseline": nlls(baseline, forget)}
    # Every forget answer now carries `unknown`: its probability changes; the retain answers' and the baseline's do not.
    assert all(abs(a - b) > 1e-6 for a, b in zip(before["forget"], after["forget"]))
    assert after["retain"] == pytest.approx(before["retain"], abs=1e-6)
    assert after["baseline"] == pytest.approx(before["baseline"], abs=1e-6)


def test_lmlm_tofu_command_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from lmlm_agent.cli import app

    data, out = tmp_path / "tofu", tmp_path / "run"
    write_world_files(world_for_authors(8, seed=1), data)
    settings = ["preset=micro", "vocab_size=400", "context_length=96", "max_steps=1", "batch_size=8",
                "forget_splits=forget10", "methods=grad_diff", "relation_match=exact", "rouge_tokens=0", "eval_questions=3", "unlearn_epochs=1",
                "unlearn_batch=4", "progress=false"]
    args = ["tofu", "--data", str(data), "--out", str(out), "--annotator", "offline", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, *(a for s in settings for a in ("--set", s))])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "tofu.json").read_text())
    methods = {(r["model"], r["method"]) for r in report["rows"]}
    assert methods == {("lmlm", "before"), ("baseline", "before"), ("lmlm", "delete"), ("baseline", "grad_diff")}
    assert report["receipts"]["forget10"]["verified"] and report["receipts"]["forget10"]["rows_removed"] > 0
    assert set(report["training"]) == {"lmlm", "baseline", "lmlm-retain90", "baseline-retain90"}
    assert [r["model"] for r in report["references"]] == ["lmlm-retain90", "baseline-retain90"]
    assert (out / "tofu.png").exists() and "Published figures (not ours" in (out / "tofu.md").read_text()
    # A bad split is one clear error line.
    bad = CliRunner().invoke(app, [*args, "--set", "forget_splits=forget07"])
    assert bad.exit_code == 2 and "unknown forget split" in bad.output


def test_distilled_annotator_through_the_same_function(world, tmp_path):
    from benchmarks.tofu_run import annotate_texts
    from training.annotator import AnnotatorConfig, train_annotator

    docs = [(d.plain, d.annotated) for d in world.documents[:4]]
    config = AnnotatorConfig(encoder_layers=1, max_length=64, batch_size=4, max_steps=2, progress=False, calibration_documents=0)
    annotator, _ = train_annotator(docs, config)
    annotator.config.value_bias = 4.0  # an untrained tagger is shy: force calls
    path = annotator.save(tmp_path / "annotator")
    answers = [r.answer for r in load_train(write_world_files(world, tmp_path / "tofu"), "full")[:5]]
    got = annotate_texts(answers + [""], str(path))
    assert [a.status for a in got] == ["ok"] * 5 + ["empty"] and any(a.calls for a in got)
    for text, a in zip(answers, got):
        for offset, call in a.calls:  # offsets point into the answer, where the value is written
            assert 0 <= offset < len(text) and call.entity and call.relation
