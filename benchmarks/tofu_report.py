"""The report of `lmlm tofu` (benchmarks.tofu_run): tofu.json, tofu.md and tofu.png, with published figures beside ours."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks import report

# Figures from the literature, shown beside ours and labelled as published (Llama-2-7b on TOFU).
PUBLISHED = [
    {"label": "published: Llama-2-7b NPO, forget10", "split": "forget10", "forget_quality": 0.42, "model_utility": 0.54},
    {"label": "published: Llama-2-7b fine-tuned (before unlearning)", "split": "", "forget_quality": math.nan,
     "model_utility": 0.63},
]


def markdown(data: dict) -> str:
    a = data["annotation"]
    rows = [(r["model"], r["method"], r["split"], r["forget_quality"], f"[{report.fmt(r['fq_low'])}, {report.fmt(r['fq_high'])}]",
             r["model_utility"], r["utility_change"], r["forget_truth_ratio"], r["forget_probability"],
             r["forget_rouge_l"], r["seconds"]) for r in data["rows"]]
    trained = [(name, t.get("qa_examples"), t.get("steps"), t.get("tokens"), t.get("train_loss"), t.get("train_seconds"),
                "reused" if t.get("reused") else "") for name, t in data["training"].items()]
    receipts = [(s, r["entities"], r["rows_removed"], r["verified"]) for s, r in data["receipts"].items()]
    published = [(p["label"], p["split"] or "-", p["forget_quality"], p["model_utility"]) for p in data["published"]]
    references = [(r["model"], r["split"], r["forget_truth_ratio"]) for r in data["references"]]
    no_calls = ", ".join(f"{s} {n}" for s, n in a["eval_items_without_calls"].items())
    return "\n".join([
        f"# TOFU on {data['config']['data']}: LMLM row deletion vs gradient unlearning",
        "",
        "Our figures: forget quality = KS-test p-value of the forget split's truth ratios against the retain model "
        "of the same kind (trained without the forget split; the LMLM's store without its rows), with a 95 % "
        "bootstrap interval over the forget items; model utility = harmonic mean of probability, ROUGE-L and truth "
        "ratio on retain, real authors and world facts; utility change = against the same model before forgetting. "
        "The LMLM's answers carry their lookups with the value the store returns now; values inside calls are not scored.",
        "",
        report.table(["model", "method", "split", "forget quality", "95 % interval", "model utility", "utility change",
                      "forget truth ratio", "forget prob", "forget ROUGE-L", "seconds"], rows),
        "",
        "The references: each retain model's forget truth ratio (never trained on the split; the LMLM's store "
        "without its rows), the level a perfectly forgetting model matches.",
        "",
        report.table(["retain model", "forget split", "forget truth ratio"], references),
        "",
        "## Published figures (not ours; Llama-2-7b on the real TOFU)",
        "",
        report.table(["published", "split", "forget quality", "model utility"], published),
        "",
        "## Annotation",
        "",
        f"{a['texts']} distinct answer texts ({a['cached']} from the cache); statuses {a['statuses']}; "
        f"{a['calls']} calls on the training rows, {a['triples_written']} rows in namespace {data['namespace']}, "
        f"{a['triples_refused']} triples refused by the store; {a['training_rows_without_calls']} training rows "
        f"without a call; {len(a['authors_without_calls'])} of {a['authors']} authors without any call (their "
        f"items are scored as the baseline's would be). Evaluation items whose answer has no call: {no_calls}. "
        f"Teacher tokens: {a['prompt_tokens']} prompt, {a['completion_tokens']} completion.",
        "",
        "## Fine-tuning",
        "",
        report.table(["model", "QA rows", "steps", "tokens", "train loss", "seconds", ""], trained),
        "",
        "## LMLM deletions (forget receipts in receipts.json)",
        "",
        report.table(["split", "entities", "rows removed", "verified"], receipts),
        "",
        "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in data["timings_s"].items()),
        "",
    ])


def figure(data: dict):
    """Per forget split, forget quality (log) against model utility: ours coloured by method, published in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(r["split"] for r in data["rows"]))
    methods = list(dict.fromkeys((r["model"], r["method"]) for r in data["rows"]))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.8), squeeze=False, sharey=True)
    for ax, split in zip(axes[0], splits):
        for r in (r for r in data["rows"] if r["split"] == split):
            fq = max(r["forget_quality"], 1e-12)  # a p-value of 0 still shows, at the bottom
            ax.errorbar(r["model_utility"], fq, yerr=[[fq - max(r["fq_low"], 1e-12)], [max(r["fq_high"] - fq, 0)]]
                        if not math.isnan(r["fq_low"]) else None, fmt="o", color=colours[(r["model"], r["method"])],
                        label=f"ours: {r['model']} {r['method']}", capsize=2, alpha=0.85)
        for p in data["published"]:
            if math.isnan(p["forget_quality"]):
                ax.axvline(p["model_utility"], color="black", linestyle="--", linewidth=1, label=p["label"])
            elif p["split"] == split:
                ax.scatter(p["model_utility"], p["forget_quality"], marker="*", s=160, color="black", label=p["label"])
        ax.set_yscale("log")
        ax.set_xlim(-0.02, 1)
        ax.set_title(split)
        ax.set_xlabel("model utility")
    axes[0][0].set_ylabel("forget quality (KS p, log)")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="upper center", ncol=3, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("TOFU: ours (coloured, 95 % intervals) and published Llama-2-7b figures (black)")
    return fig


def write_report(directory: Path, data: dict) -> list[Path]:
    return report.write_outputs(directory, "tofu", data, markdown(data), figure(data))


__all__ = ["PUBLISHED", "figure", "markdown", "write_report"]
