"""FactScore-style factual precision (Min et al. 2023) of generated biographies.

Prompt "Tell me a bio of X. X is", greedy, 256 new tokens; the output is split into
atomic facts, each judged against a knowledge source; a response's score is the share
of supported facts times the length penalty exp(1 - γ/n) for n < γ facts.
Responses with no fact are abstentions: excluded from the score and reported.

γ: the published value is 10, for Wikipedia people with dozens of facts. A person of the
generated world has 4 to 7, so γ = 10 penalises every bio and the score measures length;
by default γ is the knowledge source's own median number of facts per person
(:func:`world_gamma`, 6 for the generated worlds), and ``gamma=10`` gives the published score.
Precision (unpenalised), facts per bio and supported facts per bio are always reported beside
it, each with a 95 % bootstrap interval over the bios (``benchmarks.stats``).

Two judges:
- the generated world's gold triples: our biographies state one fact per sentence with
  known templates, so a sentence is parsed back into (entity, relation, value) and is
  supported when it is about the topic and the topic's gold value matches (the topic's
  facts are the knowledge source, as a topic's Wikipedia page is in FactScore: a true
  fact about someone else is off-topic, unsupported); other sentences are facts
  supported only if they state one of the topic's gold values; a last sentence the token
  budget cut off ("X spent many years working for") states nothing yet, as an LLM splitter
  finds no fact in it (it counted as unsupported before: 11 of the demo LMLM's 67
  unsupported facts, whose lookups make its bios longer in tokens, none of the baseline's);
- :class:`OpenAIJudge`, an OpenAI-compatible chat model that splits text into atomic
  facts and answers True/False against given knowledge (FactScore's prompts), for real data.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from benchmarks.stats import bootstrap
from benchmarks.subject import Subject
from tools.schema import UNKNOWN
from benchmarks.world import RELATIONS, World, template_parts

GAMMA = 10  # FactScore's published length-penalty scale


def world_gamma(world: World) -> int:
    """The median number of gold facts per person: how many facts a complete bio states."""
    return round(statistics.median(len(e.facts) for e in world.entities if e.kind == "person"))


def length_penalty(n_facts: int, gamma: int = GAMMA) -> float:
    """exp(1 - γ/n) for fewer than γ facts, else 1 (FactScore's penalty for short answers)."""
    if n_facts <= 0:
        raise ValueError("no facts: an abstention has no score")
    return math.exp(1 - gamma / n_facts) if n_facts < gamma else 1.0


def bio_prompt(name: str) -> str:
    return f"Tell me a bio of {name}. {name} is"


@dataclass
class AtomicFact:
    text: str
    supported: bool
    entity: str | None = None  # set when the sentence parsed as a world statement
    relation: str | None = None
    value: str | None = None


@dataclass
class ResponseScore:
    topic: str
    output: str
    facts: list[AtomicFact]
    gamma: int = GAMMA

    @property
    def abstained(self) -> bool:
        return not self.facts

    @property
    def precision(self) -> float:
        return sum(f.supported for f in self.facts) / len(self.facts)

    @property
    def score(self) -> float:
        return self.precision * length_penalty(len(self.facts), self.gamma)

    @property
    def supported(self) -> int:
        return sum(f.supported for f in self.facts)


@dataclass
class FactScoreResult:
    subject: str
    n: int
    gamma: int  # the length penalty's scale
    score: float  # mean penalised precision over the responses that did not abstain
    precision: float  # the same without the length penalty
    abstention_rate: float
    facts_per_response: float
    supported_per_response: float
    intervals: dict[str, dict] = field(default_factory=dict)  # score, precision, facts, supported -> Estimate
    responses: list[dict[str, Any]] = field(default_factory=list, repr=False)  # per topic, with its figures

    def to_dict(self) -> dict:
        return asdict(self)


PER_RESPONSE = ("score", "precision", "facts", "supported")  # each bio's figures (None: it abstained)


def _figures(s: ResponseScore) -> dict[str, float | None]:
    if s.abstained:
        return dict.fromkeys(PER_RESPONSE)
    return {"score": s.score, "precision": s.precision, "facts": float(len(s.facts)), "supported": float(s.supported)}


def aggregate(subject: str, scores: Sequence[ResponseScore], seed: int = 0) -> FactScoreResult:
    answered = [_figures(s) for s in scores if not s.abstained]
    gamma = scores[0].gamma if scores else GAMMA
    intervals = {k: bootstrap([f[k] for f in answered], seed=seed) for k in PER_RESPONSE}
    return FactScoreResult(
        subject,
        len(scores),
        gamma,
        intervals["score"].value,
        intervals["precision"].value,
        1 - len(answered) / len(scores) if scores else math.nan,
        intervals["facts"].value,
        intervals["supported"].value,
        {k: e.to_dict() for k, e in intervals.items()},
        [{"topic": s.topic, "output": s.output, **_figures(s), "facts_judged": [asdict(f) for f in s.facts]}
         for s in scores],
    )


# --------------------------------------------------------------------------- gold-triple judge

def _template_regex(template: str) -> re.Pattern[str]:
    before, between, after = template_parts(template)
    return re.compile(f"{re.escape(before)}(?P<e>.+?){re.escape(between)}(?P<v>.+?){re.escape(after)}$")


_PARSERS = [(_template_regex(t), r.name) for rels in RELATIONS.values() for r in rels for t in r.statements]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def split_sentences(text: str) -> list[str]:
    """Sentences with at least three words: shorter fragments (and token noise) state nothing."""
    out = []
    for s in _SENTENCE_END.split(text):
        s = s.strip()
        if len(re.findall(r"[A-Za-z]+", s)) >= 3:
            out.append(s)
    return out


def parse_statement(sentence: str) -> list[tuple[str, str, str]]:
    """Every (entity, relation, value) reading of a sentence under the world's templates.

    A sentence can fit several ("X is a novel." is a genre statement; "X was founded
    in 1820." fits places and organisations); the judge takes a reading the gold supports.
    """
    readings = []
    for regex, relation in _PARSERS:
        m = regex.match(sentence.strip())
        if m:
            readings.append((m.group("e").strip(), relation, m.group("v").strip()))
    return list(dict.fromkeys(readings))


class GoldJudge:
    """Judges sentences against a world's gold triples."""

    def __init__(self, world: World):
        self.gold = {(e, r): v for e, r, v in world.triples}
        self.values: dict[str, set[str]] = {}
        for e, _, v in world.triples:
            self.values.setdefault(e, set()).add(_norm(v))

    def facts(self, topic: str, text: str) -> list[AtomicFact]:
        """The atomic facts of ``text``; a sentence repeated verbatim (greedy loops) counts once. A last sentence
        without its end (the token budget cut it: "X spent many years working for") claims nothing yet."""
        out = []
        sentences = split_sentences(text)
        if sentences and not re.search(r"[.!?]\s*$", text):
            sentences = sentences[:-1]
        for sentence in dict.fromkeys(sentences):
            readings = parse_statement(sentence)
            if not readings:
                norm = _norm(sentence)
                supported = any(v and v in norm for v in self.values.get(topic, ()))
                out.append(AtomicFact(sentence, supported))
                continue
            if any(_norm(v) == UNKNOWN for _, _, v in readings):
                continue  # "X was born in unknown." claims nothing: the model abstained on it
            judged = [(e == topic and self._supports(e, r, v), e, r, v) for e, r, v in readings]
            supported, entity, relation, value = max(judged, key=lambda j: j[0])
            out.append(AtomicFact(sentence, supported, entity, relation, value))
        return out

    def _supports(self, entity: str, relation: str, value: str) -> bool:
        gold = self.gold.get((entity, relation))
        return gold is not None and _norm(gold) == _norm(value)


@dataclass
class FactScoreConfig:
    max_entities: int | None = field(default=50, metadata={"help": "Topics to ask about (None: all)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Greedy tokens per bio (FactScore: 256)."})
    gamma: int | None = field(default=None, metadata={"help": "Length-penalty scale (published: 10); None: the world's median facts per person."})
    seed: int = field(default=0, metadata={"help": "Bootstrap seed of the intervals."})


def evaluate_factscore(subject: Subject, world: World, topics: Sequence[str], config: FactScoreConfig) -> FactScoreResult:
    """Bios of ``topics`` judged on the world's gold triples."""
    topics = list(topics)[: config.max_entities]
    judge = GoldJudge(world)
    gamma = config.gamma or world_gamma(world)
    outputs = subject.generate([bio_prompt(t) for t in topics], config.max_new_tokens)
    # The prompt's last words ("X is") begin the first sentence of the bio.
    scores = [ResponseScore(t, o, judge.facts(t, f"{t} is{o}"), gamma) for t, o in zip(topics, outputs)]
    return aggregate(subject.name, scores, config.seed)


# --------------------------------------------------------------------------- LLM judge

ATOMIC_PROMPT = (
    "Please breakdown the following sentence into independent facts. "
    "Write one fact per line, each starting with '- '.\n\n{sentence}"
)
JUDGE_PROMPT = (
    "Answer the question about {topic} based on the given context.\n\n{knowledge}\n\n"
    "Input: {fact} True or False?\nOutput:"
)


class OpenAIJudge:
    """FactScore's atomic-fact splitting and support questions on an OpenAI-compatible endpoint.

    ``client`` is an ``openai.OpenAI`` (or anything with ``chat.completions.create``).
    """

    def __init__(self, client=None, model: str = "gpt-4o-mini", base_url: str | None = None, api_key: str | None = None):
        if client is None:
            from openai import OpenAI

            client = OpenAI(base_url=base_url, api_key=api_key)
        self.client = client
        self.model = model

    def _ask(self, prompt: str) -> str:
        reply = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0
        )
        return reply.choices[0].message.content or ""

    def atomic_facts(self, text: str) -> list[str]:
        facts = []
        for sentence in split_sentences(text):
            lines = self._ask(ATOMIC_PROMPT.format(sentence=sentence)).splitlines()
            facts += [l[2:].strip() for l in lines if l.startswith("- ") and l[2:].strip()]
        return facts

    def supported(self, topic: str, fact: str, knowledge: str) -> bool:
        answer = self._ask(JUDGE_PROMPT.format(topic=topic, knowledge=knowledge, fact=fact)).lower()
        # FactScore's rule: "true" without "false", or both and "true" first.
        if "true" in answer and "false" in answer:
            return answer.index("true") < answer.index("false")
        return "true" in answer

    def score(self, topic: str, output: str, knowledge: str) -> ResponseScore:
        facts = [AtomicFact(f, self.supported(topic, f, knowledge)) for f in self.atomic_facts(output)]
        return ResponseScore(topic, output, facts)
