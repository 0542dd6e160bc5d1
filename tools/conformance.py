"""The tests every knowledge backend must pass, as a base class (the way langchain-tests checks chat models).

    from tools.conformance import KnowledgeStoreConformance

    class TestMyBackend(KnowledgeStoreConformance):
        @pytest.fixture
        def store(self):
            s = open_store("mykv://...", namespace=f"t-{uuid.uuid4().hex[:8]}")
            yield s
            s.close()

A read-only backend sets ``read_only = True`` and overrides the ``writer`` fixture
with a writable store its reads see (e.g. the store behind the server it reads from);
its own writes and deletes must then be refused with
:class:`~tools.backends.ReadOnlyStore`. Every test uses the store's own namespace, so
a shared database is never cleared. Needs pytest (a test dependency), imported only here.
"""

from __future__ import annotations

import pytest

from tools.backends import KnowledgeStore, ReadOnlyStore
from tools.schema import UNKNOWN, VALUE_SEPARATOR, FactRecord, ForgetReceipt, InvalidInput, Lookup, LookupResult, StoredFact

PLAIN_RECORDS = (StoredFact, FactRecord, LookupResult, ForgetReceipt)


def _assert_plain(obj: object) -> None:
    """One of the protocol's records, never a database row (a SQLModel / SQLAlchemy object)."""
    assert type(obj) in PLAIN_RECORDS, f"{type(obj).__module__}.{type(obj).__name__} is not a plain record"
    assert not any(c.__module__.startswith(("sqlmodel", "sqlalchemy")) for c in type(obj).__mro__)


class KnowledgeStoreConformance:
    """Subclass it and provide the ``store`` fixture (a fresh namespace of the backend under test)."""

    read_only = False

    @pytest.fixture
    def store(self) -> KnowledgeStore:
        raise NotImplementedError("a conformance subclass provides the `store` fixture")

    @pytest.fixture
    def writer(self, store: KnowledgeStore) -> KnowledgeStore:
        """Where the tests write their facts: the store itself, unless it only reads."""
        return store

    def test_is_a_knowledge_store_and_a_lookup(self, store: KnowledgeStore) -> None:
        assert isinstance(store, KnowledgeStore) and isinstance(store, Lookup)

    def test_write_then_exact_read_with_provenance(self, store: KnowledgeStore, writer: KnowledgeStore) -> None:
        fact = writer.write("Ada Lovelace", "birth year", "1815", source="doc:12@340")
        _assert_plain(fact)
        assert (fact.entity, fact.relation, fact.value, fact.source) == ("Ada Lovelace", "birth year", "1815", "doc:12@340")
        hit = store.read("ada lovelace", "Birth_Year")  # the key is normalised: case, underscores, spaces
        _assert_plain(hit)
        assert hit.found and hit.match == "exact" and hit.value == "1815"
        assert (hit.fact_id, hit.source, hit.entity, hit.relation) == (fact.id, "doc:12@340", "Ada Lovelace", "birth year")
        assert [r.id for r in hit.records] == [fact.id]
        _assert_plain(hit.records[0])

    def test_unknown_entity_is_unknown(self, store: KnowledgeStore, writer: KnowledgeStore) -> None:
        writer.write("Ada Lovelace", "birth year", "1815")
        miss = store.read("Grace Hopper", "birth year")
        _assert_plain(miss)
        assert not miss.found and miss.match == "miss" and miss.value == UNKNOWN
        assert miss.fact_id is None and miss.records == []
        assert (miss.entity, miss.relation) == ("Grace Hopper", "birth year")

    def test_a_typo_in_the_entity_is_forgiven_but_never_leads_to_a_forgotten_one(
        self, store: KnowledgeStore, writer: KnowledgeStore
    ) -> None:
        fact = writer.write("Geri Halliwell", "birthplace", "Watford")
        writer.write("Geri Haliwall", "birthplace", "Leeds")  # also one edit from the typo below, but a shorter name
        typo = store.read("Geri Haliwell", "birthplace")
        assert (typo.value, typo.fact_id, typo.match, typo.rule) == ("Watford", fact.id, "semantic", "entity_fuzzy")
        writer.delete(entity="Geri Halliwell")
        assert store.read("Geri Haliwell", "birthplace").value == UNKNOWN  # not the neighbour's Leeds

    def test_known_entity_without_the_relation_is_unknown(self, store: KnowledgeStore, writer: KnowledgeStore) -> None:
        writer.write("Ada Lovelace", "birth year", "1815")
        assert store.read("Ada Lovelace", "shoe size").value == UNKNOWN

    def test_rewrite_replaces_the_value_under_the_same_id(self, store: KnowledgeStore, writer: KnowledgeStore) -> None:
        first = writer.write("Ada Lovelace", "birth year", "1816")
        second = writer.write("Ada Lovelace", "birth year", "1815")
        assert second.id == first.id and store.read("Ada Lovelace", "birth year").value == "1815"

    def test_several_values_come_together_in_id_order_each_with_its_id(
        self, store: KnowledgeStore, writer: KnowledgeStore
    ) -> None:
        writer.declare_multi_valued(["daughter"])
        written = [writer.write("Geri Halliwell", "daughter", v, source=f"doc:{n}") for n, v in enumerate(["Bluebell", "Olivia"])]
        again = writer.write("Geri Halliwell", "daughter", "Olivia")  # the same value twice is one row
        hit = store.read("geri halliwell", "daughter")
        assert again.id == written[1].id
        assert hit.found and hit.value == VALUE_SEPARATOR.join(["Bluebell", "Olivia"])
        assert [(r.id, r.value, r.source) for r in hit.records] == [(f.id, f.value, f.source) for f in written]
        assert written[0].id < written[1].id and hit.fact_id == written[0].id
        for record in hit.records:
            _assert_plain(record)

    def test_delete_gives_a_receipt_then_unknown(self, store: KnowledgeStore, writer: KnowledgeStore) -> None:
        kept = writer.write("Alan Turing", "birthplace", "London")
        gone = writer.write("Ada Lovelace", "birth year", "1815")
        if self.read_only:
            with pytest.raises(ReadOnlyStore):
                store.delete(entity="Ada Lovelace")
        receipt = writer.delete(entity="Ada Lovelace")
        _assert_plain(receipt)
        assert [r.id for r in receipt.removed] == [gone.id] and receipt.verified
        assert store.read("Ada Lovelace", "birth year").value == UNKNOWN
        assert store.read("Alan Turing", "birthplace").fact_id == kept.id
        assert writer.delete(fact_id=gone.id).removed == []  # deleting what is not there removes nothing

    def test_ambiguous_deletes_are_refused(self, store: KnowledgeStore) -> None:
        with pytest.raises(InvalidInput):
            store.delete(relation="birth year")  # across every entity: refused, not guessed

    def test_facts_are_listed_in_id_order_as_plain_records(self, store: KnowledgeStore, writer: KnowledgeStore) -> None:
        written = [writer.write(e, r, v) for e, r, v in [("B", "r", "1"), ("A", "r", "2"), ("C", "s", "3")]]
        listed = list(store.iter_facts())
        assert [f.id for f in listed] == [f.id for f in written] and store.count() == 3
        for fact in listed:
            _assert_plain(fact)
            assert fact.namespace == store.namespace
        assert store.namespace in store.namespaces()

    def test_namespaces_do_not_see_each_other(self, store: KnowledgeStore, writer: KnowledgeStore) -> None:
        other = f"{store.namespace}-other"
        writer.write("Ada Lovelace", "birth year", "1900", namespace=other)
        assert store.read("Ada Lovelace", "birth year").value == UNKNOWN and store.count() == 0
        assert store.read("Ada Lovelace", "birth year", namespace=other).value == "1900"
        assert store.with_namespace(other).read("Ada Lovelace", "birth year").value == "1900"

    def test_bad_writes_are_refused_before_anything_is_stored(self, store: KnowledgeStore, writer: KnowledgeStore) -> None:
        with pytest.raises(InvalidInput):
            writer.write_many([("Ada Lovelace", "birth year", "1815"), ("", "r", "v")])
        assert writer.count() == 0

    def test_a_read_only_store_refuses_every_change(self, store: KnowledgeStore) -> None:
        if not self.read_only:
            pytest.skip("this backend writes")
        for change in (lambda: store.write("Ada Lovelace", "birth year", "1815"),
                       lambda: store.write_many([("Ada Lovelace", "birth year", "1815")]),
                       lambda: store.declare_multi_valued(["daughter"]),
                       lambda: store.delete(entity="Ada Lovelace")):
            with pytest.raises(ReadOnlyStore, match="read"):
                change()

