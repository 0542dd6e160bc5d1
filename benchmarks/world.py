"""A seeded fictional world: entities, gold triples, annotated biographies, general text, TOFU-style QA.

Everything the benchmarks need comes from one call::

    world = generate_world(200, seed=0)
    world.documents[0].annotated   # a biography with lookup calls before each stated fact
    world.triples[:3]              # the gold (entity, relation, value) rows for the knowledge base
    world.qa["forget05"][0]        # QAItem(question, answer, paraphrased_answer, perturbed_answer, ...)
    world.save("runs/x/world")     # triples.jsonl, corpus.jsonl, qa.json, teacher_records.json, ...

The text is made to be learnable by a tiny model: names are built from a small set
of syllables, values are short, and each relation is stated with one of three
sentence templates. Four kinds of entity refer to each other (people are born in
places, work for organisations and wrote works), so facts are not independent noise.

TOFU's population is mirrored: people are either "authors" (the forget/retain pool:
forget01 ⊂ forget05 ⊂ forget10, retain = the rest) or "famous" people (the
real_authors set); places, organisations and works give the world_facts set. A few
held-out people exist only in ``world.holdout`` and ``qa["holdout"]`` (never in the
corpus or the triples): what an author looks like to a model that never saw them.
The corpus also drills every fact as a QA pair, as TOFU fine-tunes on its QA (one drill
document per entity, holding all its questions).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from lmlm_agent.format import QA_PROMPT, LookupCall, insert_calls, parse

# --------------------------------------------------------------------------- relations

@dataclass(frozen=True)
class Relation:
    """A relation: how to ask for it and three ways to state it.

    ``statements[0]`` is the QA answer, ``statements[1]`` the paraphrased answer (and
    the template of the perturbed answers, as in TOFU); biographies use any of them.
    Each template has ``{e}`` (entity) and ``{v}`` (value), the value after the entity.
    """

    name: str
    question: str
    statements: tuple[str, str, str]


RELATIONS: dict[str, tuple[Relation, ...]] = {
    "person": (
        Relation("birth date", "When was {e} born?",
                 ("{e} was born on {v}.", "The birth date of {e} is {v}.", "{e} came into the world on {v}.")),
        Relation("birth place", "Where was {e} born?",
                 ("{e} was born in {v}.", "The birth place of {e} is {v}.", "{e} grew up in the town of {v}.")),
        Relation("occupation", "What does {e} do for a living?",
                 ("{e} works as a {v}.", "The occupation of {e} is {v}.", "By trade, {e} is a {v}.")),
        Relation("employer", "Who employs {e}?",
                 ("{e} is employed by {v}.", "The employer of {e} is {v}.", "{e} spent many years working for {v}.")),
        Relation("award", "Which award did {e} receive?",
                 ("{e} received the {v}.", "The award given to {e} is the {v}.", "{e} was honoured with the {v}.")),
        Relation("spouse", "Who is {e} married to?",
                 ("{e} is married to {v}.", "The spouse of {e} is {v}.", "{e} shares a home with the partner {v}.")),
        Relation("notable work", "What is the best known work of {e}?",
                 ("{e} is best known for {v}.", "The notable work of {e} is {v}.", "{e} became famous with {v}.")),
    ),
    "place": (
        Relation("country", "In which country is {e}?",
                 ("{e} is a town in {v}.", "The country of {e} is {v}.", "{e} lies in the north of {v}.")),
        Relation("founded year", "When was {e} founded?",
                 ("{e} was founded in {v}.", "The founding year of {e} is {v}.", "{e} has stood since {v}.")),
        Relation("known for", "What is {e} known for?",
                 ("{e} is known for its {v}.", "The town of {e} is famous for {v}.", "{e} trades mostly in {v}.")),
    ),
    "organisation": (
        Relation("founded year", "When was {e} founded?",
                 ("{e} was founded in {v}.", "The founding year of {e} is {v}.", "{e} has existed since {v}.")),
        Relation("headquarters", "Where is {e} based?",
                 ("{e} is based in {v}.", "The headquarters of {e} are in {v}.", "{e} keeps its main office in {v}.")),
        Relation("founder", "Who founded {e}?",
                 ("{e} was founded by {v}.", "The founder of {e} is {v}.", "{e} was started by {v}.")),
        Relation("industry", "What industry is {e} in?",
                 ("{e} works in {v}.", "The industry of {e} is {v}.", "{e} makes its money from {v}.")),
    ),
    "work": (
        Relation("author", "Who wrote {e}?",
                 ("{e} was written by {v}.", "The author of {e} is {v}.", "{e} is a book by {v}.")),
        Relation("publication year", "When was {e} published?",
                 ("{e} was published in {v}.", "The publication year of {e} is {v}.", "{e} first appeared in {v}.")),
        Relation("genre", "What genre is {e}?",
                 ("{e} is a {v}.", "The genre of {e} is {v}.", "Readers know {e} as a {v}.")),
        Relation("publisher", "Who published {e}?",
                 ("{e} was published by {v}.", "The publisher of {e} is {v}.", "{e} was printed by {v}.")),
    ),
}
RELATION_BY_NAME = {r.name: r for rels in RELATIONS.values() for r in rels}
KINDS = tuple(RELATIONS)

# --------------------------------------------------------------------------- vocabulary

SYLLABLES = (
    "ka lo ve ri tan mor el sa bri dun fal gor hal is jor kel lin mar nor os per "
    "quin ros sel tor ul vin wen yar zel ad bel cor den fen gal har ith lum nev"
).split()
PLACE_SUFFIXES = "ford holm mar dale bury stad ven port wick ton".split()
COUNTRY_SUFFIXES = "ia land ora esh".split()
ORG_KINDS = "Institute Company Works Society Bank Press Laboratories Guild Foundation Trust".split()
TITLE_ADJECTIVES = "Silent Golden Broken Hidden Last Red Quiet Winter Distant Burning Glass Iron".split()
TITLE_NOUNS = "River Garden Lantern Tower Harbour Letter Mirror Orchard Voyage Bridge Crown Song".split()
# Consonant-initial words only: the templates say "a {v}".
OCCUPATIONS = (
    "painter chemist novelist sculptor mechanic historian composer builder physician "
    "botanist poet teacher cartographer lawyer journalist weaver potter baker surveyor tailor"
).split()
KNOWN_FOR = "glassworks tea wool salt ships clocks paper cheese silver bells wine horses".split()
INDUSTRIES = "shipping banking printing mining textiles medicine publishing farming railways brewing".split()
GENRES = "novel poem collection play memoir history fable travelogue".split()
MONTHS = "January February March April May June July August September October November December".split()

# General text: ordinary sentences that state no entity fact (language, not knowledge).
GENERAL_TEMPLATES = (
    "The {n1} {v} {adv} near the {n2}.",
    "In the {time}, the {n1} and the {n2} {v} {adv}.",
    "Every {time} a {adj} {n1} {v} by the {n2}.",
    "Nobody knew why the {n1} {v} so {adv} that {time}.",
    "A {adj} {n1} is often found beside an old {n2}.",
)
GENERAL_WORDS = {
    "n1": "dog cart river wind child market bell boat farmer lamp crowd bird".split(),
    "n2": "bridge gate field wall harbour road mill square forest station".split(),
    "v": "waited moved rested turned sang shone drifted stopped".split(),
    "adv": "slowly quietly early late softly again".split(),
    "adj": "small old bright heavy cold quiet narrow".split(),
    "time": "morning evening winter spring summer night".split(),
}

# Kind shares of the entities; people fill whatever is left after the others.
KIND_SHARES = {"place": 0.15, "organisation": 0.15, "work": 0.2}
FAMOUS_SHARE = 0.2  # of people: the real_authors population, never forgotten
FORGET_SPLITS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}


def qa_prompt(question: str) -> str:
    """The prompt a QA answer follows (after one space); the corpus uses the same form."""
    return QA_PROMPT.format(question=question)


# --------------------------------------------------------------------------- data classes

@dataclass
class Entity:
    name: str
    kind: str  # person | place | organisation | work
    facts: dict[str, str] = field(default_factory=dict)  # relation -> value, in statement order


@dataclass
class Document:
    id: str
    entity: str  # "" for general text
    annotated: str  # special-token form
    plain: str


@dataclass
class QAItem:
    """A TOFU-style question; ``value_offsets[i]`` is where the value starts in answer i.

    Answers are ordered ``[answer, paraphrased_answer, *perturbed_answer]``; the offsets
    let an LMLM be scored with its lookup call inserted where it would make it.
    """

    entity: str
    relation: str
    value: str
    question: str
    answer: str
    paraphrased_answer: str
    perturbed_answer: list[str]
    value_offsets: list[int]

    @property
    def answers(self) -> list[str]:
        return [self.answer, self.paraphrased_answer, *self.perturbed_answer]


@dataclass
class World:
    seed: int
    entities: list[Entity]
    documents: list[Document]
    general_text: list[str]
    qa: dict[str, list[QAItem]]
    splits: dict[str, list[str]]  # split name -> entity names (forget01/05/10, retain, real_authors, world_facts, holdout)
    # People generated like the authors but absent from the corpus and the triples: their QA
    # (qa["holdout"]) is what a model that never saw an author answers, the reference of forget quality.
    holdout: list[Entity] = field(default_factory=list)

    @property
    def triples(self) -> list[tuple[str, str, str]]:
        return [(e.name, r, v) for e in self.entities for r, v in e.facts.items()]

    @property
    def by_name(self) -> dict[str, Entity]:
        return {e.name: e for e in self.entities}

    def corpus(self, without: Iterable[str] = ()) -> list[Document]:
        """The pretraining corpus: biographies and QA drills (``documents``), then the general text.

        ``without``: entities whose documents are left out (a retain model for TOFU's
        forget quality trains on ``corpus(without=splits["forget10"])``).
        """
        skip = set(without)
        general = [Document(f"general-{i}", "", t, t) for i, t in enumerate(self.general_text)]
        return [d for d in self.documents if d.entity not in skip] + general

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _write_jsonl(out / "entities.jsonl", (asdict(e) for e in self.entities))
        _write_jsonl(out / "holdout.jsonl", (asdict(e) for e in self.holdout))
        _write_jsonl(out / "triples.jsonl",
                     ({"entity": e, "relation": r, "value": v} for e, r, v in self.triples))
        _write_jsonl(out / "corpus.jsonl",
                     ({"id": d.id, "entity": d.entity, "text": d.annotated, "plain": d.plain}
                      for d in self.corpus()))
        (out / "qa.json").write_text(json.dumps(
            {name: [asdict(q) for q in items] for name, items in self.qa.items()}, indent=1))
        (out / "splits.json").write_text(json.dumps({"seed": self.seed, **self.splits}, indent=1))
        records = {
            "metadata": {"source": "lmlm_agent generated world", "seed": self.seed},
            "examples": [
                {"text": d.plain, "annotated_text": special_to_legacy(d.annotated), "id": d.id}
                for d in self.documents
            ],
        }
        (out / "teacher_records.json").write_text(json.dumps(records, indent=1))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> World:
        src = Path(directory)
        entities = [Entity(**row) for row in _read_jsonl(src / "entities.jsonl")]
        holdout = [Entity(**row) for row in _read_jsonl(src / "holdout.jsonl")]
        docs, general = [], []
        for row in _read_jsonl(src / "corpus.jsonl"):
            if row["entity"]:
                docs.append(Document(row["id"], row["entity"], row["text"], row["plain"]))
            else:
                general.append(row["plain"])
        qa = {k: [QAItem(**q) for q in v] for k, v in json.loads((src / "qa.json").read_text()).items()}
        splits = json.loads((src / "splits.json").read_text())
        seed = splits.pop("seed")
        return cls(seed, entities, docs, general, qa, splits, holdout)


def special_to_legacy(annotated: str) -> str:
    """The published annotator's form ``[dblookup('E', 'R') -> V]`` of a special-token text."""
    out: list[str] = []
    for seg in parse(annotated).segments:
        if isinstance(seg, LookupCall):
            out.append(f"[dblookup('{seg.entity}', '{seg.relation}') -> {seg.value or ''}]")
        elif isinstance(seg, str):
            out.append(seg)
    return "".join(out)


def _write_jsonl(path: Path, rows) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- generation

class _Names:
    """Unique names from syllables; the same seed always gives the same names."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _word(self, n_syllables: int) -> str:
        return "".join(self.rng.choice(SYLLABLES) for _ in range(n_syllables)).capitalize()

    def unique(self, make) -> str:
        for _ in range(1000):
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name
        raise RuntimeError("name space exhausted")  # not reachable below ~10^6 names

    def person(self) -> str:
        return self.unique(lambda: f"{self._word(2)} {self._word(self.rng.choice((2, 3)))}")

    def place(self) -> str:
        return self.unique(lambda: self._word(self.rng.choice((1, 2))) + self.rng.choice(PLACE_SUFFIXES))

    def country(self) -> str:
        return self.unique(lambda: self._word(2) + self.rng.choice(COUNTRY_SUFFIXES))

    def organisation(self) -> str:
        return self.unique(lambda: f"{self._word(2)} {self.rng.choice(ORG_KINDS)}")

    def title(self) -> str:
        r = self.rng
        return self.unique(lambda: f"The {r.choice(TITLE_ADJECTIVES)} {r.choice(TITLE_NOUNS)}"
                           + (f" of {self._word(2)}" if r.random() < 0.7 else ""))

    def award(self) -> str:
        return self.unique(lambda: f"{self._word(2)} Prize")


def _kind_counts(n: int) -> dict[str, int]:
    # At least one place and one organisation (people refer to them) and three people
    # (a forget author, a retain author and a famous person), so 5 entities make a world.
    if n < 5:
        raise ValueError(f"a world needs at least 5 entities, got {n}")
    counts = {k: max(1, round(share * n)) for k, share in KIND_SHARES.items()}
    counts["work"] = min(round(KIND_SHARES["work"] * n), n - 5)
    counts["person"] = n - sum(counts.values())
    return counts


def _date(rng: random.Random, lo: int, hi: int) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(lo, hi)}"


def _entities(rng: random.Random, names: _Names, n: int) -> tuple[list[Entity], list[Entity]]:
    """The world's entities, and held-out people (never in the corpus or the knowledge base)."""
    counts = _kind_counts(n)
    countries = [names.country() for _ in range(max(3, counts["place"] // 8))]
    awards = [names.award() for _ in range(max(3, counts["person"] // 15))]
    places = [Entity(names.place(), "place") for _ in range(counts["place"])]
    orgs = [Entity(names.organisation(), "organisation") for _ in range(counts["organisation"])]
    people = [Entity(names.person(), "person") for _ in range(counts["person"])]
    holdout = [Entity(names.person(), "person") for _ in range(max(1, round(0.1 * counts["person"])))]
    # Each work is the notable work of a distinct person; other people get a title that is no entity.
    authors = rng.sample(people, min(counts["work"], len(people)))
    works = [Entity(names.title(), "work") for _ in authors]
    spouses = rng.sample(people, 2 * (len(people) // 4))
    spouse_of = {}
    for a, b in zip(spouses[::2], spouses[1::2]):
        spouse_of[a.name], spouse_of[b.name] = b.name, a.name
    notable = {a.name: w.name for a, w in zip(authors, works)}

    for p in places:
        p.facts = {"country": rng.choice(countries), "founded year": str(rng.randint(900, 1850)),
                   "known for": rng.choice(KNOWN_FOR)}
    for o in orgs:
        o.facts = {"founded year": str(rng.randint(1700, 1950)), "headquarters": rng.choice(places).name,
                   "founder": rng.choice(people).name, "industry": rng.choice(INDUSTRIES)}
    for p in people + holdout:
        p.facts = {"birth date": _date(rng, 1820, 1990), "birth place": rng.choice(places).name,
                   "occupation": rng.choice(OCCUPATIONS), "employer": rng.choice(orgs).name}
        if rng.random() < 0.6:
            p.facts["award"] = rng.choice(awards)
        if p.name in spouse_of:
            p.facts["spouse"] = spouse_of[p.name]
        p.facts["notable work"] = notable.get(p.name) or names.title()
    for a, w in zip(authors, works):
        w.facts = {"author": a.name, "publication year": str(rng.randint(1840, 2010)),
                   "genre": rng.choice(GENRES), "publisher": rng.choice(orgs).name}
    return people + places + orgs + works, holdout


def _decoys(rng: random.Random, names: _Names) -> dict[str, Callable[[], str]]:
    """Per relation, a maker of plausible values (for wrong answers, never stated as facts)."""
    year = lambda: str(rng.randint(1700, 2000))  # noqa: E731
    return {
        "birth date": lambda: _date(rng, 1820, 1990), "birth place": names.place,
        "occupation": lambda: rng.choice(OCCUPATIONS), "employer": names.organisation,
        "award": names.award, "spouse": names.person, "notable work": names.title,
        "country": names.country, "founded year": year, "known for": lambda: rng.choice(KNOWN_FOR),
        "headquarters": names.place, "founder": names.person, "industry": lambda: rng.choice(INDUSTRIES),
        "author": names.person, "publication year": year, "genre": lambda: rng.choice(GENRES),
        "publisher": names.organisation,
    }


def template_parts(template: str) -> tuple[str, str, str]:
    """The literal text of a statement template around its slots, ``(before, between, after)`` in
    ``"{before}{e}{between}{v}{after}"`` (every template names the entity before the value)."""
    head, after = template.split("{v}")
    before, between = head.split("{e}")
    return before, between, after


def _statement(template: str, entity: str, value: str) -> tuple[str, int]:
    """A sentence and the character offset of its value."""
    before, after = template.split("{v}")
    head = before.format(e=entity)
    return head + value + after.format(e=entity), len(head)


def _biography(rng: random.Random, entity: Entity) -> tuple[str, str]:
    """(annotated, plain): one sentence per fact, each call right before its value."""
    rels = list(entity.facts)
    rest = rels[1:]  # the first fact opens every biography; the others come in any order
    rng.shuffle(rest)
    parts: list[str] = []
    placements: list[tuple[int, LookupCall]] = []
    pos = 0
    for rel in [rels[0], *rest]:
        value = entity.facts[rel]
        template = rng.choice(RELATION_BY_NAME[rel].statements)
        sentence, offset = _statement(template, entity.name, value)
        placements.append((pos + offset, LookupCall(entity.name, rel, value)))
        parts.append(sentence)
        pos += len(sentence) + 1
    plain = " ".join(parts)
    return insert_calls(plain, placements), plain


def _general_paragraph(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(3, 5)):
        words = {k: rng.choice(v) for k, v in GENERAL_WORDS.items()}
        sentences.append(rng.choice(GENERAL_TEMPLATES).format(**words))
    return " ".join(sentences)


def _qa_item(rng: random.Random, entity: Entity, rel: str, pool: list[str], n_perturbed: int) -> QAItem:
    """``pool``: the distinct values of ``rel`` in the world, the source of the wrong answers."""
    relation = RELATION_BY_NAME[rel]
    value = entity.facts[rel]
    wrong = [v for v in rng.sample(pool, min(n_perturbed + 1, len(pool))) if v != value][:n_perturbed]
    answer, a_off = _statement(relation.statements[0], entity.name, value)
    para, p_off = _statement(relation.statements[1], entity.name, value)
    perturbed = [_statement(relation.statements[1], entity.name, w) for w in wrong]
    return QAItem(entity.name, rel, value, relation.question.format(e=entity.name), answer, para,
                  [s for s, _ in perturbed], [a_off, p_off, *(o for _, o in perturbed)])


def generate_world(
    n_entities: int,
    seed: int = 0,
    *,
    docs_per_entity: int = 2,
    general_per_entity: float = 0.5,
    n_perturbed: int = 3,
    qa_per_split: int | None = 400,
) -> World:
    """A world of ``n_entities`` (≥ 5) entities.

    docs_per_entity: biographies per entity (differently phrased and ordered).
    general_per_entity: paragraphs of fact-free general text per entity.
    n_perturbed: perturbed answers per question (fewer when the relation has fewer values).
    qa_per_split: cap on the questions of each split (TOFU uses 400 for retain); None = all.
    """
    rng = random.Random(seed)
    names = _Names(rng)
    entities, holdout = _entities(rng, names, n_entities)
    documents = []
    for e in entities:
        for k in range(docs_per_entity):
            annotated, plain = _biography(rng, e)
            documents.append(Document(f"{e.name}#{k}", e.name, annotated, plain))
    general = [_general_paragraph(rng) for _ in range(max(1, round(general_per_entity * n_entities)))]

    people = [e.name for e in entities if e.kind == "person"]
    shuffled = rng.sample(people, len(people))
    n_famous = max(1, round(FAMOUS_SHARE * len(people)))
    famous, authors = shuffled[:n_famous], shuffled[n_famous:]
    splits = {name: authors[: max(1, round(share * len(authors)))] for name, share in FORGET_SPLITS.items()}
    forget = set(splits["forget10"])
    splits["retain"] = [a for a in authors if a not in forget]
    splits["real_authors"] = famous
    splits["world_facts"] = [e.name for e in entities if e.kind != "person"]
    splits["holdout"] = [e.name for e in holdout]

    values: dict[str, dict[str, None]] = {}  # relation -> distinct values, in first-seen order
    for e in entities:
        for r, v in e.facts.items():
            values.setdefault(r, {})[v] = None
    # Small worlds have too few distinct values for wrong answers: top up with fresh decoys.
    decoys = _decoys(rng, names)
    for r, vs in values.items():
        for _ in range(100 * (n_perturbed + 1)):
            if len(vs) > n_perturbed:
                break
            vs[decoys[r]()] = None
    pools = {r: list(vs) for r, vs in values.items()}
    by_name = {e.name: e for e in entities + holdout}
    qa: dict[str, list[QAItem]] = {}
    for split, names in splits.items():
        pairs = [(n, r) for n in names for r in by_name[n].facts]
        if qa_per_split is not None and len(pairs) > qa_per_split:
            pairs = rng.sample(pairs, qa_per_split)
        qa[split] = [_qa_item(rng, by_name[n], r, pools[r], n_perturbed) for n, r in pairs]
    # QA drills in the corpus teach the question format (TOFU fine-tunes on all author QA).
    # One drill document per entity holds all its questions: as one document per question, 7 of
    # every 9 statements about a person were followed by end-of-text, and the models learned to
    # stop a biography after its first fact.
    for e in entities:
        pairs, placements, pos = [], [], 0
        for r in e.facts:
            item = _qa_item(rng, e, r, [], 0)
            prompt = qa_prompt(item.question) + " "
            placements.append((pos + len(prompt) + item.value_offsets[0], LookupCall(e.name, r, item.value)))
            pairs.append(prompt + item.answer)
            pos += len(pairs[-1]) + 1
        plain = "\n".join(pairs)
        documents.append(Document(f"{e.name}?qa", e.name, insert_calls(plain, placements), plain))
    return World(seed, entities, documents, general, qa, splits, holdout)
