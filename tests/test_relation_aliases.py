"""The entity policy's alias step (tools.relation_aliases) on a real store with the real MiniLM."""

from __future__ import annotations

from tools import open_store
from tools.relation_aliases import RELATION_ALIASES, RelationLexicon, builtin_lexicon
from tools.schema import normalise_text

PERSON = [("Vela Orn", "birth date", "3 May 1901"), ("Vela Orn", "birth place", "Tarn"),
          ("Vela Orn", "employer", "Orl Works"), ("Vela Orn", "country of citizenship", "Norvia")]


def _store(tmp_path, **settings):
    store = open_store(str(tmp_path / "kb.sqlite"), index=False, relation_match="semantic", **settings)
    store.write_many(PERSON)
    return store


def test_the_preposition_tells_birth_date_from_birth_place(tmp_path) -> None:
    """Content words alone make "born on" and "born in" one name; the alias text keeps them apart."""
    store = _store(tmp_path)
    for asked, relation in (("born on", "birth date"), ("born in", "birth place"), ("works for", "employer"),
                            ("nationality", "country of citizenship"), ("when born", "birth date")):
        got = store.read("Vela Orn", asked)
        assert (got.relation, got.rule) == (relation, "relation_alias"), (asked, got.relation, got.rule)
        assert got.relation_score == 1.0


def test_a_relation_the_lexicon_names_otherwise_is_never_the_answer(tmp_path) -> None:
    """MiniLM alone answers "salary" with the employer; the lexicon knows salary is another relation."""
    store = _store(tmp_path)
    embeddings_only = store.with_policy("entity", relation_aliases=False)
    assert embeddings_only.read("Vela Orn", "salary").relation == "employer"
    for asked in ("salary", "religion", "spouse", "death place"):
        got = store.read("Vela Orn", asked)
        assert (got.found, got.value, got.rule) == (False, "unknown", "relation_absent"), (asked, got.relation)


def test_names_outside_the_lexicon_still_go_by_meaning(tmp_path) -> None:
    store = _store(tmp_path)
    store.write("Orl Works", "shipyard count", "4")  # a relation the lexicon does not know
    got = store.read("Orl Works", "number of shipyards")
    assert (got.value, got.rule) == ("4", "relation_semantic")
    assert store.read("Vela Orn", "favourite colour").found is False


def test_groups_by_text_first_then_by_content_words() -> None:
    lexicon = builtin_lexicon()

    def names(relation: str) -> set[str]:
        return {lexicon.groups[g][0] for g in lexicon.groups_of(normalise_text(relation))}

    assert names("born on") == {"birth date"}
    assert names("was born") == {"birth date", "birth place"}  # "was" is a function word: both groups
    assert names("Publication Years") == {"publication year"}
    assert names("located in") == {"headquarters", "country"}  # a firm's or a town's: the entity decides
    assert names("shoe size") == set()
    assert names("distinctions received") == {"award received"}  # less a filler word
    assert names("where they live") == {"residence"}
    # "who" asks for the agent: less the filler words alone, "who published it" read as the publication year
    assert names("who published it") == {"publisher"} and names("who founded it") == {"founder"}
    assert names("person who founded it") == {"founder"}
    assert RelationLexicon((("a b", "c"),)).groups_of("b a") == frozenset({0})


def test_no_name_is_listed_twice_in_one_group() -> None:
    for group in RELATION_ALIASES:
        normalised = [normalise_text(n) for n in group]
        assert len(normalised) == len(set(normalised)), group
