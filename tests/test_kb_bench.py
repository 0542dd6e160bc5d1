"""`lmlm bench kb` end to end on a tiny store: the import child process, both backends, targets and projection."""

from __future__ import annotations

import json

import pytest

from benchmarks.kb_lookup import run


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_kb_bench_imports_measures_and_judges_a_small_store(tmp_path, request, backend: str) -> None:
    pg_url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    report = run(tmp_path, sizes=(240,), queries=12, world_entities=0, backends=(backend,), pg_url=pg_url, index_limit=0)
    (size,) = report["sizes"]
    assert size["backend"] == backend and size["import"]["inserted"] == 240 and size["import"]["peak_rss_mb"] > 0
    assert size["index_build"] is None and set(size["policies"]) == {"entity"}  # above index_limit: no index
    assert size["policies"]["entity"]["exact"]["rate"] == 1.0
    assert size["policies"]["entity"]["unknown"]["rate"] == 1.0
    saved = json.loads((tmp_path / "kb_lookup.json").read_text())
    assert saved["sizes"][0]["triples"] == 240
    markdown = (tmp_path / "kb_lookup.md").read_text()
    assert f"{backend}: import" in markdown and "not indexed" in markdown
    assert f"| {backend} 240 | exact p50 ms (wall) |" in markdown
    assert f"| {backend} 240 | paraphrased relation right (held-out phrasings) |" in markdown
    assert f"| {backend} 240 | paraphrased relation right (test phrasings) |" in markdown
    assert f"| {backend} 240 | paraphrased relation right (second test list) |" in markdown
    for kind, label in (("paraphrase_test", "paraphrased relation right (test phrasings)"),
                        ("absent_test", "absent relation rejected (test names)"),
                        ("paraphrase_test2", "paraphrased relation right (second test list)"),
                        ("absent_test2", "absent relation rejected (second test names)")):
        assert size["policies"]["entity"][kind]["n"] == 12 and f"| {label} | " in markdown


def test_test_sets_ask_a_test_phrasing_for_the_stored_value_and_a_test_name_for_unknown() -> None:
    import random

    from benchmarks.kb_lookup import (HELD_OUT_RELATIONS, RELATIONS, TEST2_ABSENT_RELATIONS, TEST2_RELATIONS,
                                      TEST_ABSENT_RELATIONS, TEST_RELATIONS, query_sets, synthetic_triples)

    triples = synthetic_triples(240)
    sets = query_sets(triples, ["Nobody Here"], dict(RELATIONS), HELD_OUT_RELATIONS, TEST_RELATIONS, TEST2_RELATIONS,
                      24, random.Random(0))
    stored = {(e.lower(), r): v for e, r, v in triples}
    for suffix, phrasings, absent in (("test", TEST_RELATIONS, TEST_ABSENT_RELATIONS),
                                      ("test2", TEST2_RELATIONS, TEST2_ABSENT_RELATIONS)):
        assert len(sets[f"paraphrase_{suffix}"]) == 24 and len(sets[f"absent_{suffix}"]) == 24
        for e, phrasing, v in sets[f"paraphrase_{suffix}"]:
            (relation,) = [r for r, ps in phrasings.items() if phrasing in ps]
            assert stored[e, relation] == v
        assert all(v is None and r in absent for _, r, v in sets[f"absent_{suffix}"])


def test_held_out_phrasings_cover_every_relation_and_repeat_no_dev_one() -> None:
    from benchmarks.kb_lookup import HELD_OUT_RELATIONS, RELATIONS, WORLD_HELD_OUT, WORLD_PARAPHRASES
    from benchmarks.world import RELATION_BY_NAME

    for held, dev in ((HELD_OUT_RELATIONS, dict(RELATIONS)), (WORLD_HELD_OUT, WORLD_PARAPHRASES)):
        assert set(held) == set(dev) and all(len(set(p)) == 2 for p in held.values())
        assert not {p for r, ps in held.items() for p in ps} & ({*dev.values()} | set(dev))
    assert set(WORLD_HELD_OUT) == set(RELATION_BY_NAME)


def test_test_phrasings_cover_every_relation_and_repeat_no_name_or_earlier_phrasing() -> None:
    from benchmarks.kb_lookup import (ABSENT_RELATIONS, HELD_OUT_RELATIONS, RELATIONS, TEST_ABSENT_RELATIONS,
                                      TEST_RELATIONS, WORLD_HELD_OUT, WORLD_PARAPHRASES, WORLD_TEST)

    dev = dict(RELATIONS)
    earlier = {*dev, *dev.values(), *WORLD_PARAPHRASES, *WORLD_PARAPHRASES.values(),
               *(p for held in (HELD_OUT_RELATIONS, WORLD_HELD_OUT) for ps in held.values() for p in ps)}
    earlier = {p.lower() for p in earlier}
    assert set(TEST_RELATIONS) == set(dev) and set(WORLD_TEST) == set(WORLD_PARAPHRASES)
    for test in (TEST_RELATIONS, WORLD_TEST):
        assert all(len({p.lower() for p in ps}) == 3 for ps in test.values())
        assert not {p.lower() for ps in test.values() for p in ps} & earlier
        # one phrasing names one relation: a phrasing shared by two relations could not be scored
        assert len({p.lower() for ps in test.values() for p in ps}) == 3 * len(test)
    absent = {a.lower() for a in TEST_ABSENT_RELATIONS}
    assert len(absent) == 8 and not absent & {a.lower() for a in ABSENT_RELATIONS}
    assert not absent & (earlier | {p.lower() for test in (TEST_RELATIONS, WORLD_TEST) for ps in test.values() for p in ps})


def test_second_test_phrasings_cover_every_relation_and_repeat_no_name_or_earlier_phrasing() -> None:
    from benchmarks.kb_lookup import (ABSENT_RELATIONS, HELD_OUT_RELATIONS, RELATIONS, TEST2_ABSENT_RELATIONS,
                                      TEST2_RELATIONS, TEST_ABSENT_RELATIONS, TEST_RELATIONS, WORLD_HELD_OUT,
                                      WORLD_PARAPHRASES, WORLD_TEST, WORLD_TEST2)

    dev = dict(RELATIONS)
    # every stored name, and every phrasing and absent name of the earlier lists, of both stores
    earlier = {*dev, *dev.values(), *WORLD_PARAPHRASES, *WORLD_PARAPHRASES.values(), *ABSENT_RELATIONS,
               *TEST_ABSENT_RELATIONS,
               *(p for lists in (HELD_OUT_RELATIONS, WORLD_HELD_OUT, TEST_RELATIONS, WORLD_TEST)
                 for ps in lists.values() for p in ps)}
    earlier = {p.lower() for p in earlier}
    assert set(TEST2_RELATIONS) == set(dev) and set(WORLD_TEST2) == set(WORLD_PARAPHRASES)
    second: set[str] = set()
    for test2 in (TEST2_RELATIONS, WORLD_TEST2):
        phrasings = {p.lower() for ps in test2.values() for p in ps}
        assert all(len({p.lower() for p in ps}) == 3 for ps in test2.values())
        assert len(phrasings) == 3 * len(test2)  # one phrasing names one relation
        assert not phrasings & earlier
        second |= phrasings
    absent = {a.lower() for a in TEST2_ABSENT_RELATIONS}
    assert len(absent) == 8 and not absent & (earlier | second)


def test_a_stopped_run_keeps_the_figures_of_every_store_it_finished(tmp_path, monkeypatch) -> None:
    import benchmarks.kb_lookup as kb

    measure = kb.bench_size

    def stopped_at_the_second_size(n, *args, **kwargs):
        if n > 120:
            raise KeyboardInterrupt  # Ctrl-C during the second store
        return measure(n, *args, **kwargs)

    monkeypatch.setattr(kb, "bench_size", stopped_at_the_second_size)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, sizes=(120, 240), queries=12, world_entities=0, index_limit=0)
    saved = json.loads((tmp_path / "kb_lookup.json").read_text())
    assert [s["triples"] for s in saved["sizes"]] == [120] and saved["finished"] is False
    markdown = (tmp_path / "kb_lookup.md").read_text()
    assert "| sqlite 120 | exact p50 ms (wall) |" in markdown and "Partial" in markdown
    assert not list(tmp_path.glob(".kb_lookup.*.tmp"))
