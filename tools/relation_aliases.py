"""Relation names as text: their content words (the lexical step) and names that mean one relation (the alias step).

MiniLM compares two short relation names by their words, so names of one relation with
no word in common ("works for" / "employer", "mother tongue" / "native language") score
below the names of different relations that share a word ("born on" is nearer "birth
place" than "birth date"). Knowledge bases solve this with aliases: every Wikidata
property lists the other names people use for it (P19 "place of birth": "birthplace",
"born in", "POB", ...). :data:`RELATION_ALIASES` is such a list for the relations of
people, organisations, places and creative works that biographies and encyclopaedic text
state most, written from Wikidata's labels and aliases and common English usage.

A name may belong to several groups when it names different relations of different kinds
of entity ("located in": a firm's headquarters, a town's country): the entity's own
relations decide. Names that one namespace may hold as two relations stay apart ("known
for" is not a "notable work": a store can hold both, for different kinds of entity).
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import permutations

from tools.schema import normalise_text

FUNCTION_WORDS = frozenset(
    "a an the of in on at by for to from with as into about is was are were be been has have had it its "
    "their his her them this that and".split())
_LETTERS_RE = re.compile(r"[^\W\d_]+")
AGENT = "-er"  # marks an agent noun: "founder", "founded by" (not "founded", "founded in")


def _stem(word: str, before_by: bool) -> str:
    """A light stem (each cut only when 3 letters stay): a plural s; then -er, kept as the agent mark, or -ed,
    an agent when ``by`` follows ("published by" is the publisher, "published in" is not), or -ing; a final e."""
    if word.endswith("s") and not word.endswith("ss") and len(word) > 4:
        word = word[:-1]
    mark = ""
    for suffix in ("er", "ed", "ing"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word, mark = word[: -len(suffix)], AGENT if suffix == "er" or (suffix == "ed" and before_by) else ""
            break
    return (word[:-1] if word.endswith("e") and len(word) > 3 else word) + mark


@lru_cache(maxsize=8192)
def word_forms(name: str) -> frozenset[str]:
    """The content words of a relation name, stemmed and joined in every order (up to 4 words; more: sorted once).

    Two names share a form when they have the same content words up to order, function words,
    inflection and compounding: "year of founding" / "founded year", "published by" / "publisher",
    "place of birth" / "birthplace". Empty when the name has no content word.
    """
    words = _LETTERS_RE.findall(name)
    stems = [_stem(w, words[i + 1 : i + 2] == ["by"]) for i, w in enumerate(words) if w not in FUNCTION_WORDS]
    if len(stems) > 4:
        return frozenset({"".join(sorted(stems))})
    return frozenset("".join(p) for p in permutations(stems)) if stems else frozenset()


def same_words(a: str, b: str) -> bool:
    """Whether two relation names have the same content words (see :func:`word_forms`)."""
    return not word_forms(a).isdisjoint(word_forms(b))

RELATION_ALIASES: tuple[tuple[str, ...], ...] = (
    # people
    ("birth date", "date of birth", "birthdate", "birthday", "born on", "born", "dob", "birth year", "year of birth",
     "year born", "born when", "when born", "date born", "born in year", "birth"),
    ("birth place", "place of birth", "birthplace", "born in", "born at", "place born", "location of birth",
     "birth city", "city of birth", "town of birth", "where born", "pob", "native town", "native city",
     "native place"),
    ("death date", "date of death", "died on", "died", "death year", "year of death", "year died", "when died",
     "date died", "dod", "passed away", "year of passing", "date of passing", "death", "year of decease",
     "date of decease", "decease", "year deceased"),
    ("death place", "place of death", "deathplace", "died in", "died at", "location of death", "where died",
     "city of death", "passed away in"),
    ("cause of death", "died of", "death cause", "died from"),
    ("burial place", "place of burial", "buried in", "buried at", "resting place", "grave"),
    ("occupation", "profession", "job", "career", "line of work", "vocation", "trade", "works as", "working as",
     "employment", "what they do", "field of employment", "job title", "what they do for a living", "does for a living", "makes a living as", "kind of work",
     "what they do for work", "type of work", "work they do",
     "earns a living as"),
    ("employer", "works for", "working for", "worked for", "employed by", "employers", "workplace", "works at",
     "company worked for", "organisation worked for", "organization worked for"),
    ("position held", "position", "office held", "post", "job title", "role", "title", "office"),
    ("spouse", "married to", "husband", "wife", "spouses", "partner", "husband or wife", "wife or husband",
     "marriage partner", "consort", "wed to", "wedded to", "married", "better half", "significant other"),
    ("child", "children", "son", "daughter", "sons", "daughters", "offspring", "kids", "kid"),
    ("number of children", "children count", "how many children", "count of children"),
    ("father", "dad", "male parent"),
    ("mother", "mom", "mum", "female parent"),
    ("parent", "parents"),
    ("sibling", "siblings", "brother", "sister", "brothers", "sisters"),
    ("country of citizenship", "citizenship", "nationality", "citizen of", "national of", "subject of"),
    ("educated at", "alma mater", "education", "studied at", "school", "university", "college",
     "university attended", "school attended", "college attended", "graduated from", "attended", "alumnus of",
     "alumna of", "alumni of", "studied", "uni", "schooling", "graduate of"),
    ("academic degree", "degree", "qualification"),
    ("field of work", "field", "area of expertise", "discipline", "field of study", "specialty", "speciality"),
    ("notable work", "notable works", "best known work", "famous work", "most famous work", "major work",
     "major works", "magnum opus", "masterpiece", "signature work", "key work", "main work", "creation", "famous creation", "best known creation",
     "known for creating", "known for writing", "known for making"),
    ("award received", "award", "awards", "prize", "prizes", "prize won", "prize received", "awards won",
     "award won", "honours", "honors", "honour", "honor", "honour received", "honor received", "accolade",
     "accolades", "distinction", "distinctions", "decoration"),
    ("residence", "place of residence", "lives in", "living in", "lived in", "resides in", "home", "home city",
     "domicile", "city of residence", "address", "abode", "current residence", "resides"),
    ("native language", "mother tongue", "first language", "native tongue", "mothertongue", "l1", "first tongue",
     "language spoken from birth", "language from birth", "childhood language"),
    ("languages spoken", "language spoken", "speaks", "languages"),
    ("religion", "faith", "religious affiliation", "denomination", "belief"),
    ("political party", "party", "member of political party", "party affiliation"),
    ("sex or gender", "gender", "sex"),
    ("ethnic group", "ethnicity", "race"),
    ("height", "how tall", "stature"),
    ("eye colour", "eye color", "colour of eyes", "color of eyes"),
    ("hair colour", "hair color"),
    ("blood type", "blood group"),
    ("net worth", "wealth", "fortune"),
    ("salary", "wage", "wages", "pay", "earnings", "annual salary"),
    ("hobby", "hobbies", "pastime", "pastimes", "interests", "leisure activity"),
    ("email address", "email", "e-mail", "e-mail address"),
    ("phone number", "telephone number", "phone", "telephone", "mobile number"),
    ("zodiac sign", "star sign", "astrological sign"),
    ("sport", "sports", "plays"),
    ("member of sports team", "team", "plays for", "club"),
    ("instrument", "instruments", "plays instrument"),
    ("identifier", "isbn", "isbn number", "issn", "doi", "id number", "catalogue number", "catalog number"),
    ("website", "official website", "homepage", "home page", "url", "web site"),
    # organisations
    ("founded year", "inception", "founded", "year founded", "founding year", "founding date", "date founded",
     "date of founding", "year of founding", "founded in", "founded on", "established", "established in",
     "year established", "date established", "year of establishment", "date of establishment", "incorporated",
     "year of incorporation", "creation date", "date of creation", "since", "start year"),
    ("headquarters", "headquarters location", "head office", "hq", "head quarters", "based in", "main office",
     "home base", "base", "base of operations", "operating base",
     "seat", "location", "located in", "head office location"),
    ("founder", "founders", "founded by", "co-founder", "cofounder", "established by", "started by", "creator",
     "created by", "set up by", "launched by", "who started it"),
    ("industry", "sector", "business sector", "industry sector", "line of business", "business", "field",
     "market", "trade", "business area", "field of business"),
    ("chief executive officer", "ceo", "chief executive", "managing director", "head"),
    ("number of employees", "employees", "staff", "workforce", "headcount", "staff size", "employee count"),
    ("revenue", "turnover", "sales", "annual revenue", "income"),
    ("owned by", "owner", "owners", "parent company", "parent organisation", "parent organization"),
    ("product", "products", "makes", "produces", "product line"),
    ("subsidiary", "subsidiaries", "daughter company"),
    # places
    ("country", "nation", "located in country", "country located in", "in country", "sovereign state",
     "location", "located in"),
    ("population", "inhabitants", "number of inhabitants", "residents", "population size"),
    ("area", "surface area", "size"),
    ("capital", "capital city", "seat of government"),
    ("head of government", "mayor", "leader", "governor"),
    ("official language", "language", "languages spoken"),
    ("currency", "money"),
    ("elevation", "altitude", "height above sea level"),
    ("continent",),
    ("time zone", "timezone"),
    ("known for", "famous for", "renowned for", "noted for", "notable for", "well known for", "best known for",
     "claim to fame", "speciality", "specialty"),
    # creative works
    ("author", "writer", "written by", "authored by", "penned by", "wrote", "creator", "created by", "novelist",
     "poet", "by"),
    ("publication year", "publication date", "year of publication", "date of publication", "published",
     "published in", "published on", "date published", "year published", "release date", "release year",
     "released", "released in", "first published", "first published in", "came out"),
    ("publisher", "published by", "publishing house", "publishing company", "publishers", "imprint", "press",
     "printed by", "issued by", "released by", "put out by"),
    ("genre", "literary genre", "genres", "category", "type", "kind", "style", "form", "literary form",
     "type of book", "book type", "kind of book", "music genre", "film genre", "category of writing",
     "kind of writing", "type of writing", "literary category"),
    ("original language", "language of work", "language of the work", "written in language"),
    ("illustrator", "illustrated by", "illustrations by"),
    ("translator", "translated by", "translation by"),
    ("main subject", "subject", "topic", "about", "theme", "subject matter"),
    ("characters", "character", "main character", "protagonist"),
    ("number of pages", "pages", "page count", "length"),
    ("followed by", "sequel", "next in series", "succeeded by"),
    ("follows", "prequel", "preceded by", "previous in series"),
    ("series", "part of the series", "part of series"),
    ("setting", "set in", "narrative location", "takes place in"),
    ("director", "directed by", "film director"),
    ("composer", "composed by", "music by"),
)


FILLER_WORDS = frozenset("received won given earned obtained got held holds has having where when who what which "
                         "how they he she someone something person does do did".split())
"""Words a relation name may add without naming another relation ("distinctions received", "holds
citizenship of", "where they live"): the content-word match also tries the name without them."""


class RelationLexicon:
    """Which alias groups a relation name belongs to: by its normalised text, else by its content words.

    The exact text decides first because content words alone lose the preposition that
    tells relations apart ("born on" is a birth date, "born in" a birth place); only a name
    that is no alias as written is matched by content words (see :func:`word_forms`:
    "year of publication" / "publication years"), then by content words less :data:`FILLER_WORDS`.
    """

    def __init__(self, groups: tuple[tuple[str, ...], ...]) -> None:
        self._by_text: dict[str, set[int]] = {}
        self._by_words: dict[str, set[int]] = {}
        for i, group in enumerate(groups):
            for name in group:
                self._by_text.setdefault(normalise_text(name), set()).add(i)
                for form in word_forms(normalise_text(name)):
                    self._by_words.setdefault(form, set()).add(i)
        self.groups = groups

    @lru_cache(maxsize=8192)  # noqa: B019 (one lexicon per process, the cache lives as long)
    def groups_of(self, name: str) -> frozenset[int]:
        """The groups ``name`` (normalised) belongs to; empty when it is in no group."""
        exact = self._by_text.get(name)
        if exact:
            return frozenset(exact)
        by_words = frozenset(g for form in word_forms(name) for g in self._by_words.get(form, ()))
        if by_words:
            return by_words
        words = name.split()
        for i in range(len(words) - 1):  # "(person) who founded it": the founder
            if words[i] == "who" and words[i + 1].endswith("ed"):
                words[i : i + 2] = [words[i + 1], "by"]
        plain = " ".join(w for w in words if w not in FILLER_WORDS)
        return self.groups_of(plain) if plain and plain != name else frozenset()


@lru_cache(maxsize=1)
def builtin_lexicon() -> RelationLexicon:
    """The lexicon of :data:`RELATION_ALIASES`, built at the first lookup that reaches the alias step."""
    return RelationLexicon(RELATION_ALIASES)
