"""A pure-Python knowledge store held in this process (``open_store("memory://")``).

For tests, notebooks and small worlds: no database, no driver, nothing on disk.
It reads with the entity policy: the entity exactly after normalisation, else the
nearest stored name within one edit (:class:`~tools.lookup.EntityNames`, forgotten
entities refused), then the relation exactly after normalisation among that
entity's rows. Writes follow the SQL store's rules: a single-valued (entity,
relation) keeps one row, replaced in place; a multi-valued one (declared, or
written with ``mode="add"``) a row per distinct value, each with its own id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tools.backends import KnowledgeStore, ReadOnlyStore, Triple, WriteStats
from tools.lookup import EntityNames, LookupPolicy, PolicyName, make_policy, pick_relation
from tools.schema import (MAX_FIELD_CHARS, VALUE_SEPARATOR, CleanTriple, ForgetReceipt, InvalidInput, LookupResult,
                          StoredFact, WriteMode, clean_field, clean_namespace, clean_row, clean_selector, clean_triple,
                          normalise_key, normalise_text, query_keys, split_batch, utcnow)

RELOOKUP_CAP = 20  # re-lookups listed in a forget receipt, as the SQL store


@dataclass
class _Facts:
    """What every namespace view of one memory store shares (guarded by ``lock``)."""

    rows: dict[int, StoredFact] = field(default_factory=dict)  # id -> fact; ids only grow, so dict order is id order
    keys: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (entity_key, relation_key)
    multi: dict[str, dict[str, str]] = field(default_factory=dict)  # namespace -> relation_key -> relation as declared
    forgotten: dict[str, set[str]] = field(default_factory=dict)  # namespace -> deleted entity keys without rows
    names: dict[str, EntityNames] = field(default_factory=dict)  # namespace -> fuzzy-name cache
    generation: int = 0  # moves with every insert and delete: the name caches' freshness
    last_id: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)


class MemoryKnowledgeStore(KnowledgeStore):
    """A :class:`~tools.backends.KnowledgeStore` in a dict. ``policy``: only ``"entity"`` (relations match exactly)."""

    def __init__(
        self,
        *,
        namespace: str = "default",
        policy: PolicyName | LookupPolicy = "entity",
        read_only: bool = False,
        index: bool | None = None,
        relation_match: str | None = None,
        create: bool = True,
        _facts: _Facts | None = None,
        **settings: Any,
    ) -> None:
        # index / relation_match / create are open_store options the other backends take: accepted when they
        # ask for nothing this store cannot do, so one call opens any backend.
        if index not in (None, False) or relation_match not in (None, "exact"):
            raise InvalidInput("the memory backend has no index and matches relations exactly (index=False, relation_match='exact')")
        self.policy = make_policy(policy, settings)
        if self.policy.name != "entity":
            raise InvalidInput("the memory backend reads with the entity policy only")
        self.namespace = clean_namespace(namespace)
        self.read_only = read_only
        self._facts = _facts if _facts is not None else _Facts()

    def with_namespace(self, namespace: str) -> MemoryKnowledgeStore:
        return MemoryKnowledgeStore(namespace=namespace, policy=self.policy, read_only=self.read_only, _facts=self._facts)

    def _ns(self, namespace: str | None) -> str:
        return self.namespace if namespace is None else clean_namespace(namespace)

    # ------------------------------------------------------------------ reads

    def read(self, entity: str, relation: str, *, namespace: str | None = None) -> LookupResult:
        ek, rk = query_keys(entity, relation)
        ns = self._ns(namespace)
        query = dict(namespace=ns, policy=self.policy.name)
        if not ek or not rk:
            return LookupResult.miss(entity, relation, rule="empty_query", **query)
        with self._facts.lock:
            rows = self._entity_rows(ns, ek)
            entity_score, entity_rule = 1.0, "entity_exact"
            if not rows:
                found = self._names(ns).match(ek, self.policy.entity_threshold, self.policy.entity_max_edits)
                if found.entity_key is None:
                    return LookupResult.miss(entity, relation, rule=found.rule, entity_score=found.score, **query)
                rows, entity_score, entity_rule = self._entity_rows(ns, found.entity_key), found.score, found.rule
        by_relation: dict[str, list[StoredFact]] = {}
        for fact in rows:
            by_relation.setdefault(self._facts.keys[fact.id][1], []).append(fact)
        picked = pick_relation(rk, list(by_relation), None, self.policy)
        scores = dict(entity_score=entity_score, relation_score=picked.score)
        if picked.relation_key is None:
            return LookupResult.miss(entity, relation, rule=picked.rule, **scores, **query)
        facts = by_relation[picked.relation_key]
        exact = entity_rule == "entity_exact"
        return LookupResult(
            found=True, value=VALUE_SEPARATOR.join(f.value for f in facts), entity=facts[0].entity, relation=facts[0].relation,
            fact_id=facts[0].id, score=min(entity_score, picked.score), match="exact" if exact else "semantic", source=facts[0].source,
            query=normalise_key(entity, relation), records=[f.record() for f in facts],
            rule="exact" if exact else entity_rule, **scores, **query,
        )

    def _entity_rows(self, ns: str, entity_key: str) -> list[StoredFact]:
        return [f for i, f in self._facts.rows.items() if f.namespace == ns and self._facts.keys[i][0] == entity_key]

    def _names(self, ns: str) -> EntityNames:
        generation = str(self._facts.generation)
        names = self._facts.names.get(ns)
        if names is None or not names.is_current(generation):
            live = sorted({self._facts.keys[i][0] for i, f in self._facts.rows.items() if f.namespace == ns})
            names = self._facts.names[ns] = EntityNames.build(generation, live, sorted(self._facts.forgotten.get(ns, ())))
        return names

    def count(self, *, namespace: str | None = None) -> int:
        ns = self._ns(namespace)
        with self._facts.lock:
            return sum(f.namespace == ns for f in self._facts.rows.values())

    def iter_facts(self, *, namespace: str | None = None) -> Iterator[StoredFact]:
        ns = self._ns(namespace)
        with self._facts.lock:
            facts = [f for f in self._facts.rows.values() if f.namespace == ns]
        return iter(facts)

    def namespaces(self) -> list[str]:
        with self._facts.lock:
            return sorted({f.namespace for f in self._facts.rows.values()})

    def multi_valued(self, *, namespace: str | None = None) -> list[str]:
        ns = self._ns(namespace)
        with self._facts.lock:
            declared = self._facts.multi.get(ns, {})
            return [declared[k] for k in sorted(declared)]

    # ------------------------------------------------------------------ writes

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStore("this store was opened read-only (read_only=True): writes and deletes are refused")

    def declare_multi_valued(self, relations: Iterable[str], *, multi_valued: bool = True,
                             namespace: str | None = None) -> list[str]:
        self._writable()
        ns = self._ns(namespace)
        cleaned = {normalise_text(r): r for r in (clean_field("relation", r, MAX_FIELD_CHARS) for r in relations)}
        with self._facts.lock:
            declared = self._facts.multi.setdefault(ns, {})
            if multi_valued:
                new = {k: r for k, r in cleaned.items() if k not in declared}
                declared.update(new)
                return list(new.values())
            return [declared.pop(k) for k in cleaned if k in declared]

    def write(self, entity: str, relation: str, value: str, source: str | None = None, *,
              namespace: str | None = None, mode: WriteMode | None = None) -> StoredFact:
        ns, row = self._ns(namespace), clean_triple(entity, relation, value, source)
        with self._facts.lock:
            self._upsert(ns, [row], mode)
            return next(f for f in self._pair(ns, row) if f.value == row.value)

    def write_many(self, triples: Iterable[Triple], source: str | None = None, namespace: str | None = None,
                   mode: WriteMode | None = None) -> int:
        return self.upsert_many(triples, source=source, namespace=namespace, mode=mode).written

    def upsert_many(self, triples: Iterable[Triple], *, source: str | None = None, namespace: str | None = None,
                    mode: WriteMode | None = None) -> WriteStats:
        ns = self._ns(namespace)
        rows = [clean_row(n, t, source) for n, t in enumerate(triples)]  # one bad triple stores nothing
        with self._facts.lock:
            return self._upsert(ns, rows, mode)

    def _pair(self, ns: str, row: CleanTriple) -> list[StoredFact]:
        return [f for i, f in self._facts.rows.items() if f.namespace == ns and self._facts.keys[i] == row.pair]

    def _upsert(self, ns: str, rows: list[CleanTriple], mode: WriteMode | None) -> WriteStats:
        self._writable()
        if mode is not None and mode not in ("add", "replace"):
            raise InvalidInput(f"mode must be 'add', 'replace' or None, got {mode!r}")
        todo, duplicates = split_batch(rows, mode, self._facts.multi.get(ns, {}) if mode is None else ())
        inserted = updated = unchanged = removed = 0
        now = utcnow()
        for row, add in todo:
            stored = self._pair(ns, row)
            same = next((f for f in stored if f.value == row.value), None)
            if add or not stored:
                if same is None:
                    self._insert(ns, row, now)
                    inserted += 1
                else:
                    unchanged += 1
                continue
            keep = same or stored[0]  # a replace ends with one row: the one holding the value, else the oldest
            for f in stored:
                if f is not keep:
                    self._remove(f.id)
                    removed += 1
            if same is None:
                self._facts.rows[keep.id] = keep.model_copy(update={"value": row.value, "source": row.source, "updated_at": now})
                updated += 1
            else:
                unchanged += 1
        if inserted or removed:
            self._facts.generation += 1
        return WriteStats(inserted, updated, unchanged, duplicates, removed)

    def _insert(self, ns: str, row: CleanTriple, now: Any) -> None:
        self._facts.last_id += 1
        fact = StoredFact(id=self._facts.last_id, entity=row.entity, relation=row.relation, value=row.value,
                          source=row.source, namespace=ns, created_at=now, updated_at=now)
        self._facts.rows[fact.id] = fact
        self._facts.keys[fact.id] = row.pair
        self._facts.forgotten.get(ns, set()).discard(row.entity_key)

    def _remove(self, fact_id: int) -> None:
        del self._facts.rows[fact_id]
        del self._facts.keys[fact_id]

    def delete(self, *, fact_id: int | None = None, entity: str | None = None, relation: str | None = None,
               namespace: str | None = None) -> ForgetReceipt:
        self._writable()
        ns = self._ns(namespace)
        selector = clean_selector(fact_id, entity, relation)
        with self._facts.lock:
            if "fact_id" in selector:
                chosen = [f for f in self._facts.rows.values() if f.id == selector["fact_id"] and f.namespace == ns]
            else:
                ek = normalise_text(str(selector["entity"]))
                rk = normalise_text(str(selector["relation"])) if "relation" in selector else None
                chosen = [f for i, f in self._facts.rows.items() if f.namespace == ns and self._facts.keys[i][0] == ek
                          and rk in (None, self._facts.keys[i][1])]
            entities = {self._facts.keys[f.id][0] for f in chosen}
            for f in chosen:
                self._remove(f.id)
            live = {self._facts.keys[i][0] for i, f in self._facts.rows.items() if f.namespace == ns}
            self._facts.forgotten.setdefault(ns, set()).update(entities - live)
            if chosen:
                self._facts.generation += 1
            remaining = sum(f.id in self._facts.rows for f in chosen)
        pairs = list(dict.fromkeys((f.entity, f.relation) for f in chosen))[:RELOOKUP_CAP]
        relookups = [self.read(e, r, namespace=ns) for e, r in pairs]
        gone = {f.id for f in chosen}
        return ForgetReceipt(
            namespace=ns, selector=selector, removed=[f.record() for f in chosen],
            index_removed=[], sql_remaining=remaining, index_remaining=None, relookups=relookups,
            verified=remaining == 0 and not any(gone & set(r.fact_ids) for r in relookups), at=utcnow(),
        )

    def describe(self) -> dict[str, Any]:
        return {"db": "memory://", "index": None, "namespace": self.namespace, "policy": self.policy.name,
                "entity_threshold": self.policy.entity_threshold, "entity_max_edits": self.policy.entity_max_edits,
                "relation_match": "exact", "read_only": self.read_only}

    def close(self) -> None:
        """Nothing to release: the facts live as long as some view of them does."""

