"""The demo's memory probe: after a delete, a lookup of the deleted fact must not be answered by another fact."""

from __future__ import annotations

from benchmarks.demo import forgotten
from tools.schema import UNKNOWN, FactRecord, LookupResult

PERSON, ASKED, DELETED = "Ada Quill", "birth date", "8 March 1908"


def result(entity: str, relation: str, value: str | None) -> LookupResult:
    """What a lookup of (PERSON, ASKED) returned: ``value`` None is a miss."""
    if value is None:
        return LookupResult(found=False, value=UNKNOWN, entity=PERSON, relation=ASKED, match="miss", namespace="t",
                            query="q")
    return LookupResult(found=True, value=value, entity=entity, relation=relation, fact_id=1, match="semantic",
                        namespace="t", query="q", records=[FactRecord(id=1, entity=entity, relation=relation, value=value)])


def test_unknown_is_the_right_answer() -> None:
    assert forgotten(result(PERSON, ASKED, None), PERSON, ASKED, DELETED)


def test_another_relation_of_the_same_person_is_a_substitution() -> None:
    assert not forgotten(result(PERSON, "birth place", "Lisbon"), PERSON, ASKED, DELETED)


def test_another_persons_fact_and_the_deleted_value_are_wrong() -> None:
    assert not forgotten(result("Ada Quills", ASKED, "2 May 1911"), PERSON, ASKED, DELETED)
    assert not forgotten(result(PERSON, ASKED, DELETED), PERSON, ASKED, DELETED)


def test_the_persons_own_remaining_value_of_that_relation_is_right() -> None:
    assert forgotten(result(PERSON.lower(), "birth_date", "1 June 1900"), PERSON, ASKED, DELETED)
