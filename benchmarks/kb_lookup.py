"""Knowledge-base benchmark: bulk insert, index build, and lookup latency at 10k / 100k (/ 1M) triples.

    from benchmarks.kb_lookup import run
    report = run("runs/bench/kb", sizes=(10_000, 100_000))   # writes kb_lookup.json and kb_lookup.md

Triples are generated (pronounceable unique names, a dozen relations), so the
figures depend only on the store. Each size gets a fresh SQLite file and Chroma
directory. Three query sets are timed one lookup at a time, as the decoder issues them:

- exact:    a stored (entity, relation) in another spelling (case, underscores);
- semantic: a stored entity with the relation paraphrased, so exact misses and the index answers
            (its accuracy is the share answered with the right row);
- miss:     an unknown entity, which runs the exact and the semantic step and finds nothing.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tools import SQLKnowledgeStore, open_store

NAME = "kb_lookup"
TARGETS_MS = {"exact_p50": 1.0, "semantic_p50": 10.0}  # at 100k triples, on this machine

# (stored relation, paraphrase used by semantic queries)
RELATIONS = [
    ("birth year", "year of birth"),
    ("birthplace", "place of birth"),
    ("occupation", "profession"),
    ("employer", "works for"),
    ("spouse", "married to"),
    ("nationality", "citizenship"),
    ("alma mater", "university attended"),
    ("notable work", "best known work"),
    ("award received", "prize won"),
    ("death year", "year of death"),
    ("residence", "place of residence"),
    ("native language", "mother tongue"),
]
_SYLLABLES = "ka lo mi ra ven tor sel ani dru qua bel zor fin hal ost mer tul ris pen gar".split()


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def synthetic_triples(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` triples: unique two-word entities, each with every relation until ``n`` is reached."""
    rng = random.Random(seed)
    entities: dict[str, None] = {}
    while len(entities) * len(RELATIONS) < n:
        entities[f"{_word(rng)} {_word(rng)}"] = None
    triples = [(e, rel, f"{_word(rng)} {rng.randint(1, 2000)}") for e in entities for rel, _ in RELATIONS]
    return triples[:n]


def _respell(text: str, rng: random.Random) -> str:
    """Another spelling with the same normalised key: case changes and underscores for spaces."""
    text = rng.choice([str.lower, str.upper, str.title, str])(text)
    return text.replace(" ", "_") if rng.random() < 0.5 else text


def _percentiles(samples_ns: Sequence[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)

    def rank(q: float) -> float:  # nearest rank
        return ms[min(len(ms) - 1, int(q * (len(ms) - 1) + 0.5))]

    return {"p50_ms": round(rank(0.50), 4), "p99_ms": round(rank(0.99), 4), "mean_ms": round(sum(ms) / len(ms), 4)}


def _time_lookups(
    store: SQLKnowledgeStore, queries: Sequence[tuple[str, str]], judge: Callable[[int, Any], bool], warmup: int = 20
) -> dict[str, Any]:
    """Wall and CPU time of one lookup at a time, and the share of results ``judge`` accepts.

    CPU time (all threads of the process) is what a lookup costs; wall time adds the
    waiting for a core, which on a shared machine can dwarf it.
    """
    for e, r in queries[:warmup]:
        store.read(e, r)
    wall, cpu, good = [], [], 0
    for n, (e, r) in enumerate(queries):
        start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
        result = store.read(e, r)
        cpu.append(time.process_time_ns() - start_cpu)
        wall.append(time.perf_counter_ns() - start)
        good += judge(n, result)
    return {"queries": len(queries), "wall": _percentiles(wall), "cpu": _percentiles(cpu), "accepted": round(good / len(queries), 4)}


def bench_size(n: int, workdir: Path, *, queries: int, seed: int) -> dict[str, Any]:
    """Build a store of ``n`` triples in ``workdir`` and time inserts, the index build and three lookup kinds."""
    rng = random.Random(seed + n)
    triples = synthetic_triples(n, seed)
    db, index = workdir / f"kb-{n}.sqlite", workdir / f"kb-{n}.chroma"

    sql = open_store(db, index=False)
    start = time.perf_counter()
    sql.write_many(triples, source="bench")
    insert_s = time.perf_counter() - start
    sql.close()

    store = open_store(db, index=index)
    start = time.perf_counter()
    indexed = store.rebuild_index()[store.namespace]
    index_s = time.perf_counter() - start

    picks = [triples[rng.randrange(n)] for _ in range(queries)]
    paraphrase = dict(RELATIONS)
    exact_q = [(_respell(e, rng), _respell(r, rng)) for e, r, _ in picks]
    semantic_q = [(e.lower(), paraphrase[r]) for e, r, _ in picks]
    miss_q = [(f"{_word(rng)} {_word(rng)} {_word(rng)}", RELATIONS[i % len(RELATIONS)][0]) for i in range(queries)]
    result = {
        "triples": n,
        "insert": {"seconds": round(insert_s, 3), "rows_per_s": round(n / insert_s)},
        "index_build": {"keys": indexed, "seconds": round(index_s, 3), "keys_per_s": round(indexed / index_s)},
        "exact": _time_lookups(store, exact_q, lambda i, res: res.match == "exact" and res.value == picks[i][2]),
        "semantic": _time_lookups(store, semantic_q, lambda i, res: res.match == "semantic" and res.value == picks[i][2]),
        "miss": _time_lookups(store, miss_q, lambda i, res: res.match == "miss"),
    }
    store.close()
    return result


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (platform.processor() is often empty on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Knowledge-base lookup benchmark",
        "",
        f"Machine: {report['machine']}. One lookup at a time; latency in milliseconds, as wall-clock time and as "
        "CPU time of the process (the cost of a lookup without the wait for a core). "
        f"Targets at 100k: exact p50 <= {TARGETS_MS['exact_p50']} ms, semantic p50 <= {TARGETS_MS['semantic_p50']} ms.",
        "",
        "| triples | SQL insert rows/s | index build keys/s | clock | exact p50 / p99 | semantic p50 / p99 "
        "| miss p50 / p99 | exact hits | semantic right | unknown rejected |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["sizes"]:
        ex, se, mi = r["exact"], r["semantic"], r["miss"]
        for clock in ("wall", "cpu"):
            head = (f"| {r['triples']:,} | {r['insert']['rows_per_s']:,} | {r['index_build']['keys_per_s']:,}"
                    if clock == "wall" else "| | |")
            tail = f"| {ex['accepted']:.1%} | {se['accepted']:.1%} | {mi['accepted']:.1%} |" if clock == "wall" else "| | | |"
            lines.append(
                f"{head} | {clock} | {ex[clock]['p50_ms']:.3f} / {ex[clock]['p99_ms']:.3f} "
                f"| {se[clock]['p50_ms']:.2f} / {se[clock]['p99_ms']:.2f} | {mi[clock]['p50_ms']:.2f} / {mi[clock]['p99_ms']:.2f} {tail}"
            )
    lines += [
        "",
        "Semantic queries paraphrase the relation (e.g. 'birthplace' -> 'place of birth'); 'semantic right' is the "
        "share answered with the stored value at threshold 0.6. Miss queries ask for an unknown entity; "
        "'unknown rejected' is the share answered 'unknown' (the rest are false semantic matches).",
        f"Load average (1 min) before / after: {report['load_before']} / {report['load_after']}.",
    ]
    return "\n".join(lines) + "\n"


def run(
    out_dir: str | Path,
    sizes: Sequence[int] = (10_000, 100_000),
    *,
    queries: int = 500,
    seed: int = 0,
    keep_stores: bool = False,
) -> dict[str, Any]:
    """Benchmark each size and write ``kb_lookup.json`` and ``kb_lookup.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="kb-bench-", dir=out))
    load_before = round(os.getloadavg()[0], 2)
    try:
        results = [bench_size(n, workdir, queries=queries, seed=seed) for n in sizes]
    finally:
        if not keep_stores:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "benchmark": NAME,
        "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "targets_ms": TARGETS_MS,
        "sizes": results,
    }
    (out / f"{NAME}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / f"{NAME}.md").write_text(_markdown(report), encoding="utf-8")
    return report
