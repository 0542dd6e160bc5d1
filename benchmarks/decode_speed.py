"""Decoding speed: interleaved decoding against plain HF ``generate``, the published re-encode loop, and batch 1.

A randomly initialised model does not write lookup calls, so the model here is a
Llama whose logits follow a fixed *call schedule* (:class:`ScheduledCallsLlama`):
whenever the position of the next token is a multiple of ``period`` it is made to
write ``<|db_entity|> E<|db_relationship|> R<|db_return|>``; elsewhere it picks its
own (greedy) tokens, with the call tokens and EOS banned so every run writes
exactly ``max_new_tokens`` tokens. Every token still goes through the full model,
so the timings are those of a real model of that size; the schedule only decides
*which* token wins. Because the schedule depends on positions alone, the three
decoders see the same calls at the same places and must produce the same tokens
(checked on every run).

Measured, same model and same number of written tokens, in one run:

1. ``hf_generate``: ``model.generate`` on one prompt, schedule off (no lookups).
2. ``ours_no_lookups`` / ``ours``: :func:`interleaved_generate` on the same prompt,
   schedule off / on (lookups against an exact store).
3. ``reencode``: the published method, with lookups: ``generate`` until
   ``<|db_return|>``, look up, append ``value<|db_end|>``, then ``generate`` again
   on the whole text (re-encoding the prompt and everything written so far).
4. ``batch8`` vs ``batch1``: eight prompts of different lengths (so their lookups
   fall on different steps), decoded as one batch and one at a time; and, for
   reference, HF ``generate`` batching the same prompts without lookups
   (``hf_batch8`` vs ``hf_batch1``): what batching can gain with this model here,
   and our batch without lookups (``batch8_no_lookups``) against HF's batch.

Each figure is the best of ``repeats`` runs, the cases taken in turn each round
(the machine is shared: the minimum is the least disturbed run, and a drift in
load hits every case alike). Throughput counts written tokens only; injected value tokens
are extra work for ``ours`` and ``reencode`` and are not counted.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from lmlm_agent.decoding import DecodingConfig, interleaved_generate, resolve
from lmlm_agent.format import parse
from lmlm_agent.model import PRESETS, build_model, count_parameters
from lmlm_agent.tokenizer import call_token_ids, train_tokenizer


class ScheduledCallsLlama(LlamaForCausalLM):
    """A Llama that writes a lookup call every ``call_period`` positions (see the module docstring).

    Set ``call_script`` (token ids of ``<|db_entity|> E<|db_relationship|> R<|db_return|>``),
    ``call_period`` (0: never call) and ``banned`` (ids never chosen off-script) after construction.
    """

    call_script: list[int] = []
    call_period: int = 0
    banned: list[int] = []

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, **kwargs):
        out = super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, **kwargs
        )
        logits = out.logits[:, -1, :]
        logits[:, self.banned] = float("-inf")
        if self.call_period:
            # The position of the token about to be chosen, per row (position ids count real tokens only).
            offset = ((position_ids[:, -1] + 1) % self.call_period).tolist()
            last = input_ids[:, -1].tolist()  # right-aligned rows: the last column is each row's newest token
            for b, k in enumerate(offset):
                # A call starts on the period and goes on only as scripted, so it is never entered half-way.
                if k == 0 or (k < len(self.call_script) and last[b] == self.call_script[k - 1]):
                    logits[b, :] = float("-inf")
                    logits[b, self.call_script[k]] = 0.0
        return out


def scheduled_model(preset: str, tokenizer, entity: str, relation: str, period: int, seed: int = 0, **overrides):
    """A :class:`ScheduledCallsLlama` of ``preset`` size, calling ``(entity, relation)`` every ``period`` positions."""
    torch.manual_seed(seed)
    model = ScheduledCallsLlama(build_model(preset, tokenizer, **overrides).config).eval()
    call = call_token_ids(tokenizer)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    model.call_script = [call.entity, *enc(" " + entity), call.relationship, *enc(" " + relation), call.ret]
    if 0 < period <= len(model.call_script):
        # A call must end before the next one starts, or no call is ever completed.
        raise ValueError(f"period {period} must exceed the call's {len(model.call_script)} tokens")
    model.call_period = period
    model.banned = [*call.all, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return model


def reencode_generate(model, tokenizer, prompt: str, lookup, config: DecodingConfig) -> list[int]:
    """The published loop: ``generate`` to ``<|db_return|>``, look up, append, re-encode everything, repeat."""
    call = call_token_ids(tokenizer)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    start, written = len(ids), 0
    while written < config.max_new_tokens:
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=config.max_new_tokens - written,
            do_sample=False,
            repetition_penalty=config.repetition_penalty,
            eos_token_id=[tokenizer.eos_token_id, call.ret],
            pad_token_id=tokenizer.pad_token_id,
        )[0].tolist()
        written += len(out) - len(ids)
        ids = out
        if ids[-1] != call.ret:
            break
        pending = parse(tokenizer.decode(ids[start:], skip_special_tokens=False)).pending
        value = resolve(lookup, pending.entity, pending.relation).value
        ids += tokenizer.encode(" " + value, add_special_tokens=False) + [call.end]
    return ids[start:]


@dataclass
class DecodeSpeedConfig:
    preset: str = field(default="demo", metadata={"help": "model preset (lmlm_agent.model.PRESETS)"})
    max_positions: int = field(default=0, metadata={"help": "context window override (0: the preset's)"})
    vocab_size: int = field(default=4096, metadata={"help": "tokenizer vocabulary"})
    context_tokens: int = field(default=320, metadata={"help": "prompt of the single-prompt runs (a document as context)"})
    batch_prompt_tokens: int = field(default=64, metadata={"help": "longest prompt of the batch runs (questions); the others are shorter"})
    max_new_tokens: int = field(default=128, metadata={"help": "tokens written per answer"})
    period: int = field(default=24, metadata={"help": "a call every this many positions"})
    batch: int = field(default=8, metadata={"help": "prompts in the batched run"})
    repeats: int = field(default=3, metadata={"help": "runs per figure; the fastest is kept"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: one per core; 1 is steadier when other jobs share the machine)"})


def _best_times(cases: dict, model, repeats: int) -> tuple[dict[str, float], dict]:
    """Fastest of ``repeats`` runs per case, the cases taken in turn each round, so a change in the
    machine's load hits them all alike. A case is ``(call schedule on?, function)``."""
    best, results = {name: float("inf") for name in cases}, {}
    period = model.call_period
    for _ in range(repeats):
        for name, (calls, fn) in cases.items():
            model.call_period = period if calls else 0
            start = time.perf_counter()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    model.call_period = period
    return best, results


def _world_text(n_entities: int = 60):
    from benchmarks.world import generate_world

    world = generate_world(n_entities, seed=0)
    return world, [d.plain for d in world.corpus()]


def run(setup: DecodeSpeedConfig, out_dir: str | Path) -> dict:
    """Run every measurement, write ``decode_speed.json`` and ``decode_speed.md`` into ``out_dir``."""
    from tools import open_store

    # HF generate still passes the cache as past_key_values, which transformers 5 warns about on every step.
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    threads = setup.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    world, texts = _world_text()
    tokenizer = train_tokenizer(texts, vocab_size=setup.vocab_size)
    store = open_store(out_dir / "decode_speed.sqlite", index=False)
    if store.count() == 0:
        store.write_many(world.triples, source="decode_speed")
    entity, relation, _ = world.triples[0]
    window = {"max_position_embeddings": setup.max_positions} if setup.max_positions else {}
    model = scheduled_model(setup.preset, tokenizer, entity, relation, setup.period, **window)

    stream = tokenizer.encode(" ".join(texts), add_special_tokens=False)
    context = tokenizer.decode(stream[: setup.context_tokens])
    context_ids = tokenizer.encode(context, add_special_tokens=False)  # what every decoder will see
    # Batch prompts of different lengths put each row's calls on different steps.
    prompts = [tokenizer.decode(stream[i * 97 : i * 97 + setup.batch_prompt_tokens - 5 * i]) for i in range(setup.batch)]
    cfg = DecodingConfig(max_new_tokens=setup.max_new_tokens)
    n = setup.max_new_tokens

    def hf_generate(batch: list[list[int]]) -> torch.Tensor:
        pad, width = tokenizer.pad_token_id, max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])  # left-padded
        return model.generate(
            ids, attention_mask=(ids != pad).long(), max_new_tokens=n, do_sample=False,
            repetition_penalty=cfg.repetition_penalty, pad_token_id=pad,
        )[:, width:]

    def ours(batch: list[str]):
        return interleaved_generate(model, tokenizer, batch, store, cfg)

    batch_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    cases = {
        "hf_generate": (False, lambda: hf_generate([context_ids])),
        "ours_no_lookups": (False, lambda: ours([context])),
        "ours": (True, lambda: ours([context])),
        "reencode": (True, lambda: reencode_generate(model, tokenizer, context, store, cfg)),
        # HF's own batching of the same prompts: what batch 8 can gain with this model on this machine.
        "hf_batch1": (False, lambda: [hf_generate([p]) for p in batch_ids]),
        "hf_batch8": (False, lambda: hf_generate(batch_ids)),
        "batch8_no_lookups": (False, lambda: ours(prompts)),
        "batch1": (True, lambda: [ours([p])[0] for p in prompts]),
        "batch8": (True, lambda: ours(prompts)),
    }
    t, out = _best_times(cases, model, setup.repeats)
    assert out["ours_no_lookups"][0].token_ids == out["hf_generate"][0].tolist(), "without lookups: must equal HF generate"
    assert out["ours"][0].token_ids == out["reencode"], "KV-cache decoding must equal re-encoding"
    assert [o.token_ids for o in out["batch8"]] == [o.token_ids for o in out["batch1"]], "batch must equal one at a time"
    with_calls, batched = out["ours"], out["batch8"]

    lookups = len(with_calls[0].lookups)
    steps = [[r.position for r in o.lookups] for o in batched]
    result = {
        "setup": asdict(setup),
        "model": {"preset": setup.preset, "parameters": count_parameters(model), **PRESETS[setup.preset], **window},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": threads},
        "tokens_written": n,
        "lookups_per_answer": lookups,
        "lookup_positions_in_batch": steps,
        "seconds": t,
        "tokens_per_s": {name: n * (len(prompts) if "batch" in name else 1) / sec for name, sec in t.items()},
        "ratios": {
            "ours_no_lookups_vs_hf": t["hf_generate"] / t["ours_no_lookups"],
            "ours_with_lookups_vs_hf": t["hf_generate"] / t["ours"],
            "ours_vs_reencode": t["reencode"] / t["ours"],
            "batch8_vs_batch1": t["batch1"] / t["batch8"],
            "hf_batch8_vs_batch1_no_lookups": t["hf_batch1"] / t["hf_batch8"],
            "batch8_no_lookups_vs_hf_batch8": t["hf_batch8"] / t["batch8_no_lookups"],
        },
        "targets": {"ours_with_lookups_vs_hf": 0.9, "ours_vs_reencode": 3.0, "batch8_vs_batch1": 4.0},
    }
    (out_dir / "decode_speed.json").write_text(json.dumps(result, indent=2))
    (out_dir / "decode_speed.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    s, t, x = r["setup"], r["tokens_per_s"], r["ratios"]
    rows = [  # (label, tokens_per_s key, ratio key)
        ("HF `generate`, no lookups", "hf_generate", None),
        ("interleaved, no lookups", "ours_no_lookups", "ours_no_lookups_vs_hf"),
        (f"interleaved, {r['lookups_per_answer']} lookups", "ours", "ours_with_lookups_vs_hf"),
        (f"re-encode after each lookup (published), {r['lookups_per_answer']} lookups", "reencode", None),
        (f"HF `generate`, no lookups, batch 1 x {s['batch']} prompts", "hf_batch1", None),
        (f"HF `generate`, no lookups, batch {s['batch']}", "hf_batch8", "hf_batch8_vs_batch1_no_lookups"),
        (f"interleaved, no lookups, batch {s['batch']}", "batch8_no_lookups", "batch8_no_lookups_vs_hf_batch8"),
        (f"interleaved, batch 1 x {s['batch']} prompts", "batch1", None),
        (f"interleaved, batch {s['batch']}", "batch8", "batch8_vs_batch1"),
    ]
    lines = [
        "# Decoding speed",
        "",
        f"Model `{r['model']['preset']}` ({r['model']['parameters']:,} parameters, random weights with a call "
        f"schedule: one call every {s['period']} positions), single prompt {s['context_tokens']} tokens, "
        f"batch prompts {s['batch_prompt_tokens'] - 5 * (s['batch'] - 1)}-{s['batch_prompt_tokens']} tokens, "
        f"{r['tokens_written']} tokens written per answer, greedy, repetition penalty 1.2, "
        f"{r['machine']['torch_threads']} torch thread(s) on {r['machine']['cores']} shared CPU cores; best of {s['repeats']}.",
        "",
        "| decoder | written tokens/s | ratio |",
        "|---|---:|---:|",
    ]
    for label, key, ratio in rows:
        shown = f"{x[ratio]:.2f}x" if ratio else ""
        lines.append(f"| {label} | {t[key]:.1f} | {shown} |")
    lines += [
        "",
        f"- interleaved vs HF `generate` (with lookups vs none): **{x['ours_with_lookups_vs_hf']:.2f}x** (target >= 0.9)",
        f"- interleaved vs re-encode, {r['lookups_per_answer']} lookups: **{x['ours_vs_reencode']:.2f}x faster** (target >= 3)",
        f"- batch {s['batch']} vs batch 1 throughput: **{x['batch8_vs_batch1']:.2f}x** (target >= 4); "
        f"HF `generate` batching the same prompts without lookups: {x['hf_batch8_vs_batch1_no_lookups']:.2f}x; "
        f"interleaved batch {s['batch']} without lookups vs HF `generate` batch {s['batch']}: "
        f"{x['batch8_no_lookups_vs_hf_batch8']:.2f}x",
        "",
        "Tokens were checked equal: interleaved = HF `generate` without lookups, interleaved = re-encode with lookups, "
        "batch = one at a time.",
        "",
    ]
    return "\n".join(lines)
