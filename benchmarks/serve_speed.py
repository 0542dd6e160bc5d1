"""Server throughput: 8 concurrent clients against 1, side by side in one run.

    python -m benchmarks.serve_speed --out runs/bench/serve     # writes serve_speed.json and serve_speed.md

The model is :func:`benchmarks.decode_speed.scheduled_model` (a Llama of the
chosen preset that writes a lookup call every ``period`` positions and never EOS,
so every answer is exactly ``max_tokens`` written tokens, with lookups against a
real exact store). It is served by :func:`lmlm_agent.server.create_app` under
uvicorn on 127.0.0.1, in this process; clients are threads posting
``/v1/completions`` (greedy, one prompt each, questions of different lengths) over
httpx. Each case sends ``requests`` requests: one client one after another, then
``clients`` clients at once, each taking its share. Figures: requests/s and
tokens/s (completion tokens as the server reports them: written plus injected),
and the most rows the server's decoder held at once. Best of ``repeats`` rounds,
the cases taken in turn each round. Clients and server share the interpreter
(and the CPU), as a benchmark on one machine must.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import httpx
import torch

from benchmarks.decode_speed import _world_text, scheduled_model
from lmlm_agent.agent import LMLMAgent
from lmlm_agent.model import count_parameters
from lmlm_agent.server import ServerConfig, create_app
from lmlm_agent.tokenizer import train_tokenizer


@dataclass
class ServeSpeedConfig:
    preset: str = field(default="small", metadata={"help": "model preset (lmlm_agent.model.PRESETS)"})
    vocab_size: int = field(default=2048, metadata={"help": "tokenizer vocabulary"})
    max_tokens: int = field(default=48, metadata={"help": "tokens written per answer (every answer writes exactly this many)"})
    period: int = field(default=16, metadata={"help": "a lookup call every this many positions"})
    requests: int = field(default=32, metadata={"help": "requests per case"})
    clients: int = field(default=8, metadata={"help": "concurrent clients of the concurrent case"})
    max_batch: int = field(default=8, metadata={"help": "the server's max_batch"})
    repeats: int = field(default=2, metadata={"help": "rounds; the fastest of each case is kept"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (1 is steadier on a shared machine)"})


def _case(url: str, prompts: list[str], clients: int, max_tokens: int) -> dict:
    """Send every prompt, ``clients`` at a time; wall time, requests and completion tokens."""
    def send(share: list[str]) -> int:
        tokens = 0
        with httpx.Client(timeout=600) as http:
            for prompt in share:
                resp = http.post(url + "/completions", json={"model": "lmlm", "prompt": prompt, "max_tokens": max_tokens,
                                                              "temperature": 0})
                resp.raise_for_status()
                tokens += resp.json()["usage"]["completion_tokens"]
        return tokens

    shares = [prompts[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(send, shares))
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(prompts), "seconds": wall, "completion_tokens": tokens,
            "requests_per_s": len(prompts) / wall, "tokens_per_s": tokens / wall}


def run(setup: ServeSpeedConfig, out_dir: str | Path) -> dict:
    """Measure both cases; write ``serve_speed.json`` and ``serve_speed.md`` into ``out_dir``."""
    from tools import open_store
    from training.teacher_server import running_server

    torch.set_num_threads(setup.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world, texts = _world_text()
    tokenizer = train_tokenizer(texts, vocab_size=setup.vocab_size)
    store = open_store(None, index=False)
    store.write_many(world.triples, source="serve_speed")
    entity, relation, _ = world.triples[0]
    model = scheduled_model(setup.preset, tokenizer, entity, relation, period=setup.period)
    agent = LMLMAgent(model, tokenizer, store)
    names = [e.name for e in world.entities]
    prompts = [f"Question: What do you know about {names[i % len(names)]}{' and the rest' * (i % 5)}?\nAnswer:"
               for i in range(setup.requests)]
    app = create_app(agent, ServerConfig(max_tokens=setup.max_tokens, max_batch=setup.max_batch,
                                         max_queue=max(setup.requests, 1)))
    scheduler = app.state.scheduler
    best: dict[str, dict] = {}
    with running_server(app) as url:
        _case(url, prompts[:2], 1, setup.max_tokens)  # warm-up
        for _ in range(setup.repeats):
            for name, clients in (("1 client", 1), (f"{setup.clients} clients", setup.clients)):
                scheduler.batch_sizes.clear()
                result = _case(url, prompts, clients, setup.max_tokens)
                result["most_rows_at_once"] = max(scheduler.batch_sizes)
                if name not in best or result["seconds"] < best[name]["seconds"]:
                    best[name] = result
    one, many = best["1 client"], best[f"{setup.clients} clients"]
    summary = {
        "setup": asdict(setup),
        "model_parameters": count_parameters(model),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {setup.threads}",
        "cases": best,
        "speedup_requests_per_s": many["requests_per_s"] / one["requests_per_s"],
    }
    (out_dir / "serve_speed.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "serve_speed.md").write_text(markdown(summary))
    return summary


def markdown(r: dict) -> str:
    s = r["setup"]
    lines = [
        f"# Server throughput: {s['clients']} concurrent clients vs 1",
        "",
        f"{s['preset']} model ({r['model_parameters']:,} parameters), {s['requests']} requests per case, "
        f"{s['max_tokens']} written tokens each, a lookup every {s['period']} positions; {r['machine']}; "
        f"best of {s['repeats']}.",
        "",
        "| case | requests/s | tokens/s | seconds | most rows decoded at once |",
        "|---|---|---|---|---|",
    ]
    for name, c in r["cases"].items():
        lines.append(f"| {name} | {c['requests_per_s']:.2f} | {c['tokens_per_s']:.0f} | {c['seconds']:.2f} | {c['most_rows_at_once']} |")
    lines += ["", f"{s['clients']} clients / 1 client: **{r['speedup_requests_per_s']:.2f}x** requests/s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for serve_speed.json and serve_speed.md")
    for f in fields(ServeSpeedConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=f.metadata["help"])
    args = vars(parser.parse_args())
    out = args.pop("out")
    print(markdown(run(ServeSpeedConfig(**args), out)))


if __name__ == "__main__":
    main()
