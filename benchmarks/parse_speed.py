"""Parser speed against input length: the format functions must take linear time.

Each *shape* is a text built by repeating one unit up to a target size; each of
the four text functions of ``lmlm_agent.format`` (``strip_calls``,
``strip_values``, ``legacy_to_special``, ``memllm_to_special``) runs on it, and
the time per kB is reported for every size. Linear time shows as a flat time per
kB from the smallest size to the largest; a quadratic loop shows as time per kB
growing with the size (4x per 4x of input).

The shapes are the adversarial inputs the parser fuzz run found (issue 20) plus
two well-formed references:

- ``memllm_unclosed_reads``: ``({MEM_READ(`` repeated, never closed.
- ``memllm_unclosed_writes``: ``({MEM_WRITE-->`` repeated, never closed.
- ``legacy_one_line``: unclosed ``[dblookup('A', 'B' `` heads on one line (no newline).
- ``legacy_quoted_args``: one legacy call whose arguments are thousands of quoted pieces.
- ``legacy_open_brackets``: ``[dblookup('A', 'B') -> [`` repeated (a value bracket never closed).
- ``nested_entities``: ``<|db_entity|> A`` repeated (every call nested in the next).
- ``token_halves``: ``<|db_`` ... a stray ``<|db_end|>`` ... ``end|>``: removing the
  stray token joins the halves into new tokens, one after the other.
- ``annotated_prose`` / ``legacy_prose``: ordinary annotated text, for reference.

Linear time shows as an exponent near 1 in the fit time ~ size^k (quadratic: 2). On a
shared machine µs/kB also steps up once the input outgrows the CPU caches (between 32
and 128 kB here, for unchanged code and plain annotated text alike); a step is not growth.

A case whose run exceeds ``budget_s`` is not measured at the larger sizes (so a
quadratic parser finishes in bounded time; the skipped sizes are listed).
Run as ``python -m benchmarks.parse_speed --out runs/bench`` (JSON + Markdown).
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.report import table, write_outputs
from lmlm_agent.format import (
    DB_END,
    DB_ENTITY,
    legacy_to_special,
    memllm_to_special,
    render_call,
    strip_calls,
    strip_values,
)

FUNCTIONS: dict[str, Callable[[str], object]] = {
    "strip_calls": strip_calls,
    "strip_values": strip_values,
    "legacy_to_special": legacy_to_special,
    "memllm_to_special": memllm_to_special,
}


def _repeat(unit: str, size: int, head: str = "", tail: str = "") -> str:
    body = size - len(head) - len(tail)
    return head + unit * max(1, body // len(unit)) + tail


def _token_halves(size: int) -> str:
    half = size // 2 // 10
    return "<|db_" * half + DB_END + "end|>" * half


SHAPES: dict[str, Callable[[int], str]] = {
    "memllm_unclosed_reads": lambda n: _repeat("({MEM_READ(", n),
    "memllm_unclosed_writes": lambda n: _repeat("({MEM_WRITE-->", n),
    "legacy_one_line": lambda n: _repeat("[dblookup('A', 'B' ", n),
    "legacy_quoted_args": lambda n: _repeat("'a', ", n, head="[dblookup(", tail="x) -> v]"),
    "legacy_open_brackets": lambda n: _repeat("[dblookup('A', 'B') -> [", n),
    "nested_entities": lambda n: _repeat(f"{DB_ENTITY} A", n),
    "token_halves": _token_halves,
    "annotated_prose": lambda n: _repeat(
        "Ada Lovelace was born in " + render_call("Ada Lovelace", "birth year", "1815") + " 1815 in London. ", n
    ),
    "legacy_prose": lambda n: _repeat("Ada was born in [dblookup('Ada', 'birth year') -> 1815] 1815.\n", n),
}


@dataclass
class ParseSpeedConfig:
    sizes_kb: list[int] = field(default_factory=lambda: [8, 32, 128, 512], metadata={"help": "input sizes in kB"})
    repeats: int = field(default=3, metadata={"help": "runs per case; the best (least disturbed) is kept"})
    budget_s: float = field(
        default=5.0, metadata={"help": "a case slower than this is not run at the larger sizes"}
    )
    shapes: list[str] = field(default_factory=lambda: list(SHAPES), metadata={"help": "which shapes to run"})


def measure(config: ParseSpeedConfig) -> dict:
    rows: list[dict] = []
    skipped: list[dict] = []
    for shape in config.shapes:
        for name, fn in FUNCTIONS.items():
            over_budget = False
            for kb in config.sizes_kb:
                if over_budget:
                    skipped.append({"shape": shape, "function": name, "kb": kb})
                    continue
                text = SHAPES[shape](kb * 1024)
                best = float("inf")
                for _ in range(config.repeats):
                    gc.collect()
                    gc.disable()  # as timeit does: a collection triggered mid-run measures the heap, not the parser
                    try:
                        start = time.perf_counter()
                        fn(text)
                        best = min(best, time.perf_counter() - start)
                    finally:
                        gc.enable()
                    if best > config.budget_s:
                        break
                rows.append(
                    {"shape": shape, "function": name, "kb": kb, "chars": len(text), "seconds": best,
                     "us_per_kb": 1e6 * best / (len(text) / 1024)}
                )
                over_budget = best > config.budget_s
    return {
        "config": asdict(config),
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "rows": rows,
        "skipped": skipped,
        "growth": growth(rows),
    }


def growth(rows: list[dict]) -> list[dict]:
    """Per case: the exponent k of time ~ size**k, a least-squares fit over the sizes (1 linear, 2 quadratic).

    Also the ratio of µs/kB at the largest size to the smallest. The exponent uses every
    size, so one disturbed measurement on a shared machine moves it less than the ratio.
    """
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for name in FUNCTIONS:
            case = [r for r in rows if r["shape"] == shape and r["function"] == name]
            if len(case) < 2:
                continue
            xs = [math.log(r["chars"]) for r in case]
            ys = [math.log(max(r["seconds"], 1e-9)) for r in case]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            exponent = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            out.append(
                {"shape": shape, "function": name, "from_kb": case[0]["kb"], "to_kb": case[-1]["kb"],
                 "exponent": exponent, "ratio": case[-1]["us_per_kb"] / max(case[0]["us_per_kb"], 1e-9)}
            )
    return out


def markdown(result: dict) -> str:
    sizes = result["config"]["sizes_kb"]
    by_case: dict[tuple[str, str], dict[int, float]] = {}
    for r in result["rows"]:
        by_case.setdefault((r["shape"], r["function"]), {})[r["kb"]] = r["us_per_kb"]
    fit = {(g["shape"], g["function"]): g for g in result["growth"]}
    rows = [
        [shape, fn, *[cells.get(kb, "skipped") for kb in sizes],
         *((fit[shape, fn]["exponent"], fit[shape, fn]["ratio"]) if (shape, fn) in fit else ("n/a", "n/a"))]
        for (shape, fn), cells in by_case.items()
    ]
    return (
        "# Parser speed: µs per kB of input\n\n"
        f"Best of {result['config']['repeats']} runs; 'skipped': the previous size took more than "
        f"{result['config']['budget_s']} s; the garbage collector off while timing, as in timeit. Exponent: k "
        "of time ~ size^k fitted over the measured sizes (1 linear, 2 quadratic). Ratio: µs/kB at the largest "
        "measured size over the smallest (1 linear; quadratic gives the ratio of the sizes).\n\n"
        + table(["shape", "function", *[f"{kb} kB" for kb in sizes], "exponent", "ratio"], rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = ParseSpeedConfig()
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="directory for parse_speed.json/.md")
    parser.add_argument("--sizes-kb", default=",".join(map(str, defaults.sizes_kb)), help="comma-separated sizes in kB")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="runs per case; the best is kept")
    parser.add_argument("--budget-s", type=float, default=defaults.budget_s,
                        help="a case slower than this is not run at the larger sizes")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from: {', '.join(SHAPES)}")
    args = parser.parse_args(argv)
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(sorted(unknown))}; choose from {', '.join(SHAPES)}")
    config = ParseSpeedConfig(
        sizes_kb=[int(s) for s in args.sizes_kb.split(",")], repeats=args.repeats, budget_s=args.budget_s,
        shapes=args.shapes.split(","),
    )
    result = measure(config)
    paths = write_outputs(args.out, "parse_speed", result, markdown(result))
    print(markdown(result))
    print("wrote", ", ".join(map(str, paths)))
    return paths


if __name__ == "__main__":
    main()
