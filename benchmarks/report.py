"""Markdown tables and PNG plots of the factual-precision and forgetting benchmarks.

Each benchmark's results are plain dicts (``to_dict`` of its result objects); this
module turns them into ``<name>.json``, ``<name>.md`` and ``<name>.png`` in a run directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        if math.isinf(x):
            return "∞" if x > 0 else "-∞"
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(directory: Path, name: str, data: dict, markdown: str, figure=None) -> list[Path]:
    """``<name>.json``, ``<name>.md`` and, given a matplotlib figure, ``<name>.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.json", directory / f"{name}.md"]
    paths[0].write_text(json.dumps(data, indent=2, default=str))
    paths[1].write_text(markdown)
    if figure is not None:
        import matplotlib.pyplot as plt

        paths.append(directory / f"{name}.png")
        figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(figure)
    return paths


def _figure(ncols: int, width: float = 4.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, 3.6), squeeze=False)


def _bars(ax, labels: Sequence[str], values: Sequence[float], title: str, ylim: float | None = 1.0) -> None:
    ax.bar(range(len(values)), [0 if math.isnan(v) else v for v in values], color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_title(title)
    if ylim:
        ax.set_ylim(0, ylim)


# --------------------------------------------------------------------------- factual precision

def factscore_markdown(results: Sequence[dict]) -> str:
    rows = [(r["subject"], r["n"], r["score"], r["precision"], r["abstention_rate"], r["facts_per_response"],
             r["supported_per_response"]) for r in results]
    return "\n".join([
        "# FactScore-style precision of generated biographies",
        "",
        "Prompt `Tell me a bio of X. X is`, greedy; atomic facts judged against the world's gold triples; "
        "score = supported share x length penalty exp(1 - 10/n) for n < 10 facts; abstentions excluded. "
        "A person of the generated world has at most 7 facts, so the penalty applies to every bio; "
        "precision is the unpenalised supported share. Facts about other entities count as unsupported.",
        "",
        table(["model", "bios", "FactScore", "precision", "abstained", "facts/bio", "supported/bio"], rows),
        "",
    ])


def factscore_figure(results: Sequence[dict]):
    fig, axes = _figure(2)
    names = [r["subject"] for r in results]
    _bars(axes[0][0], names, [r["score"] for r in results], "FactScore")
    _bars(axes[0][1], names, [r["facts_per_response"] for r in results], "atomic facts per bio", ylim=None)
    return fig


def cloze_markdown(results: Sequence[dict]) -> str:
    rows = [(r["subject"], r["n"], r["hit_at_k"], r["precision_at_1"], r["object_nll"]) for r in results]
    return "\n".join([
        "# Cloze (T-REx style)",
        "",
        "Prompt = the statement up to its object; an LMLM must start with a lookup. hit@5: the object among "
        "the first 5 words written; precision@1 and NLL: the object's tokens under teacher forcing "
        "(for an LMLM after its gold call: the loss on the value it repeats, which is trained text, "
        "given what the database returned).",
        "",
        table(["model", "items", "hit@5", "token precision@1", "object NLL/token"], rows),
        "",
    ])


def cloze_figure(results: Sequence[dict]):
    fig, axes = _figure(2)
    names = [r["subject"] for r in results]
    _bars(axes[0][0], names, [r["hit_at_k"] for r in results], "hit@5")
    _bars(axes[0][1], names, [r["precision_at_1"] for r in results], "token precision@1")
    return fig


# --------------------------------------------------------------------------- forgetting

def forgetting_markdown(result: dict) -> str:
    rows = [(r["method"], r["split"], r["forget_quality"], r["model_utility"], r["forget_truth_ratio"],
             r["forget_probability"], r["forget_rouge_l"], r["seconds"]) for r in result["rows"]]
    receipts = [(s, r["entities"], r["rows_removed"], r["verified"]) for s, r in result["receipts"].items()]
    return "\n".join([
        "# TOFU forgetting: LMLM row deletion vs gradient unlearning of the baseline",
        "",
        f"Forget quality = KS-test p-value against {result['reference']}. Model utility = harmonic mean of "
        "probability, ROUGE-L recall and truth ratio on retain, real_authors and world_facts. "
        "Forget truth ratio = mean min(R, 1/R) on the forget split.",
        "",
        table(["method", "split", "forget quality", "model utility", "forget truth ratio", "forget prob",
               "forget ROUGE-L", "seconds"], rows),
        "",
        "## LMLM deletions (forget receipts)",
        "",
        table(["split", "entities", "rows removed", "verified"], receipts),
        "",
    ])


def forgetting_figure(result: dict):
    rows = result["rows"]
    splits = list(dict.fromkeys(r["split"] for r in rows))
    fig, axes = _figure(2, width=5.5)
    for ax, key, title in ((axes[0][0], "forget_quality", "forget quality (KS p)"),
                           (axes[0][1], "model_utility", "model utility")):
        methods = list(dict.fromkeys(r["method"] for r in rows))
        width = 0.8 / len(splits)
        for i, split in enumerate(splits):
            by_method = {r["method"]: r[key] for r in rows if r["split"] == split}
            values = [by_method.get(m, math.nan) for m in methods]
            ax.bar([j + i * width for j in range(len(methods))], [0 if math.isnan(v) else v for v in values],
                   width, label=split)
        ax.set_xticks([j + width * (len(splits) - 1) / 2 for j in range(len(methods))], methods,
                      rotation=25, ha="right")
        ax.set_title(title)
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- targets

def targets_markdown(factscore: Sequence[dict] | None, cloze: Sequence[dict] | None, forgetting: dict | None) -> str:
    """The issue's targets, each checked on this run's numbers."""
    lines = ["# Targets on this run", "", "| target | value | met |", "|---|---|---|"]

    def check(label: str, value: float, ok: bool) -> None:
        lines.append(f"| {label} | {fmt(value)} | {'yes' if ok else 'no'} |")

    for name, results, key in (("FactScore", factscore, "score"), ("cloze hit@5", cloze, "hit_at_k")):
        if not results:
            continue
        by = {r["subject"]: r[key] for r in results}
        lmlm, base, off = by.get("lmlm", math.nan), by.get("baseline", math.nan), by.get("lmlm-db-off", math.nan)
        ratio = lmlm / base if base else (math.inf if lmlm > 0 else math.nan)  # 0 / 0 is no evidence of a gain
        check(f"{name}: LMLM / baseline >= 2", ratio, ratio >= 2)
        loss = 1 - off / lmlm if lmlm else math.nan
        check(f"{name}: DB-off loses >= 50 % of LMLM", loss, loss >= 0.5)
    if forgetting:
        rows = forgetting["rows"]
        before = {r["split"]: r["model_utility"] for r in rows if r["method"] == "lmlm before"}
        for r in rows:
            if r["method"] == "lmlm-delete":
                check(f"deletion forget quality >= 0.5 ({r['split']})", r["forget_quality"], r["forget_quality"] >= 0.5)
                drop = abs(1 - r["model_utility"] / before[r["split"]]) if before.get(r["split"]) else math.nan
                check(f"deletion model utility within 1 % of before ({r['split']})", drop, drop <= 0.01)
    return "\n".join(lines + [""])
