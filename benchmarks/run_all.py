"""Run the factual-precision and forgetting benchmarks on a run directory.

A run directory (what ``lmlm demo`` writes) holds::

    RUN/lmlm/        the LMLM checkpoint (save_checkpoint)
    RUN/baseline/    the same-size baseline, trained on the same text without calls
    RUN/kb.sqlite    the LMLM's knowledge store (the world's triples)
    RUN/world/       the generated world (World.save): QA splits, gold triples, held-out people
    RUN/retain/lmlm/, RUN/retain/baseline/   optional: the same recipe trained on the corpus
                     without forget10's people; then TOFU's forget quality uses them (the LMLM's
                     with the store less forget10's rows) as reference, the held-out-people
                     proxy becoming a second column
    RUN/abstention_reference.json   optional: the abstention benchmark of an LMLM trained
                     without abstentions (what the training 2-point claim compares with)

Three subjects are measured: ``lmlm`` (its store), ``lmlm-db-off`` (every lookup
``unknown``) and ``baseline``. Results land in ``RUN/bench/`` as JSON, Markdown and PNG;
``bench_all`` adds ``claims.{json,md}``: each headline claim with its interval and test
(``benchmarks.claims``).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from benchmarks import claims, report
from benchmarks.abstention import AbstentionConfig, evaluate_abstention
from benchmarks.cloze import ClozeConfig, cloze_items, evaluate_cloze
from benchmarks.factscore import FactScoreConfig, evaluate_factscore
from benchmarks.forgetting import FORGET_SPLITS, GRADIENT_METHODS, UnlearnConfig, copy_store, run_forgetting
from benchmarks.subject import Subject
from benchmarks.tofu import TofuConfig, evaluate_tofu, load_tofu
from benchmarks.world import World


@dataclass
class BenchConfig:
    tofu_questions: int = field(default=100, metadata={"help": "TOFU questions per split (generation dominates on CPU)."})
    rouge_tokens: int = field(default=200, metadata={"help": "Greedy tokens for TOFU's ROUGE-L answers (0: skip ROUGE)."})
    forget_splits: str = field(default=",".join(FORGET_SPLITS), metadata={"help": "Forget splits to run, comma-separated."})
    methods: str = field(default=",".join(GRADIENT_METHODS), metadata={"help": "Gradient unlearning methods for the baseline, comma-separated."})
    unlearn_steps: int = field(default=20, metadata={"help": "Optimizer steps per gradient method and split."})
    unlearn_lr: float = field(default=5e-5, metadata={"help": "Gradient unlearning learning rate."})
    unlearn_batch: int = field(default=8, metadata={"help": "QA pairs per unlearning step."})
    factscore_people: int = field(default=50, metadata={"help": "People whose bios are asked for."})
    factscore_tokens: int = field(default=256, metadata={"help": "Greedy tokens per bio."})
    gamma: int = field(default=0, metadata={"help": "FactScore length-penalty scale: 0 = the world's median facts per person; 10 = published."})
    abstention_questions: int = field(default=200, metadata={"help": "Forget10 questions asked before and after deleting their people (0: skip)."})
    abstain_on_unknown: bool = field(default=True, metadata={"help": "The LMLM decodes with DecodingConfig.abstain_on_unknown: after a lookup answers `unknown` its text says `unknown` (never for the DB-off ablation); the abstention benchmark then also runs without it, the 2-point check's reference."})
    cloze_items: int = field(default=200, metadata={"help": "Cloze facts."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Decoding repetition penalty for bios and cloze (published: 1.2, which also penalises copying a just-injected value; TOFU's ROUGE always uses 1.0)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts or answers per forward pass."})
    semantic_index: bool = field(default=False, metadata={"help": "Open the store with its semantic index (slower; exact keys suffice for the world)."})
    relation_match: str = field(default="semantic", metadata={"help": "Without the index, match relation names by meaning (semantic: MiniLM) or exactly (exact)."})
    threads: int = field(default=1, metadata={"help": "torch threads (1 is fastest on a small shared CPU)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed for items and unlearning batches."})
    tofu_data: str = field(default="", metadata={"help": "A directory of real TOFU *_perturbed.json files: `bench tofu` then scores the models on them (no forgetting)."})


@dataclass
class Run:
    directory: Path
    world: World
    lmlm: Subject
    lmlm_db_off: Subject
    baseline: Subject
    retain_models: tuple[Subject, Subject] | None = None  # trained without forget10 (TOFU's reference)
    out_name: str = "bench"  # RUN/<out_name>/ receives the results

    @property
    def subjects(self) -> list[Subject]:
        return [self.lmlm, self.lmlm_db_off, self.baseline]

    @property
    def out(self) -> Path:
        return self.directory / self.out_name


def _names(csv: str) -> list[str]:
    return [n.strip() for n in csv.split(",") if n.strip()]


def load_bench_run(directory: str | Path, config: BenchConfig) -> Run:
    import torch

    from lmlm_agent.model import load_checkpoint
    from tools import open_store

    torch.set_num_threads(config.threads)
    directory = Path(directory)
    missing = [p for p in ("lmlm", "baseline", "kb.sqlite", "world") if not (directory / p).exists()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)} (see benchmarks/run_all.py for the layout)")
    lmlm, baseline = load_checkpoint(directory / "lmlm"), load_checkpoint(directory / "baseline")
    store = open_store(directory / "kb.sqlite", create=False,
                       **({} if config.semantic_index else {"index": False, "relation_match": config.relation_match}))
    common = dict(batch_size=config.batch_size, decoding={"repetition_penalty": config.repetition_penalty})
    lmlm_decoding = {**common["decoding"], "abstain_on_unknown": config.abstain_on_unknown}
    world = World.load(directory / "world")
    retain = None
    if all((directory / "retain" / name / "config.json").exists() for name in ("lmlm", "baseline")):
        r_lmlm, r_base = load_checkpoint(directory / "retain" / "lmlm"), load_checkpoint(directory / "retain" / "baseline")
        retain_store = copy_store(store, without=world.splits["forget10"])
        retain = (Subject("lmlm-retain", r_lmlm.model, r_lmlm.tokenizer, store=retain_store,
                          batch_size=config.batch_size, decoding=lmlm_decoding),
                  Subject("baseline-retain", r_base.model, r_base.tokenizer, **common))
    return Run(
        directory,
        world,
        Subject("lmlm", lmlm.model, lmlm.tokenizer, store=store, batch_size=config.batch_size, decoding=lmlm_decoding),
        Subject("lmlm-db-off", lmlm.model, lmlm.tokenizer, db_off=True, **common),
        Subject("baseline", baseline.model, baseline.tokenizer, **common),
        retain,
    )


def bench_factscore(run: Run, config: BenchConfig) -> list[dict]:
    from tqdm.auto import tqdm

    people = [e.name for e in run.world.entities if e.kind == "person"]
    people = random.Random(config.seed).sample(people, min(config.factscore_people, len(people)))
    fs_config = FactScoreConfig(max_entities=config.factscore_people, max_new_tokens=config.factscore_tokens,
                                gamma=config.gamma or None, seed=config.seed)
    results = [evaluate_factscore(s, run.world, people, fs_config).to_dict()
               for s in tqdm(run.subjects, desc="factscore", unit="model")]
    report.write_outputs(run.out, "factscore", {"config": asdict(config), "results": results},
                         report.factscore_markdown(results), report.factscore_figure(results))
    return results


def bench_cloze(run: Run, config: BenchConfig) -> list[dict]:
    from tqdm.auto import tqdm

    items = cloze_items(run.world, config.cloze_items, config.seed)
    results = [evaluate_cloze(s, items, ClozeConfig()).to_dict()
               for s in tqdm(run.subjects, desc="cloze", unit="model")]
    report.write_outputs(run.out, "cloze", {"config": asdict(config), "results": results},
                         report.cloze_markdown(results), report.cloze_figure(results))
    return results


def bench_tofu(run: Run, config: BenchConfig) -> dict:
    tofu = TofuConfig(max_questions=config.tofu_questions, max_new_tokens=config.rouge_tokens,
                      rouge=config.rouge_tokens > 0)
    if config.tofu_data:
        return bench_tofu_files(run, config, tofu)
    unlearn = UnlearnConfig(steps=config.unlearn_steps, lr=config.unlearn_lr, batch_size=config.unlearn_batch,
                            seed=config.seed)
    result = run_forgetting(run.world, run.lmlm, run.baseline, tofu, unlearn, _names(config.forget_splits),
                            _names(config.methods), run.retain_models).to_dict()
    report.write_outputs(run.out, "tofu", {"config": asdict(config), **result},
                         report.forgetting_markdown(result), report.forgetting_figure(result))
    return result


def bench_tofu_files(run: Run, config: BenchConfig, tofu: TofuConfig) -> dict:
    """TOFU's own evaluation sets, by path: probability, ROUGE-L, truth ratio and utility per model."""
    qa = load_tofu(config.tofu_data)
    forget = [s for s in qa if s.startswith("forget")]
    results = {s.name: evaluate_tofu(s, qa, tofu, forget).to_dict() for s in (run.lmlm, run.baseline)}
    rows = [(name, split, r["n"], r["probability"], r["rouge_l"], r["truth_ratio"], res["model_utility"])
            for name, res in results.items() for split, r in res["splits"].items()]
    markdown = "\n".join([f"# TOFU evaluation sets from {config.tofu_data}", "",
                          report.table(["model", "split", "n", "probability", "ROUGE-L", "truth ratio",
                                        "model utility"], rows), ""])
    report.write_outputs(run.out, "tofu", {"config": asdict(config), "results": results}, markdown)
    return results


def bench_abstention(run: Run, config: BenchConfig) -> tuple[dict, dict[str, dict]]:
    """The LMLM on forget10's questions before and after deleting those people's rows, and the references of
    the 2-point check: the same LMLM without ``abstain_on_unknown`` (when it decodes with it) and
    ``RUN/abstention_reference.json`` (an LMLM trained without abstentions, when the run has one)."""
    items, abstention = run.world.qa["forget10"], AbstentionConfig(questions=config.abstention_questions)
    result = evaluate_abstention(run.lmlm, items, abstention).to_dict()
    references = {}
    if run.lmlm.decoding.get("abstain_on_unknown"):
        plain = replace(run.lmlm, decoding={**run.lmlm.decoding, "abstain_on_unknown": False})
        references["decoding"] = evaluate_abstention(plain, items, abstention).to_dict()
    trained = run.directory / "abstention_reference.json"
    if trained.exists():
        references["training"] = json.loads(trained.read_text())
    report.write_outputs(run.out, "abstention", {"config": asdict(config), **result, "references": references},
                         report.abstention_markdown(result, references))
    return result, references


def abstention_reference(directory: str | Path, checkpoint: str | Path, config: BenchConfig) -> dict:
    """The abstention benchmark on another LMLM checkpoint (one trained without abstentions) with the run's
    store: written to ``RUN/abstention_reference.json``, the reference of the training 2-point claim."""
    from lmlm_agent.model import load_checkpoint

    run = load_bench_run(directory, config)
    other = load_checkpoint(checkpoint)
    subject = Subject("lmlm-no-abstention", other.model, other.tokenizer, store=run.lmlm.store,
                      batch_size=config.batch_size, decoding=run.lmlm.decoding)
    result = evaluate_abstention(subject, run.world.qa["forget10"],
                                 AbstentionConfig(questions=config.abstention_questions)).to_dict()
    (Path(directory) / "abstention_reference.json").write_text(json.dumps(result, indent=1))
    return result


def run_claims(factscore: list[dict], cloze: list[dict], forgetting: dict | None, abstention: dict | None,
               abstention_references: dict[str, dict]) -> list[claims.Claim]:
    return (claims.factscore_claims(factscore) + claims.cloze_claims(cloze) + claims.forgetting_claims(forgetting)
            + claims.abstention_claims(abstention, abstention_references))


def bench_all(run: Run, config: BenchConfig) -> Path:
    """Every benchmark, then ``report.md``: the claims table followed by each benchmark's report."""
    factscore, cloze, tofu = bench_factscore(run, config), bench_cloze(run, config), bench_tofu(run, config)
    forgetting = tofu if "rows" in tofu else None  # None: tofu_data scored TOFU's own sets instead
    abstention, references = bench_abstention(run, config) if config.abstention_questions else (None, {})
    checked = run_claims(factscore, cloze, forgetting, abstention, references)
    report.write_outputs(run.out, "claims", {"claims": [c.to_dict() for c in checked]}, claims.markdown(checked))
    names = ["claims", "factscore", "cloze", "tofu"] + (["abstention"] if abstention else [])
    (run.out / "report.md").write_text("\n".join((run.out / f"{name}.md").read_text() for name in names))
    (run.out / "summary.json").write_text(json.dumps({"factscore": factscore, "cloze": cloze,
                                                      "tofu": forgetting["rows"] if forgetting else tofu,
                                                      "abstention": abstention,
                                                      "claims": [c.to_dict() for c in checked]},
                                                     indent=2, default=str))
    return run.out / "report.md"


def bench_seeds(run: Run, config: BenchConfig, seeds: int) -> Path:
    """``bench_all`` with item-sampling and unlearning seeds seed, seed+1, ... into RUN/bench/seed-<k>/, then
    RUN/bench/claims_over_seeds.md: each claim's mean over the seeds with a t interval (the models are the
    run's: retraining with other seeds is ``lmlm demo --seeds``)."""
    per_seed = []
    for k in range(seeds):
        seeded = replace(config, seed=config.seed + k)
        bench_all(replace(run, out_name=f"bench/seed-{seeded.seed}"), seeded)
        rows = json.loads((run.out / f"seed-{seeded.seed}" / "claims.json").read_text())["claims"]
        per_seed.append([claims.Claim(**c) for c in rows])
    summary = claims.across(per_seed)
    title = f"Claims over {seeds} item samples (seeds {config.seed}..{config.seed + seeds - 1})"
    report.write_outputs(run.out, "claims_over_seeds", {"claims": [c.to_dict() for c in summary]},
                         claims.markdown(summary, title))
    return run.out / "claims_over_seeds.md"


def run_benchmark(name: str, directory: str | Path, config: BenchConfig, seeds: int = 1) -> Path:
    """``lmlm bench NAME --run DIR``: one benchmark (factscore, cloze, tofu) or all of them, over ``seeds``
    item samples when more than one; the Markdown report it wrote."""
    run = load_bench_run(directory, config)
    if seeds > 1:
        return bench_seeds(run, config, seeds)
    if name == "all":
        return bench_all(run, config)
    {"factscore": bench_factscore, "cloze": bench_cloze, "tofu": bench_tofu}[name](run, config)
    return run.out / f"{name}.md"
