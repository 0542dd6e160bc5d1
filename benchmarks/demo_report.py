"""The demo's report: the headline table (measures with intervals, then the claims), report.md and its plots.

``benchmarks.demo.DemoRun`` calls these as its last stage; ``lmlm demo`` prints
:func:`headline_table` when it is done. Figures come as plain dicts (what each
benchmark's ``to_dict`` wrote), so a finished run can be re-rendered.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.report import error_bars, fmt, interval, pyplot

if TYPE_CHECKING:
    from benchmarks.demo import DemoRun


# --------------------------------------------------------------------------- run conditions

def cpu_seconds() -> float:
    """CPU time of this process and its children: on a shared machine, the honest measure of the work."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine() -> str:
    """Architecture, visible cores, GPU and torch version: what the timings were measured on."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores visible, {gpu}, torch {torch.__version__}"




def headline_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, LMLM, LMLM with the database off, baseline): the demo's measures, each with its 95 % interval."""
    rows: list[tuple[str, str, str, str]] = []
    ppl = results.get("perplexity")
    if ppl:
        lm, base = ppl
        rows.append(("perplexity, held-out text (normalised for LMLM)", fmt(lm["normalised_ppl"], 2), "", fmt(base["static_ppl"], 2)))
        rows.append(("perplexity, dynamic (model writes its own lookups)", fmt(lm["dynamic_ppl"], 2), "", fmt(base["dynamic_ppl"], 2)))
    bench = results.get("bench") or {}
    factscore = {r["subject"]: r for r in bench.get("factscore", [])}
    if factscore:
        gamma = next(iter(factscore.values()))["gamma"]
        for key, label in (("score", f"FactScore (γ = {gamma}, the world's median facts per person)"),
                           ("precision", "FactScore precision (supported share)"),
                           ("facts", "facts per bio"), ("supported", "supported facts per bio")):
            by = {k: interval(r["intervals"][key]) for k, r in factscore.items()}
            rows.append((label, by.get("lmlm", ""), by.get("lmlm-db-off", ""), by.get("baseline", "")))
    cloze = {r["subject"]: interval(r["hit_interval"]) for r in bench.get("cloze", [])}
    if cloze:
        rows.append(("cloze hit@5 (T-REx style)", cloze.get("lmlm", ""), cloze.get("lmlm-db-off", ""), cloze.get("baseline", "")))
    tofu = bench.get("tofu") or []
    for split in dict.fromkeys(r["split"] for r in tofu):
        by = {r["method"]: r for r in tofu if r["split"] == split}
        delete = by.get("lmlm-delete")
        gradient = [r for m, r in by.items() if m not in ("lmlm-delete", "lmlm before", "baseline before")]
        if delete:
            # "forget_quality_values" is missing from runs written before that column
            quality = lambda r, key="forget_quality": (f"{fmt(r.get(key, math.nan))} [{fmt(r.get(key + '_low', math.nan))}, "  # noqa: E731
                                                       f"{fmt(r.get(key + '_high', math.nan))}]")
            rows.append((f"{split}: forget quality, {delete['forget_items']} questions (LMLM: delete rows; baseline: "
                         f"{', '.join(r['method'] for r in gradient)})",
                         quality(delete), "", " / ".join(quality(r) for r in gradient)))
            rows.append((f"{split}: forget quality against never-seen people (proxy)", fmt(delete["forget_quality_proxy"]),
                         "", " / ".join(fmt(r["forget_quality_proxy"]) for r in gradient)))
            values = lambda r: quality(r, "forget_quality_values")  # noqa: E731
            rows.append((f"{split}: forget quality on the answers' value tokens only (no name, no sentence head)",
                         values(delete), "", " / ".join(values(r) for r in gradient)))
            before = by.get("lmlm before", {}).get("model_utility")
            base_before = by.get("baseline before", {}).get("model_utility")
            rows.append((f"{split}: model utility after forgetting (before: {fmt(before)} / {fmt(base_before)})",
                         fmt(delete["model_utility"]), "", " / ".join(fmt(r["model_utility"]) for r in gradient)))
    abstention = bench.get("abstention")
    if abstention:
        rows.append(("after deleting forget10: answers that abstain / state a value",
                     f"{interval(abstention['abstain_after'])} / {interval(abstention['stated_after'])}", "", ""))
        rows.append(("before deleting: correct answers", interval(abstention["correct_before"]), "", ""))
    return rows


def headline_table(results: dict[str, Any]) -> str:
    """The measures (with 95 % intervals), then the claims: value, interval, p and whether each holds."""
    from benchmarks import claims

    lines = ["| measure | LMLM | LMLM, DB off | baseline |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in headline_rows(results)]
    checked = results.get("claims") or (results.get("bench") or {}).get("claims")
    if checked:
        lines += ["", claims.markdown([claims.Claim(**c) for c in checked], "Claims").split("\n", 2)[2]]
    return "\n".join(lines)


def render_report(demo: "DemoRun") -> str:
    """The run's report.md: results table and claims, stage timings, annotator scores, memory writes, next steps."""
    r, size = demo.results, demo.size
    wall = sum(t.seconds for t in demo.timings)
    pre = r.get("pretrain", {})
    parts = [
        f"# LMLM demo: {demo.directory.name}",
        "",
        f"Size `{demo.size_name}`: {size.entities} entities, `{size.preset}` models "
        f"({fmt((pre.get('lmlm') or {}).get('parameters'))} parameters), {size.pretrain_steps} steps each "
        f"of {size.batch_size} x {size.context_length} tokens, {size.abstention_share:.0%} of the LMLM's training "
        f"calls answered `unknown`, the LMLM abstaining after a miss at decoding "
        f"({'on' if size.bench.get('abstain_on_unknown', True) else 'off'}); "
        f"seed {demo.seed}, {demo.seed_count} seed(s). Machine: {machine()}. "
        f"Wall time {wall / 60:.1f} min, CPU time {cpu_seconds() / 60:.1f} min.",
        "",
        "## Results",
        "",
        f"Seed {demo.seed}; every measure with its 95 % interval over the items (bootstrap, Wilson for shares). "
        "The claims below are "
        + (f"over {demo.seed_count} seeds: mean, t interval over the seeds, the largest p, held on every seed."
           if demo.seed_count > 1 else "on this seed: paired comparisons on the same items, one-sided permutation tests."),
        "",
        headline_table(r),
        "",
        "![summary](summary.png)  ![perplexity](perplexity.png)",
        "",
        "Benchmark details, with plots: [bench/report.md](bench/report.md) "
        "(`bench/factscore.png`, `bench/cloze.png`, `bench/tofu.png`).",
        "",
        "## Pipeline",
        "",
        "| stage | seconds | CPU seconds | result |",
        "|---|---|---|---|",
        *[f"| {t.name} | {t.seconds:.1f} | {t.cpu_seconds:.1f} | {t.note} |" for t in demo.timings if t.name != "report"],
        "",
    ]
    annot = r.get("annotator")
    if annot:
        parts += [
            "## Annotator (distilled from the teacher)",
            "",
            f"Calls on {annot['documents']} held-out biographies against the teacher's "
            "(details: [annotator/annotation_eval.md](annotator/annotation_eval.md)).",
            "",
            "| match on | precision | recall | F1 |",
            "|---|---|---|---|",
            *[f"| {key} | {fmt(v['precision'])} | {fmt(v['recall'])} | {fmt(v['f1'])} |"
              for key, v in annot["scores"].items()],
            "",
        ]
    mem = r.get("memory")
    if mem:
        parts += [
            "## Memory writes",
            "",
            f"Question: *{mem['question']}* (the corpus says {mem['gold']}). Ingested through the annotator: "
            f"\"{mem['ingested_text']}\" ({mem['ingest']['written']} facts), a value the model never saw; "
            f"then deleted ({mem['deleted_rows']} rows) and the corpus's row restored.",
            "",
            "| step | answer | lookups (entity, relation, value, match) |",
            "|---|---|---|",
            *[f"| {s['stage']} | {s['answer'] or '(empty)'} | {'; '.join(', '.join(map(str, x)) for x in s['lookups']) or '-'} |"
              for s in mem["steps"]],
            "",
            "After the delete, the store asked directly (entity policy, typo'd names and relations by meaning):",
            "",
            "| lookup | entity | relation | value | match | answered by relation | unknown, never another fact in its place |",
            "|---|---|---|---|---|---|---|",
            *[f"| {p['query']} | {p['entity']} | {p['relation']} | {p['value']} | {p['match']} | "
              f"{p.get('answered_relation') or '-'} | {'yes' if p['right'] else 'NO'} |" for p in mem.get("probes", [])],
            "NO: the lookup gave a value in place of the deleted one: the deleted value, another person's fact, or "
            "(a relation other than the one asked under 'answered by relation') a similar relation of the same person "
            "matched by meaning (issue 14).",
            "",
        ]
    parts += [
        "## Use this run",
        "",
        "```",
        f"lmlm chat --run {demo.directory}",
        f"lmlm serve --run {demo.directory}      # OpenAI-compatible API on http://127.0.0.1:8000/v1",
        f"lmlm bench all --run {demo.directory}  # the benchmarks at full size",
        "```",
        "",
    ]
    return "\n".join(parts)


def perplexity_plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    measures = ("static_ppl", "normalised_ppl", "dynamic_ppl")
    width = 0.38
    for i, row in enumerate(rows):
        ax.bar([j + i * width for j in range(len(measures))], [row[m] for m in measures], width, label=row["kind"])
    ax.set_xticks([j + width / 2 for j in range(len(measures))], ["static", "normalised", "dynamic"])
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("held-out text")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def summary_plot(results: dict[str, Any], path: Path) -> None:
    """FactScore and cloze for the three subjects, and forgetting: deletion vs gradient unlearning (95 % intervals)."""
    plt = pyplot()
    bench = results.get("bench") or {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, title in ((axes[0], "factscore", "FactScore"), (axes[1], "cloze", "cloze hit@5")):
        rows = bench.get(key, [])
        estimates = [r["intervals"]["score"] if key == "factscore" else r["hit_interval"] for r in rows]
        values = [0 if e["value"] is None or math.isnan(e["value"]) else e["value"] for e in estimates]
        ax.bar([r["subject"] for r in rows], values, color=["#4c72b0", "#dd8452", "#55a868"][: len(rows)],
               yerr=error_bars(values, [e["low"] for e in estimates], [e["high"] for e in estimates]), capsize=4)
        ax.set_ylim(0, 1)
        ax.set_title(title)
    tofu = [r for r in bench.get("tofu", []) if "before" not in r["method"]]
    labels = [f"{r['method']}\n{r['split']}" for r in tofu]
    x = range(len(tofu))
    quality = [r["forget_quality"] for r in tofu]
    axes[2].bar([i - 0.2 for i in x], quality, 0.4, label="forget quality",
                yerr=error_bars(quality, [r["forget_quality_low"] for r in tofu], [r["forget_quality_high"] for r in tofu]),
                capsize=3)
    axes[2].bar([i + 0.2 for i in x], [r["model_utility"] for r in tofu], 0.4, label="model utility")
    axes[2].set_xticks(list(x), labels, fontsize=8)
    axes[2].set_ylim(0, 1)
    axes[2].set_title("forgetting")
    axes[2].legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
