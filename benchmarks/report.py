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
    if x is None:
        return "n/a"
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


def pyplot():
    """matplotlib.pyplot on the file-only backend (runs have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(ncols: int, width: float = 4.5):
    return pyplot().subplots(1, ncols, figsize=(width * ncols, 3.6), squeeze=False)


def interval(estimate: dict | None) -> str:
    """``value [low, high]`` of an Estimate's dict ("" without one)."""
    if not estimate:
        return ""
    return f"{fmt(estimate['value'])} [{fmt(estimate['low'])}, {fmt(estimate['high'])}]"


def error_bars(heights: Sequence[float], lows: Sequence[float | None], highs: Sequence[float | None]) -> list[list[float]]:
    """matplotlib's ``yerr`` (below, above) from interval bounds; a missing or infinite bound draws no bar."""
    clean = lambda x, h: h if x is None or math.isnan(x) or math.isinf(x) else x  # noqa: E731
    return [[max(0.0, h - clean(lo, h)) for h, lo in zip(heights, lows)],
            [max(0.0, clean(hi, h) - h) for h, hi in zip(heights, highs)]]


def _bars(ax, labels: Sequence[str], values: Sequence[float], title: str, ylim: float | None = 1.0,
          lows: Sequence[float] | None = None, highs: Sequence[float] | None = None) -> None:
    """Bars with 95 % intervals as error bars (where given)."""
    heights = [0 if math.isnan(v) else v for v in values]
    errors = error_bars(heights, lows, highs) if lows is not None and highs is not None else None
    ax.bar(range(len(values)), heights, color="#4c72b0", yerr=errors, capsize=4)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_title(title)
    if ylim:
        ax.set_ylim(0, ylim)


def _estimate_bars(ax, results: Sequence[dict], estimates: Sequence[dict], title: str, ylim: float | None = 1.0) -> None:
    _bars(ax, [r["subject"] for r in results], [e["value"] for e in estimates], title, ylim,
          [e["low"] for e in estimates], [e["high"] for e in estimates])


# --------------------------------------------------------------------------- factual precision

def factscore_markdown(results: Sequence[dict]) -> str:
    rows = [(r["subject"], r["n"], interval(r["intervals"]["score"]), interval(r["intervals"]["precision"]),
             r["abstention_rate"], interval(r["intervals"]["facts"]), interval(r["intervals"]["supported"]))
            for r in results]
    gamma = results[0]["gamma"] if results else "?"
    return "\n".join([
        "# FactScore-style precision of generated biographies",
        "",
        "Prompt `Tell me a bio of X. X is`, greedy; atomic facts judged against the world's gold triples; "
        f"score = supported share x length penalty exp(1 - γ/n) for n < γ = {gamma} facts; abstentions excluded. "
        "γ defaults to the world's median number of facts per person (a complete bio is not penalised); "
        "`--set gamma=10` gives the published score. Precision is the unpenalised supported share. "
        "Facts about other entities count as unsupported. Intervals: 95 % bootstrap over the bios.",
        "",
        table(["model", "bios", "FactScore", "precision", "abstained", "facts/bio", "supported/bio"], rows),
        "",
    ])


def factscore_figure(results: Sequence[dict]):
    fig, axes = _figure(3)
    for ax, key, title, ylim in ((axes[0][0], "score", f"FactScore (γ = {results[0]['gamma']})", 1.0),
                                 (axes[0][1], "precision", "precision", 1.0),
                                 (axes[0][2], "facts", "atomic facts per bio", None)):
        _estimate_bars(ax, results, [r["intervals"][key] for r in results], title, ylim)
    return fig


def cloze_markdown(results: Sequence[dict]) -> str:
    rows = [(r["subject"], r["n"], interval(r["hit_interval"]), r["precision_at_1"], r["object_nll"]) for r in results]
    return "\n".join([
        "# Cloze (T-REx style)",
        "",
        "Prompt = the statement up to its object; an LMLM must start with a lookup. hit@5: the object among "
        "the first 5 words written (Wilson 95 % interval); precision@1 and NLL: the object's tokens under "
        "teacher forcing (for an LMLM after its gold call: the loss on the value it repeats, which is trained "
        "text, given what the database returned).",
        "",
        table(["model", "items", "hit@5", "token precision@1", "object NLL/token"], rows),
        "",
    ])


def cloze_figure(results: Sequence[dict]):
    fig, axes = _figure(2)
    _estimate_bars(axes[0][0], results, [r["hit_interval"] for r in results], "hit@5")
    _bars(axes[0][1], [r["subject"] for r in results], [r["precision_at_1"] for r in results], "token precision@1")
    return fig


# --------------------------------------------------------------------------- forgetting

def forgetting_markdown(result: dict) -> str:
    nan = float("nan")  # runs written before the value-token column lack it
    rows = [(r["method"], r["split"], r["forget_items"],
             f"{fmt(r['forget_quality'])} [{fmt(r['forget_quality_low'])}, {fmt(r['forget_quality_high'])}]",
             r["forget_quality_proxy"],
             f"{fmt(r.get('forget_quality_values', nan))} [{fmt(r.get('forget_quality_values_low', nan))}, "
             f"{fmt(r.get('forget_quality_values_high', nan))}]", r["model_utility"],
             r["forget_truth_ratio"], r["forget_probability"],
             r["forget_rouge_l"], r["seconds"]) for r in result["rows"]]
    receipts = [(s, r["entities"], r["rows_removed"], r["verified"]) for s, r in result["receipts"].items()]
    return "\n".join([
        "# TOFU forgetting: LMLM row deletion vs gradient unlearning of the baseline",
        "",
        f"Forget quality = KS-test p-value against {result['reference']} (95 % bootstrap interval over "
        "the questions); the proxy column is the same against each model's own truth ratios on never-seen "
        "people; the value-token column is the same test as the first on truth ratios of the answer's value only "
        "(the name and sentence head, which an LMLM has seen after a deletion, left out). Model utility = harmonic mean of probability, ROUGE-L recall and truth ratio on retain, "
        "real_authors and world_facts. Forget truth ratio = mean min(R, 1/R) on the forget split.",
        "",
        table(["method", "split", "questions", "forget quality [95 %]", "forget quality (never-seen proxy)",
               "forget quality, value tokens [95 %]", "model utility", "forget truth ratio", "forget prob", "forget ROUGE-L", "seconds"], rows),
        "",
        "## LMLM deletions (forget receipts)",
        "",
        table(["split", "entities", "rows removed", "verified"], receipts),
        "",
    ])


def forgetting_figure(result: dict):
    rows = result["rows"]
    splits = list(dict.fromkeys(r["split"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = _figure(2, width=5.5)
    for ax, key, title in ((axes[0][0], "forget_quality", "forget quality (KS p, 95 % interval)"),
                           (axes[0][1], "model_utility", "model utility")):
        width = 0.8 / len(splits)
        for i, split in enumerate(splits):
            by_method = {r["method"]: r for r in rows if r["split"] == split}
            values = [by_method[m][key] if m in by_method else math.nan for m in methods]
            heights = [0 if math.isnan(v) else v for v in values]
            errors = None
            if key == "forget_quality":
                errors = error_bars(heights, [by_method[m]["forget_quality_low"] if m in by_method else None for m in methods],
                                    [by_method[m]["forget_quality_high"] if m in by_method else None for m in methods])
            ax.bar([j + i * width for j in range(len(methods))], heights, width, label=split, yerr=errors, capsize=3)
        ax.set_xticks([j + width * (len(splits) - 1) / 2 for j in range(len(methods))], methods,
                      rotation=25, ha="right")
        ax.set_title(title)
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- abstention

def abstention_markdown(result: dict, references: dict[str, dict] | None = None) -> str:
    """``references``: the 2-point check's (``run_all.bench_abstention``), each a row beside the LMLM's."""
    examples = [(a["question"], a["value"], a["before"], a["after"], a["verdict_after"]) for a in result["answers"][:5]]
    names = {"decoding": "the same LMLM without abstain_on_unknown", "training": "an LMLM trained without abstentions"}
    rows = [(name, interval(r["correct_before"]), interval(r["abstain_after"]), interval(r["stated_after"]),
             interval(r["correct_after"]))
            for name, r in [("the LMLM", result)] + [(names[k], r) for k, r in (references or {}).items()]]
    return "\n".join([
        "# Abstention after a deletion",
        "",
        f"{result['n']} forget10 questions asked of the LMLM with its full store, then with those people's rows "
        "deleted. Abstain: the answer says `unknown`; stated: it states a value (an empty answer is neither). "
        "Wilson 95 % intervals.",
        "",
        table(["model", "before: correct", "after: abstain", "after: states a value", "after: still the gold value"],
              rows),
        "",
        table(["question", "gold", "answer before", "answer after deletion", "after"], examples),
        "",
    ])
