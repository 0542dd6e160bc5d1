"""The end-to-end demo: every package of the project, in order, on a generated world.

    world -> offline teacher (OpenAI API on loopback) -> distilled annotator
          -> annotated corpus + knowledge base -> LMLM + baseline pretraining
          -> references: retain models without forget10 (TOFU's reference); an LMLM without abstentions when
             the LMLM's training data has some (``abstention_share`` > 0)
          -> perplexity, factual precision, DB-off, forgetting (deletion vs gradient unlearning), abstention
          -> more seeds (optional) -> memory writes (ingest / delete) -> report.md with PNG plots

Each stage is one method calling its package's public API; what a stage
measures is written into the run directory as it goes (the layout that
`lmlm serve`, `lmlm chat` and `lmlm bench` read; see docs/ARCHITECTURE.md):

    RUN/world/  RUN/teacher/  RUN/annotator/  RUN/corpus/annotated.jsonl  RUN/kb.sqlite
    RUN/lmlm/  RUN/baseline/  RUN/retain/{lmlm,baseline}/  RUN/no_abstention/lmlm/
    RUN/abstention_reference.json  RUN/perplexity.{json,md,png}  RUN/bench/  RUN/memory.json
    RUN/seed-<k>/ (models and bench/ of each further seed)  RUN/claims.{json,md} (over the seeds)
    RUN/report.md  RUN/summary.png  RUN/demo.json (settings and stage timings)

An interrupted run continues with ``run(resume=True)`` (``lmlm demo --resume``):
the costly stages it finished (annotator, corpus, models) are loaded, not redone.

It reaches every package (benchmarks may import all layers); ``lmlm demo`` parses its options and calls
``DemoRun(...).run()``. The report (``report.md``, the headline table, plots) is ``benchmarks.demo_report``.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchmarks.demo_report import cpu_seconds, machine, perplexity_plot, render_report, summary_plot

SEED = 0
RETAIN_MODELS = ("retain/lmlm", "retain/baseline")
NO_ABSTENTION_MODEL = "no_abstention/lmlm"


def _help(text: str, **default: Any) -> Any:
    """A field with its help text in ``metadata["help"]`` (as the project's other config dataclasses)."""
    return field(metadata={"help": text}, **default)


@dataclass(frozen=True)
class DemoSize:
    """How big each stage is; ``small`` is the default and fits 15 minutes on 2 idle CPU cores."""

    entities: int = _help("People, places, organisations and works of the generated world.")
    teacher_docs: int = _help("Documents the teacher annotates (3/4 biographies, 1/4 QA drills): the annotator's training set.")
    annotator_eval_docs: int = _help("Held-out biographies the annotator is scored on.")
    annotator_layers: int = _help("MiniLM layers kept in the annotator; all but the last are frozen (cheap steps).")
    annotator_steps: int = _help("Optimizer steps of the annotator's distillation.")
    preset: str = _help("training/configs/<preset>.yaml: model size and optimiser of the LMLM and the baseline.")
    pretrain_steps: int = _help("Optimizer steps of each pretrained model (LMLM, baseline, the references).")
    context_length: int = _help("Tokens per training row.")
    batch_size: int = _help("Rows per optimizer step.")
    eval_docs: int = _help("Held-out documents for perplexity (never trained on).")
    bench: dict[str, Any] = _help("benchmarks.run_all.BenchConfig fields: the benchmarks' sizes.", default_factory=dict)
    annotator_batch: int = _help("Windows per annotator step.", default=8)
    annotator_calibration_docs: int = _help(
        "Of the teacher's documents, held out to choose the annotator's value bias.", default=20)
    annotator_max_length: int = _help("Tokens per annotator window: a generated biography fits in one.", default=128)
    vocab_size: int = _help("Of the BPE both models share; the output layer is a large share of a small model's cost.",
                            default=4096)
    abstention_share: float = _help(
        "Of the LMLM's training calls answered `unknown` (training.data.with_abstentions); above 0 the references "
        "stage also trains an LMLM without them (the training 2-point check). The benchmarks' LMLM abstains after a "
        "miss at decoding either way (BenchConfig.abstain_on_unknown).", default=0.05)
    references: bool = _help("Train the claims' references: the retain models (and the LMLM without abstentions).",
                             default=True)

SIZES: dict[str, DemoSize] = {
    # A minute on a laptop: checks the plumbing, not the science (the models barely train).
    "tiny": DemoSize(
        entities=10, teacher_docs=8, annotator_eval_docs=3, annotator_layers=1, annotator_steps=2, annotator_calibration_docs=2,
        preset="micro", pretrain_steps=2, context_length=64, batch_size=4, vocab_size=512, eval_docs=3,
        bench=dict(tofu_questions=3, rouge_tokens=0, forget_splits="forget10", methods="grad_ascent",
                   unlearn_steps=1, factscore_people=2, factscore_tokens=16, cloze_items=3, batch_size=8,
                   abstention_questions=3, relation_match="exact"),
    ),
    # Abstention at decoding, not in the data (abstention_share 0): the LMLM is its own reference for the 2-point
    # check, and the references stage trains only the retain pair (the LMLM without abstentions cost 2.5 min).
    # 400 entities, not 250 (+1.6 min): at 250 the 0.9M baseline memorised half the world on one seed in three
    # (precision 0.459 against the LMLM's 0.934: no model is twice as precise as that); at 400 it keeps 8-11 %
    # (precision ratio 8.5 / 13.3 / 14.9 over 3 seeds), and forget10 holds 99 questions, not 61.
    # FactScore asks for every person's bio (200 at 400 entities): at 60 the precision ratio's interval was
    # as wide as its margin over 2x. 500 annotator steps, not 250 (+53 s): at 250 the annotator labelled 63 of the
    # corpus's 186 spouse statements with another relation (held-out triple F1 0.857; 0.929 at 500), and the LMLM
    # learned to look up a birth place after "married to": most of its unsupported FactScore facts.
    "small": DemoSize(
        entities=400, teacher_docs=120, annotator_eval_docs=20, annotator_layers=3, annotator_steps=500, annotator_calibration_docs=10,
        preset="small", pretrain_steps=600, context_length=128, batch_size=16, vocab_size=1024, eval_docs=30,
        abstention_share=0.0,
        bench=dict(tofu_questions=200, rouge_tokens=0, forget_splits="forget10", methods="grad_ascent,npo",
                   unlearn_steps=10, factscore_people=200, factscore_tokens=128, cloze_items=300, batch_size=16,
                   abstention_questions=200),
    ),
    "medium": DemoSize(  # 850 entities: forget10 holds 34 authors and 205 questions
        entities=850, teacher_docs=400, annotator_eval_docs=100, annotator_layers=3, annotator_steps=400, annotator_batch=16,
        preset="demo", pretrain_steps=1500, context_length=256, batch_size=16, eval_docs=150,
        bench=dict(tofu_questions=400, rouge_tokens=64, forget_splits="forget05,forget10", methods="grad_ascent,npo",
                   unlearn_steps=20, factscore_people=100, factscore_tokens=128, cloze_items=500),
    ),
    "large": DemoSize(
        entities=3000, teacher_docs=1500, annotator_eval_docs=300, annotator_layers=6, annotator_steps=1500,
        annotator_batch=16, annotator_max_length=256,
        preset="lmlm-176m", pretrain_steps=5000, context_length=512, batch_size=32, eval_docs=500,
        bench=dict(tofu_questions=400, rouge_tokens=200, factscore_people=100, factscore_tokens=256, cloze_items=500),
    ),
}


class SettingsMismatch(ValueError):
    """A run directory resumed with settings other than those it was made with."""


@dataclass
class StageTiming:
    name: str
    seconds: float  # wall
    note: str = ""
    cpu_seconds: float = 0.0  # of this process and its children: on a shared machine, the measure of the work


def forgotten(result: Any, name: str, relation: str, deleted: str) -> bool:
    """Whether a lookup of ``name``'s deleted ``relation`` answers as it should after the delete: ``unknown``, or
    ``name``'s own row of that very relation without the deleted value. A value of another relation (a similar
    relation of the same person, matched by meaning) or of another person, given in its place, is not."""
    from tools.schema import normalise_text

    if not result.found:
        return True
    same = lambda a, b: normalise_text(a) == normalise_text(b)  # noqa: E731
    return same(result.entity, name) and same(result.relation, relation) and deleted not in (r.value for r in result.records)


def _forgotten_probes(kb: Path, name: str, relation: str, deleted: str, rng: random.Random) -> list[dict[str, Any]]:
    """Lookups of a deleted fact as a user might misspell or rephrase them, with the entity policy at full strength
    (typo'd names, relations by meaning). ``right``: :func:`forgotten`; ``answered_relation`` names the relation that
    answered, so a substitution (another relation of the same person) shows in the report."""
    from benchmarks.kb_lookup import WORLD_PARAPHRASES, one_edit
    from tools import open_store

    typo, paraphrase = one_edit(name, rng), WORLD_PARAPHRASES.get(relation, relation)
    queries = {"exact": (name, relation), "typo'd entity": (typo, relation), "paraphrased relation": (name, paraphrase),
               "typo'd and paraphrased": (typo, paraphrase)}
    reader = open_store(kb, index=False, relation_match="semantic", create=False)
    try:
        results = {kind: reader.read(e, r) for kind, (e, r) in queries.items()}
    finally:
        reader.close()

    return [{"query": kind, "entity": queries[kind][0], "relation": queries[kind][1], "found": res.found,
             "value": res.value, "match": res.match, "answered_relation": res.relation if res.found else None,
             "right": forgotten(res, name, relation, deleted)} for kind, res in results.items()]


@dataclass
class DemoRun:
    """One demo run: ``run()`` executes the stages in order, each recorded in ``timings`` and ``demo.json``."""

    directory: Path
    size_name: str = "small"
    device: str | None = None  # None: training and evaluation use a GPU when one is visible
    threads: int = 2
    announce: Callable[[str], None] = print
    seed: int = SEED  # training and item-sampling seed of this run (the world is always SEED's)
    seed_count: int = 1  # runs with seeds seed, seed+1, ...: the claims are reported over all of them
    timings: list[StageTiming] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.size = SIZES[self.size_name]

    # ------------------------------------------------------------------ driver
    STAGES = ("world", "teacher", "annotator", "corpus", "pretrain", "references", "perplexity", "benchmarks", "seeds",
              "memory", "report")
    SEED_STAGES = ("pretrain", "references", "benchmarks")  # what each further seed repeats

    def run(self, resume: bool = False) -> Path:
        """Every stage in order. ``resume``: keep the costly stages an interrupted run of this directory finished."""
        import torch

        torch.set_num_threads(self.threads)
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self._finished_stages() if resume else {}
        for n, name in enumerate(self.STAGES, 1):
            self.announce(f"[{n}/{len(self.STAGES)}] {name}: {getattr(self, name).__doc__.strip().splitlines()[0]}")
            if name in previous and self._restore(name):
                self.timings.append(previous[name])
                self.announce(f"      kept from the interrupted run ({previous[name].seconds:.1f} s then)")
                continue
            t0, cpu0 = time.perf_counter(), cpu_seconds()
            note = getattr(self, name)() or ""
            self.timings.append(StageTiming(name, time.perf_counter() - t0, note, cpu_seconds() - cpu0))
            self.announce(f"      done in {self.timings[-1].seconds:.1f} s{'  (' + note + ')' if note else ''}")
            self._save_state()
        return self.directory / "report.md"

    def _finished_stages(self) -> dict[str, StageTiming]:
        state = self.directory / "demo.json"
        if not state.exists():
            return {}
        saved = json.loads(state.read_text())
        if saved.get("settings") != asdict(self.size):
            raise SettingsMismatch(f"{self.directory} was made with other settings (size {saved.get('size')}); use a new --run-dir")
        return {t["name"]: StageTiming(**t) for t in saved["stages"]}

    def _restore(self, name: str) -> bool:
        """Load a finished costly stage's outputs instead of recomputing them; False: run the stage again."""
        d = self.directory
        if name == "annotator" and (d / "annotator" / "annotation_eval.json").exists():
            from training.annotators import load_annotator

            self._annotator = load_annotator(d / "annotator", threads=self.threads)
            self.results["annotator"] = json.loads((d / "annotator" / "annotation_eval.json").read_text())
            return True
        if name == "corpus" and (d / "corpus" / "annotated.jsonl").exists() and (d / "kb.sqlite").exists():
            return True
        if name == "pretrain" and all((d / k / "lmlm.json").exists() for k in ("lmlm", "baseline")):
            self.results["pretrain"] = _training_summary(d)
            return True
        if name == "references" and all((d / k / "lmlm.json").exists() for k in RETAIN_MODELS):
            return not self.size.abstention_share or (d / "abstention_reference.json").exists()
        return False  # cheap stages (or unfinished ones) run again

    def _save_state(self) -> None:
        state = {
            "size": self.size_name,
            "settings": asdict(self.size),
            "device": self.device or "auto",
            "threads": self.threads,
            "seed": self.seed,
            "seeds": self.seed_count,
            "machine": machine(),
            "wall_seconds": round(sum(t.seconds for t in self.timings), 1),
            "cpu_seconds": round(cpu_seconds(), 1),
            "stages": [asdict(t) for t in self.timings],
        }
        (self.directory / "demo.json").write_text(json.dumps(state, indent=1))

    # ------------------------------------------------------------------ stages
    def world(self) -> str:
        """generate the fictional world (entities, gold triples, biographies, QA splits)."""
        from benchmarks.world import generate_world

        self._world = generate_world(self.size.entities, seed=SEED)
        self._world.save(self.directory / "world")
        bios = [d for d in self._world.documents if "#" in d.id]  # biographies are "<name>#<k>", QA drills "<name>?<rel>"
        drills = [d for d in self._world.documents if "?" in d.id]
        rng = random.Random(SEED)
        rng.shuffle(bios)
        rng.shuffle(drills)
        # The seed set holds both kinds of document the corpus has: an annotator that never saw a
        # drill takes its leading "Question:" for a document title and makes it the entity.
        n_drills = self.size.teacher_docs // 4
        n_bios = self.size.teacher_docs - n_drills
        self._teacher_docs = bios[:n_bios] + drills[:n_drills]
        self._annotator_eval = bios[n_bios : n_bios + self.size.annotator_eval_docs]
        held = bios[n_bios + self.size.annotator_eval_docs :]  # seen by neither teacher nor annotator
        self._eval_ids = {d.id for d in held[: self.size.eval_docs]}
        return f"{len(self._world.entities)} entities, {len(self._world.triples)} facts, {len(self._world.corpus())} documents"

    def teacher(self) -> str:
        """annotate a seed set through the offline teacher, served as an OpenAI API on 127.0.0.1."""
        from training.corpus import write_jsonl
        from training.teacher import KEPT, TeacherClient, TeacherConfig
        from training.teacher_server import create_app, load_records, running_server

        out = self.directory / "teacher"
        records = load_records([self.directory / "world" / "teacher_records.json"])
        with running_server(create_app(records)) as url:
            client = TeacherClient(TeacherConfig(base_url=url, cache_dir=out / "cache", concurrency=2))
            results, summary = client.run([d.plain for d in self._teacher_docs])
        kept = [(d, r) for d, r in zip(self._teacher_docs, results) if r.status in KEPT]
        write_jsonl(out / "annotations.jsonl", ({"id": d.id, "text": r.annotated, "plain": d.plain} for d, r in kept))
        (out / "summary.json").write_text(json.dumps({"base_url": url, **summary.to_json()}, indent=1, default=str))
        self._teacher_pairs = [(d.plain, r.annotated) for d, r in kept]
        self.results["teacher"] = {"documents": summary.documents, "kept": summary.kept, "calls": summary.calls}
        return f"{summary.kept}/{summary.documents} documents kept, {summary.calls} calls"

    def annotator(self) -> str:
        """distil the teacher into a small MiniLM annotator, scored on held-out biographies."""
        from benchmarks.world import special_to_legacy
        from training.annotator import AnnotatorConfig, train_annotator
        from training.annotator_run import evaluate_annotator

        config = AnnotatorConfig(
            encoder_layers=self.size.annotator_layers, frozen_layers=self.size.annotator_layers - 1,
            max_steps=self.size.annotator_steps, epochs=100.0, batch_size=self.size.annotator_batch,
            max_length=self.size.annotator_max_length, calibration_documents=self.size.annotator_calibration_docs,
            threads=self.threads, seed=SEED,
        )
        self._annotator, _ = train_annotator(self._teacher_pairs, config)
        out = self.directory / "annotator"
        self._annotator.save(out)
        reference = out / "heldout_reference.json"
        reference.write_text(json.dumps({"metadata": {"source": "demo held-out biographies"}, "examples": [
            {"text": d.plain, "annotated_text": special_to_legacy(d.annotated)} for d in self._annotator_eval]}))
        report = evaluate_annotator(self._annotator, reference, out)
        report.write(out)
        scores = report.to_json()
        self.results["annotator"] = scores
        f1 = _triple_f1(scores)
        return f"held-out triple F1 {f1:.3f}" if f1 is not None else "scored"

    def corpus(self) -> str:
        """annotate the whole corpus with the annotator; its calls' triples fill the knowledge base."""
        from tools import open_store
        from training.annotator_run import CorpusConfig, annotate_corpus

        kb = self.directory / "kb.sqlite"
        store = open_store(kb, index=False)  # exact keys match the world's names; `lmlm kb rebuild-index` adds the index
        summary = annotate_corpus(self._annotator, self.directory / "world" / "corpus.jsonl",
                                  self.directory / "corpus" / "annotated.jsonl", store,
                                  CorpusConfig(text_field="plain", batch_size=32))
        self.results["corpus"] = summary
        return f"{summary.get('documents', 0)} documents, {summary.get('calls', 0)} calls, {store.count()} facts in kb.sqlite"

    def _pretrain_config(self, **fields: Any):
        from dataclasses import replace

        from training.config import PretrainConfig, load_config

        config = load_config(PretrainConfig, self.size.preset, [
            f"max_steps={self.size.pretrain_steps}", f"context_length={self.size.context_length}",
            f"per_device_batch_size={self.size.batch_size}", "logging_steps=25", f"seed={self.seed}",
            f"warmup_steps={max(1, self.size.pretrain_steps // 10)}", f"vocab_size={self.size.vocab_size}", "progress=true",
            f"abstention_share={self.size.abstention_share}",
        ])
        return replace(config, **fields)

    def _training_documents(self, without: set[str] = frozenset()) -> list:
        """The annotated corpus less the held-out evaluation documents (and ``without``'s entities' documents)."""
        from training.corpus import read_documents

        dropped = {d.id for d in self._world.documents if d.entity in without}
        return [d for d in read_documents(self.directory / "corpus" / "annotated.jsonl")
                if d.id not in self._eval_ids and d.id not in dropped]

    def pretrain(self) -> str:
        """pretrain the LMLM (values masked from the loss, a few calls answered unknown) and a same-size baseline."""
        from training.pretrain import train_pair

        train = self._training_documents()
        train_pair(self._pretrain_config(), train, self.directory)
        self.results["pretrain"] = _training_summary(self.directory)
        loss = {k: v["train_loss"] for k, v in self.results["pretrain"].items()}
        return f"{len(train)} documents; final loss LMLM {loss['lmlm']:.2f}, baseline {loss['baseline']:.2f}"

    def references(self) -> str:
        """the claims' references: retain models (same recipe without forget10's people), an LMLM without abstentions."""
        from benchmarks.run_all import BenchConfig, abstention_reference
        from training.pretrain import pretrain, train_pair

        if not self.size.references:
            return "skipped (this size trains no references: forget quality uses the never-seen proxy)"
        forget = set(self._world.splits["forget10"])
        retain_docs = self._training_documents(without=forget)
        train_pair(self._pretrain_config(), retain_docs, self.directory / "retain")
        note = f"retain pair on {len(retain_docs)} documents (without {len(forget)} people)"
        if not self.size.abstention_share:  # the LMLM's data has no abstentions: it is its own reference
            return note
        # The LMLM's own tokenizer, so that the two differ only in the abstentions of the data.
        plain = self._pretrain_config(abstention_share=0.0, tokenizer=str(self.directory / "lmlm"),
                                      output_dir=str(self.directory / NO_ABSTENTION_MODEL))
        pretrain(plain, self._training_documents())
        config = BenchConfig(**{**self.size.bench, "threads": self.threads, "seed": self.seed})
        reference = abstention_reference(self.directory, self.directory / NO_ABSTENTION_MODEL, config)
        return f"{note}; LMLM without abstentions: {reference['correct_before']['value']:.3f} correct before deletion"

    def perplexity(self) -> str:
        """perplexity of both models on held-out documents (static, dynamic with the KB, normalised)."""
        from tools import open_store
        from training.corpus import read_documents
        from training.perplexity import evaluate_checkpoint, markdown

        store = open_store(self.directory / "kb.sqlite", index=False)
        held_out = [d for d in read_documents(self.directory / "corpus" / "annotated.jsonl") if d.id in self._eval_ids]
        reports = [evaluate_checkpoint(self.directory / "lmlm", held_out, store),
                   evaluate_checkpoint(self.directory / "baseline", held_out)]
        rows = [r.to_dict() for r in reports]
        (self.directory / "perplexity.json").write_text(json.dumps(rows, indent=1))
        (self.directory / "perplexity.md").write_text(markdown(reports))
        perplexity_plot(rows, self.directory / "perplexity.png")
        self.results["perplexity"] = rows
        lm, base = rows
        return f"LMLM {lm['normalised_ppl']:.1f} (normalised) vs baseline {base['static_ppl']:.1f}"

    def benchmarks(self) -> str:
        """factual precision (FactScore, cloze), DB-off, and forgetting: row deletion vs gradient unlearning."""
        from benchmarks.run_all import BenchConfig, bench_all, load_bench_run

        config = BenchConfig(**{**self.size.bench, "threads": self.threads, "seed": self.seed})
        bench_all(load_bench_run(self.directory, config), config)
        self.results["bench"] = json.loads((self.directory / "bench" / "summary.json").read_text())
        held = [c for c in self.results["bench"]["claims"] if c["holds"]]
        return f"{len(held)} of {len(self.results['bench']['claims'])} claims hold at p < 0.05"

    def seeds(self) -> str:
        """further seeds (--seeds): pretraining, references and benchmarks again; claims over all seeds."""
        from benchmarks import claims

        per_seed = [[claims.Claim(**c) for c in self.results["bench"]["claims"]]]
        for k in range(1, self.seed_count):
            child = DemoRun(self.directory / f"seed-{self.seed + k}", self.size_name, self.device, self.threads,
                            self.announce, seed=self.seed + k)
            child.directory.mkdir(parents=True, exist_ok=True)
            for shared in ("world", "corpus", "kb.sqlite"):  # the world, corpus and store are the seed's data
                if not (child.directory / shared).exists():
                    (child.directory / shared).symlink_to((self.directory / shared).resolve())
            child._world, child._eval_ids = self._world, self._eval_ids
            for stage in self.SEED_STAGES:
                self.announce(f"      seed {child.seed}: {stage}")
                getattr(child, stage)()
            per_seed.append([claims.Claim(**c) for c in child.results["bench"]["claims"]])
        summary = claims.across(per_seed)
        self.results["claims"] = [c.to_dict() for c in summary]
        (self.directory / "claims.json").write_text(json.dumps({"seeds": [self.seed + k for k in range(self.seed_count)],
                                                                "claims": self.results["claims"]}, indent=1))
        (self.directory / "claims.md").write_text(claims.markdown(summary, f"Claims over {self.seed_count} seed(s)"))
        return f"{self.seed_count} seed(s): {sum(c.holds for c in summary)} of {len(summary)} claims hold on every seed"

    def memory(self) -> str:
        """memory writes: ingest a new fact about a known person, ask, delete it, ask again, restore."""
        from benchmarks.world import RELATION_BY_NAME
        from lmlm_agent.agent import LMLMAgent
        from tools.ingest import ingest_texts
        from tools import open_store

        # A person the model was trained on, and a value it never saw for them. (A person absent from
        # training would need the model to copy an unseen name into its call, which the small models
        # do not yet do: they write a similar known name instead.)
        retained = set(self._world.splits["retain"])
        person = next(e for e in self._world.entities if e.name in retained and e.kind == "person")
        relation = next(iter(person.facts))
        new_value = next(e.facts[relation] for e in self._world.entities
                         if e.kind == "person" and e.facts.get(relation) not in (None, person.facts[relation]))
        question = RELATION_BY_NAME[relation].question.format(e=person.name)
        text = RELATION_BY_NAME[relation].statements[0].format(e=person.name, v=new_value)
        store = open_store(self.directory / "kb.sqlite", index=False)
        original = store.read(person.name, relation)
        agent = LMLMAgent.from_pretrained(self.directory / "lmlm", store=store, device=self.device, max_new_tokens=48)

        def ask(stage: str) -> dict[str, Any]:
            answer = agent.ask(question)
            return {"stage": stage, "answer": answer.text, "citations": answer.citations,
                    "lookups": [(r.entity, r.relation, r.value, r.match) for r in answer.trace]}

        steps = [ask("before ingest")]
        ingested = ingest_texts(self._annotator, store, [("demo-ingest#0", text)])
        steps.append(ask("after ingest"))
        receipts = [store.delete(fact_id=i) for i in dict.fromkeys(f["fact_id"] for f in ingested.facts)]
        steps.append(ask("after delete"))
        probes = _forgotten_probes(self.directory / "kb.sqlite", person.name, relation, new_value, random.Random(self.seed))
        if original.found:  # leave the run's knowledge base as the corpus made it
            store.write(original.entity, original.relation, original.value, source=original.source)
        self.results["memory"] = {"person": person.name, "relation": relation, "gold": person.facts[relation],
                                  "new_value": new_value, "question": question, "ingested_text": text,
                                  "ingest": ingested.to_json(), "restored": original.found,
                                  "deleted_rows": sum(r.count for r in receipts), "steps": steps, "probes": probes}
        (self.directory / "memory.json").write_text(json.dumps(self.results["memory"], indent=1, default=str))
        right = sum(p["right"] for p in probes)
        return (f"{ingested.written} facts ingested, {self.results['memory']['deleted_rows']} deleted; after the delete "
                f"{right} of {len(probes)} lookups (exact, typo'd, paraphrased) return neither it nor another fact in its place")

    def report(self) -> str:
        """write report.md and summary.png."""
        summary_plot(self.results, self.directory / "summary.png")
        (self.directory / "report.md").write_text(render_report(self))
        return str(self.directory / "report.md")



def _training_summary(directory: Path) -> dict[str, dict[str, Any]]:
    """Parameters, steps, tokens, final loss and seconds of both checkpoints, from their lmlm.json."""
    keys = ("parameters", "steps", "tokens", "train_loss", "train_seconds")
    metas = {k: json.loads((directory / k / "lmlm.json").read_text()) for k in ("lmlm", "baseline")}
    return {k: {f: m.get(f) for f in keys} for k, m in metas.items()}


def _triple_f1(scores: dict[str, Any]) -> float | None:
    """F1 of whole (entity, relation, value) calls: the strictest agreement the annotator report gives."""
    return (scores.get("scores", {}).get("triple") or {}).get("f1")


__all__ = ["DemoRun", "DemoSize", "SIZES", "SettingsMismatch"]
