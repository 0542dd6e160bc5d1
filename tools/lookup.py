"""The read policies' matching steps: entity names by characters, relation names by meaning.

The entity-first policy (the default) answers only from the rows of the entity asked
about. The entity is matched by name: exactly after normalisation, else by a
character-level similarity that forgives a typo (:class:`EntityNames`). Then, among
that entity's relations, the relation is matched exactly, else by the cosine of
MiniLM embeddings of relation names (:class:`RelationVectors`). An entity the store
does not know is ``unknown`` whatever the relation, so no other entity's value is
ever returned for it.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, NamedTuple

from rapidfuzz import process
from rapidfuzz.distance import OSA

from tools.relation_aliases import RelationLexicon, builtin_lexicon, same_words

if TYPE_CHECKING:
    import numpy as np

PolicyName = Literal["entity", "published"]
Fallback = Literal["unknown", "top1"]
POLICIES: tuple[PolicyName, ...] = ("entity", "published")
FALLBACKS: tuple[Fallback, ...] = ("unknown", "top1")
FUZZY_CANDIDATES = 5  # best names kept by the fuzzy search before the digit and tie checks
_DIGITS_RE = re.compile(r"\d+")


@dataclass(frozen=True)
class LookupPolicy:
    """How ``read`` matches a query to stored rows (every threshold is inclusive)."""

    name: PolicyName = field(default="entity", metadata={"help": "entity: entity by name, then relation by meaning among "
                             "its rows (never another entity's fact); published: nearest 'entity relation' key"})
    entity_threshold: float = field(default=0.85, metadata={"help": "entity policy: least name similarity of a fuzzy "
                                    "entity match, 1 - edits / longer length (an edit: a character inserted, deleted, "
                                    "replaced, or two neighbours swapped); 1 disables fuzzy matching"})
    entity_max_edits: int = field(default=1, metadata={"help": "entity policy: most edits between the query and a fuzzily "
                                  "matched name (with entity_threshold, both must hold); 0 disables fuzzy matching. "
                                  "Two edits would also match a made-up name to a stored one two letters away"})
    relation_threshold: float = field(default=0.5, metadata={"help": "entity policy: least cosine of the MiniLM "
                                      "embeddings of the query relation and a stored relation name, each framed as "
                                      "'what is the ...?'"})
    relation_aliases: bool = field(default=True, metadata={"help": "entity policy: match relation names through "
                                   "tools.relation_aliases (names of one relation, Wikidata-style: 'works for' is "
                                   "'employer') before their embeddings; a query that names another relation there "
                                   "is not answered by one of the entity's relations that the lexicon names"})
    relation_margin: float = field(default=0.03, metadata={"help": "entity policy: the best relation must beat the "
                                   "entity's next best by this much, else the lookup is 'unknown' (ambiguous)"})
    relation_same: float = field(default=0.7, metadata={"help": "entity policy: when the query means a relation the "
                                 "entity lacks but the namespace holds, least cosine between that relation's name and "
                                 "the entity's own relation for the latter to answer as another name of it"})
    threshold: float = field(default=0.6, metadata={"help": "published policy: least cosine of the 'entity relation' key"})
    fallback: Fallback = field(default="unknown", metadata={"help": "below the relation (or published) threshold: "
                               "'unknown' (a miss) or 'top1' (the best candidate anyway; an unknown entity stays unknown)"})

    def __post_init__(self) -> None:
        from tools.schema import InvalidInput

        if self.name not in POLICIES:
            raise InvalidInput(f"policy must be one of {', '.join(POLICIES)}, got {self.name!r}")
        if self.fallback not in FALLBACKS:
            raise InvalidInput(f"fallback must be 'unknown' or 'top1', got {self.fallback!r}")
        if isinstance(self.entity_max_edits, bool) or not isinstance(self.entity_max_edits, int) or self.entity_max_edits < 0:
            raise InvalidInput(f"entity_max_edits must be a non-negative integer, got {self.entity_max_edits!r}")
        for name in ("entity_threshold", "relation_threshold", "relation_margin", "relation_same", "threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidInput(f"{name} must be within [0, 1], got {value}")


def make_policy(policy: PolicyName | LookupPolicy, settings: dict[str, object]) -> LookupPolicy:
    """A :class:`LookupPolicy` from a policy object, or from a name plus field values; unknown settings are refused."""
    import dataclasses

    from tools.schema import InvalidInput

    fields = {f.name for f in dataclasses.fields(LookupPolicy)} - {"name"}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise InvalidInput(f"unknown lookup setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    if isinstance(policy, LookupPolicy):
        return dataclasses.replace(policy, **settings)
    return LookupPolicy(name=policy, **settings)


class EntityMatch(NamedTuple):
    """The outcome of the entity step: the stored entity key (None on a miss), its similarity and the rule."""

    entity_key: str | None
    score: float | None
    rule: str  # entity_exact | entity_fuzzy | entity_unknown | entity_ambiguous | entity_forgotten


GRAM = 3  # character n-grams of the candidate filter
GRAMS_PER_EDIT = 4  # most n-grams of a name one edit can remove (a swap of two neighbours: four trigrams)


def _grams(text: str) -> set[str]:
    return {text[i : i + GRAM] for i in range(len(text) - GRAM + 1)}


class EntityNames(NamedTuple):
    """The entity names of one namespace at one ``kb_meta.entity_generation`` (immutable: rebuilt, never edited).

    Every write that inserts or deletes rows changes the generation in the same
    transaction; a fuzzy search first reads it (one row) and rebuilds the names when it
    moved, so another process's writes and deletes are seen at the next lookup.
    ``forgotten`` holds entities that were deleted and have no rows left: they take part
    in the search as tombstones, so a query for a forgotten person (or a typo of one) is
    ``unknown`` instead of the nearest other person.

    ``postings`` maps each character trigram to the names holding it. One edit (a letter
    inserted, deleted, replaced, or two neighbours swapped) removes at most four of a
    string's trigrams, so a name within ``k`` edits of the query holds all but ``4k`` of the
    query's distinct trigrams: counting shared trigrams picks the names worth scoring (on the
    shared 2-core machine a full scan of 100k names took about 100 ms, the count under 1 ms).
    """

    generation: str | None
    choices: list[str]  # live names, then forgotten ones
    forgotten: frozenset[str]
    postings: dict[str, np.ndarray]

    @classmethod
    def build(cls, generation: str | None, live: list[str], deleted: list[str]) -> EntityNames:
        import numpy as np

        from tools.schema import normalise_text

        live_set = set(live)
        forgotten = frozenset(k for k in (normalise_text(d) for d in deleted) if k not in live_set)
        choices = list(live) + sorted(forgotten)
        postings: dict[str, list[int]] = {}
        for i, name in enumerate(choices):
            for gram in _grams(name):
                postings.setdefault(gram, []).append(i)
        return cls(generation, choices, forgotten, {g: np.asarray(ix, dtype=np.int64) for g, ix in postings.items()})

    def is_current(self, generation: str | None) -> bool:
        """Without a generation row (a database no writer of this version has opened) nothing can be trusted."""
        return generation is not None and generation == self.generation

    def candidates(self, query: str, threshold: float, max_edits: int) -> list[str]:
        """The names that can be within ``threshold`` and ``max_edits`` of ``query`` (all of them when the
        n-gram bound says nothing)."""
        import numpy as np

        # similarity = 1 - edits / longer length >= t  implies  edits <= (1 - t) * len(query) / t
        most_edits = min(max_edits, int((1.0 - threshold) * len(query) / threshold + 1e-9))
        grams = _grams(query)
        need = len(grams) - GRAMS_PER_EDIT * most_edits
        if need <= 0:
            return self.choices
        lists = [self.postings[g] for g in grams if g in self.postings]
        if len(lists) < need:
            return []
        shared = np.bincount(np.concatenate(lists), minlength=len(self.choices))
        return [self.choices[i] for i in np.flatnonzero(shared >= need)]

    def match(self, query: str, threshold: float, max_edits: int) -> EntityMatch:
        """The one stored (or forgotten) name nearest to ``query``, at or above ``threshold`` and at most ``max_edits`` away.

        Digits are never forgiven ("Apollo 11" is not a typo of "Apollo 12"); a tie between
        two names is ``entity_ambiguous``; a forgotten name winning is ``entity_forgotten``.
        """
        if threshold >= 1.0 or max_edits < 1 or not self.choices:
            return EntityMatch(None, None, "entity_unknown")
        found = process.extract(
            query, self.candidates(query, threshold, max_edits), scorer=OSA.normalized_similarity,
            score_cutoff=threshold, limit=FUZZY_CANDIDATES,
        )
        digits = _DIGITS_RE.findall(query)
        found = [(name, score) for name, score, _ in found
                 if _DIGITS_RE.findall(name) == digits and OSA.distance(query, name, score_cutoff=max_edits) <= max_edits]
        if not found:
            return EntityMatch(None, None, "entity_unknown")
        (best, score), runner_up = found[0], found[1][1] if len(found) > 1 else None
        if runner_up is not None and runner_up >= score:
            return EntityMatch(None, round(score, 6), "entity_ambiguous")
        if best in self.forgotten:
            return EntityMatch(None, round(score, 6), "entity_forgotten")
        return EntityMatch(best, round(score, 6), "entity_fuzzy")


RELATION_QUESTION = "what is the {}?"
"""The frame every relation name is embedded in, stored and asked alike. Bare, MiniLM reads a short
verb phrase by its words ("works for" nearest "award received", "head office" nearest "employer");
asked as the question the lookup answers, names are compared as what they ask for."""


class RelationVectors:
    """MiniLM embeddings of relation names (in :data:`RELATION_QUESTION`), computed once per distinct
    normalised string per process.

    Stored relation names are few (dozens to thousands), so they stay cached; query
    relations are kept in a bounded LRU, so a lookup embeds at most its own relation,
    and none when that relation was asked before.
    """

    QUERY_CACHE = 4096

    def __init__(self) -> None:
        self._vectors: dict[str, np.ndarray] = {}
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _embed(self, texts: list[str]) -> list[np.ndarray]:
        from tools.embedder import embed_queries, intra_op_threads

        with intra_op_threads(1):
            return list(embed_queries([RELATION_QUESTION.format(t) for t in texts]))

    def stored(self, relations: list[str]) -> list[np.ndarray]:
        missing = [r for r in dict.fromkeys(relations) if r not in self._vectors]
        if missing:
            vectors = self._embed(missing)
            with self._lock:
                self._vectors.update(zip(missing, vectors, strict=True))
        return [self._vectors[r] for r in relations]

    def query(self, relation: str) -> np.ndarray:
        with self._lock:
            vector = self._queries.get(relation)
            if vector is not None:
                self._queries.move_to_end(relation)
                return vector
        vector = self._vectors.get(relation)
        if vector is None:
            (vector,) = self._embed([relation])
        with self._lock:
            self._queries[relation] = vector
            while len(self._queries) > self.QUERY_CACHE:
                self._queries.popitem(last=False)
        return vector

    def forget_queries(self) -> None:
        """Drop the cached query vectors (benchmarks time a lookup that must embed its relation)."""
        with self._lock:
            self._queries.clear()

    def similarity(self, a: str, b: str) -> float:
        """The cosine of two relation names (both kept as stored names)."""
        first, second = self.stored([a, b])
        return float(first @ second)

    def rank(self, relation: str, candidates: list[str]) -> list[tuple[str, float]]:
        """``candidates`` by cosine similarity to ``relation``, best first."""
        import numpy as np

        query = self.query(relation)
        sims = np.stack(self.stored(candidates)) @ query
        order = np.argsort(-sims, kind="stable")
        return [(candidates[i], min(1.0, float(sims[i]))) for i in order]


class RelationMatch(NamedTuple):
    """The outcome of the relation step among one entity's relations."""

    relation_key: str | None
    score: float | None
    rule: str  # relation_exact | relation_lexical | relation_alias | relation_semantic | relation_fallback
    #            | relation_unknown | relation_ambiguous | relation_absent
    fallback: bool = False  # returned below the threshold (or ambiguous) because fallback="top1"


def pick_relation(
    relation_key: str, candidates: list[str], vectors: RelationVectors | None, policy: LookupPolicy
) -> RelationMatch:
    """The stored relation that answers ``relation_key`` among one entity's ``candidates``.

    Without ``vectors`` (a store opened with ``index=False``: no embedder) only the exact
    normalised relation matches. Else the one candidate with the same content words
    (:func:`same_words`, score 1.0: MiniLM puts "published by" nearer "author" than
    "publisher"), else the one candidate that the alias lexicon puts in a group with the
    query (:mod:`tools.relation_aliases`, score 1.0), else the nearest by meaning among the
    candidates the lexicon does not rule out: when the query is in the lexicon, a candidate in
    other groups only is another relation ("religion" is not answered by "nationality"), and
    an entity with nothing else is ``relation_absent``.
    """
    if relation_key in candidates:
        return RelationMatch(relation_key, 1.0, "relation_exact")
    if vectors is None or not candidates:
        return RelationMatch(None, None, "relation_unknown")
    lexical = [c for c in candidates if same_words(relation_key, c)]
    if len(lexical) == 1:
        return RelationMatch(lexical[0], 1.0, "relation_lexical")
    if policy.relation_aliases:
        lexicon = builtin_lexicon()
        left = _alias_candidates(lexicon.groups_of(relation_key), candidates, lexicon)
        if len(left) == 1 and left[0][1]:
            return RelationMatch(left[0][0], 1.0, "relation_alias")
        if not left:
            return RelationMatch(None, None, "relation_absent")
        candidates = [c for c, _ in left]
    ranked = vectors.rank(relation_key, candidates)
    best, score = ranked[0][0], round(ranked[0][1], 6)
    runner_up = ranked[1][1] if len(ranked) > 1 else None
    top1 = policy.fallback == "top1"
    if score < policy.relation_threshold:
        return RelationMatch(best, score, "relation_fallback", True) if top1 else RelationMatch(None, score, "relation_unknown")
    if runner_up is not None and score - runner_up < policy.relation_margin:
        return RelationMatch(best, score, "relation_ambiguous", True) if top1 else RelationMatch(None, score, "relation_ambiguous")
    return RelationMatch(best, score, "relation_semantic")


def _alias_candidates(asked: frozenset[int], candidates: list[str], lexicon: RelationLexicon) -> list[tuple[str, bool]]:
    """The candidates the alias step leaves, each with whether the lexicon names it as the query's relation.

    A query in no group (``asked`` empty) leaves every candidate; else the candidates sharing a group
    with it, or when none does, those the lexicon does not know (they may still be another name of it).
    """
    if not asked:
        return [(c, False) for c in candidates]
    groups = [lexicon.groups_of(c) for c in candidates]
    named = [(c, True) for c, g in zip(candidates, groups, strict=True) if g & asked]
    return named or [(c, False) for c, g in zip(candidates, groups, strict=True) if not g]


class RelationVocabulary:
    """Every relation name one namespace has held, and which names the store shows to be different relations.

    Names are collected from rows with ids above the last one seen, so the vocabulary is
    refreshed cheaply and keeps the names of deleted rows: a relation deleted for one entity
    (or for all) is still a relation the namespace knows, and asking for it must not be
    answered by a similar name. Two names are *distinct* when one entity holds both with
    different values ("birth date" and "birth place" of one person). Names that never meet
    on one entity are either two spellings of one relation ("birthplace", "place of birth")
    or relations of different kinds of entity ("employer" of people, "industry" of firms);
    :attr:`LookupPolicy.relation_same` tells them apart by the similarity of the names.
    """

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.ordered: tuple[str, ...] = ()  # the names sorted once per growth, not once per lookup
        self.seen_id = 0
        self._distinct: dict[tuple[str, str], bool | int] = {}  # True, or the generation a "not distinct" was read at
        self._lock = threading.Lock()

    def grow(self, names: set[str], up_to_id: int) -> None:
        """Add the relation names of the rows read above :attr:`seen_id`, up to ``up_to_id``."""
        with self._lock:
            if not names <= self.names:
                self.names |= names
                self.ordered = tuple(sorted(self.names))
            self.seen_id = max(self.seen_id, up_to_id)

    def held_apart(self, a: str, b: str, generation: int, ask_store: Callable[[str, str], bool]) -> bool:
        """Whether one entity holds both ``a`` and ``b`` with different values; ``ask_store`` reads it
        (cached: once held apart, always; "not held apart" only until the store changes)."""
        pair = (min(a, b), max(a, b))
        known = self._distinct.get(pair)
        if known is True or (known is not None and known == generation):
            return known is True
        answer = ask_store(*pair)
        with self._lock:
            self._distinct[pair] = True if answer else generation
        return answer


VOCABULARY_RANK_LIMIT = 2000
"""Most relation names a query is ranked against to find the relation it means; past it, only a query
relation the namespace holds by name guards against a similar relation answering in its place."""


def meant_elsewhere(relation_key: str, chosen: RelationMatch, vocabulary: RelationVocabulary,
                    vectors: RelationVectors) -> str | None:
    """The relation name of the namespace that ``relation_key`` means more closely than the entity's ``chosen``, if any.

    The relation step picks among one entity's relations only; when the entity lacks the
    relation asked (never had it, or it was deleted), the nearest of its own can be a
    neighbour ("birth place" for "birth date"). The name the query means is its exact
    name when the namespace holds it, else, for a lexical match, another name with the
    same content words, else its nearest name in the whole vocabulary.
    """
    if relation_key in vocabulary.names:
        return relation_key
    if chosen.rule == "relation_alias":  # the lexicon named it; only a relation held by the asked name overrides
        return None
    names = vocabulary.ordered
    if not names or len(names) > VOCABULARY_RANK_LIMIT:
        return None
    if chosen.rule == "relation_lexical":
        return next((n for n in names if n != chosen.relation_key and same_words(relation_key, n)), None)
    best, score = vectors.rank(relation_key, list(names))[0]
    return best if best != chosen.relation_key and chosen.score is not None and score > chosen.score else None


RELATION_VECTORS = RelationVectors()
"""Shared by every store of the process: the embedder is process-wide, so are the vectors of relation names."""
