"""`lmlm bench kb` end to end on a tiny store: the import child process, both backends, targets and projection."""

from __future__ import annotations

import json

import pytest

from benchmarks.kb_lookup import _LABELS, TEST_LISTS, run


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
    for suffix in TEST_LISTS:  # each test list's rows, and its paraphrase row among the targets
        for kind in (f"paraphrase_{suffix}", f"absent_{suffix}"):
            assert size["policies"]["entity"][kind]["n"] == 12 and f"| {_LABELS[kind]} | " in markdown
        assert f"| {backend} 240 | {_LABELS[f'paraphrase_{suffix}']} |" in markdown
    assert _LABELS["paraphrase_test3"] == "paraphrased relation right (third test list)"
    assert _LABELS["absent_test3"] == "absent relation rejected (third test names)"


def test_test_sets_ask_a_test_phrasing_for_the_stored_value_and_a_test_name_for_unknown() -> None:
    import random

    from benchmarks.kb_lookup import (HELD_OUT_RELATIONS, RELATIONS, TEST3_ABSENT_RELATIONS, TEST3_RELATIONS,
                                      WORLD_TEST3, phrasing_lists, query_sets, synthetic_triples)

    triples = synthetic_triples(240)
    tests = phrasing_lists()
    assert list(tests) == ["test", "test2", "test3"] and tests["test3"] == (TEST3_RELATIONS, TEST3_ABSENT_RELATIONS)
    assert phrasing_lists(world=True)["test3"] == (WORLD_TEST3, TEST3_ABSENT_RELATIONS)  # the published-database run
    sets = query_sets(triples, ["Nobody Here"], dict(RELATIONS), HELD_OUT_RELATIONS, tests, 24, random.Random(0))
    stored = {(e.lower(), r): v for e, r, v in triples}
    for suffix, (phrasings, absent) in tests.items():
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


@pytest.mark.parametrize("suffix", ["test", "test2", "test3"])
def test_test_phrasings_cover_every_relation_and_repeat_no_name_or_earlier_phrasing(suffix: str) -> None:
    from benchmarks.kb_lookup import (ABSENT_RELATIONS, HELD_OUT_RELATIONS, RELATIONS, TEST_LISTS, WORLD_HELD_OUT,
                                      WORLD_PARAPHRASES)

    dev = dict(RELATIONS)
    lists = list(TEST_LISTS)
    # every stored name, and every phrasing and absent name of the earlier lists, of both stores
    earlier = {*dev, *dev.values(), *WORLD_PARAPHRASES, *WORLD_PARAPHRASES.values(), *ABSENT_RELATIONS,
               *(p for held in (HELD_OUT_RELATIONS, WORLD_HELD_OUT) for ps in held.values() for p in ps)}
    for before in lists[: lists.index(suffix)]:
        synthetic, world, absent = TEST_LISTS[before]
        earlier |= {*absent, *(p for test in (synthetic, world) for ps in test.values() for p in ps)}
    earlier = {p.lower() for p in earlier}
    synthetic, world, absent_names = TEST_LISTS[suffix]
    assert set(synthetic) == set(dev) and set(world) == set(WORLD_PARAPHRASES)
    this: set[str] = set()
    for test in (synthetic, world):
        phrasings = {p.lower() for ps in test.values() for p in ps}
        assert all(len({p.lower() for p in ps}) == 3 for ps in test.values())
        assert len(phrasings) == 3 * len(test)  # one phrasing names one relation: a shared one could not be scored
        assert not phrasings & earlier
        this |= phrasings
    absent = {a.lower() for a in absent_names}
    assert len(absent) == 8 and not absent & (earlier | this)


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
