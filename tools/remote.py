"""A read-only knowledge store answering from another ``lmlm serve``'s knowledge API (``open_store("http://host:port")``).

    store = open_store("http://127.0.0.1:8000", namespace="team", token="...")   # token: a private namespace's
    store.read("Ada Lovelace", "birth year")   # GET /v1/knowledge/team/lookup: the remote store's policy decides
    store.iter_facts(), store.count()          # GET /v1/knowledge/team/facts, paged

Lookups, listings and counts go over HTTP; every write and delete is refused with
:class:`~tools.backends.ReadOnlyStore` (change the facts on the server that holds them).
The knowledge API lists neither namespaces nor multi-valued relations: ``namespaces()``
is the store's own namespace when it holds facts, ``multi_valued()`` is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from tools.backends import KnowledgeStore, ReadOnlyStore, Triple, WriteStats
from tools.lookup import LookupPolicy
from tools.schema import ForgetReceipt, InvalidInput, LookupResult, StoredFact, WriteMode, clean_namespace, query_keys

PAGE = 1_000  # facts per listing request (the server's largest page)
TIMEOUT_S = 30.0


class RemoteKnowledgeStore(KnowledgeStore):
    """A :class:`~tools.backends.KnowledgeStore` over HTTP, reading only. ``url``: the server's base URL."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "default",
        token: str | None = None,
        timeout_s: float = TIMEOUT_S,
        create: bool = False,
        read_only: bool = True,
        index: bool | None = None,
        policy: str | LookupPolicy | None = None,
        relation_match: str | None = None,
        _client: httpx.Client | None = None,
    ) -> None:
        # create / read_only / index / policy / relation_match are open_store options of the other backends: a
        # remote store never creates anything, always only reads, and its server decides how it matches, so
        # only values that ask nothing of it are taken (index=False, the default policy).
        del create, read_only
        if index not in (None, False):
            raise InvalidInput("a remote store reads with its server's index and policy; give no index")
        if policy not in (None, "entity", LookupPolicy()) or relation_match is not None:
            raise InvalidInput("a remote store reads with its server's policy; set the policy on the server")
        self.url = url.rstrip("/")
        self.namespace = clean_namespace(namespace)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = _client or httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def with_namespace(self, namespace: str) -> RemoteKnowledgeStore:
        return RemoteKnowledgeStore(self.url, namespace=namespace, _client=self._client)

    def _path(self, namespace: str | None, route: str) -> str:
        ns = self.namespace if namespace is None else clean_namespace(namespace)
        return f"/v1/knowledge/{quote(ns, safe='/:@')}/{route}"

    def _get(self, path: str, **params: Any) -> Any:
        response = self._client.get(path, params=params)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            error = f"{self.url}{path}: {response.status_code} {message}"
            if response.status_code < 500:
                raise InvalidInput(error)  # bad input, or a private namespace without its token
            raise ConnectionError(error)
        return response.json()

    def read(self, entity: str, relation: str, *, namespace: str | None = None) -> LookupResult:
        query_keys(entity, relation)  # refuses non-strings before a request is made
        return LookupResult.model_validate(self._get(self._path(namespace, "lookup"), entity=entity, relation=relation))

    def _page(self, namespace: str | None, offset: int, limit: int) -> dict[str, Any]:
        return self._get(self._path(namespace, "facts"), offset=offset, limit=limit)

    def count(self, *, namespace: str | None = None) -> int:
        return int(self._page(namespace, 0, 1)["total"])

    def iter_facts(self, *, namespace: str | None = None) -> Iterator[StoredFact]:
        offset = 0
        while True:
            page = self._page(namespace, offset, PAGE)
            yield from (StoredFact(**row, namespace=page["namespace"]) for row in page["data"])
            if len(page["data"]) < PAGE:
                return
            offset += PAGE

    def namespaces(self) -> list[str]:
        return [self.namespace] if self.count() else []

    def multi_valued(self, *, namespace: str | None = None) -> list[str]:
        raise InvalidInput(f"{self.url}: the knowledge API does not list multi-valued relations")

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise ReadOnlyStore(f"{self.url} is a remote knowledge store, read only: write or delete on the server that holds it")

    def write(self, entity: str, relation: str, value: str, source: str | None = None, *,
              namespace: str | None = None, mode: WriteMode | None = None) -> StoredFact:
        return self._refuse()

    def write_many(self, triples: Iterable[Triple], source: str | None = None, namespace: str | None = None,
                   mode: WriteMode | None = None) -> int:
        return self._refuse()

    def upsert_many(self, triples: Iterable[Triple], *, source: str | None = None, namespace: str | None = None,
                    mode: WriteMode | None = None) -> WriteStats:
        return self._refuse()

    def declare_multi_valued(self, relations: Iterable[str], *, multi_valued: bool = True,
                             namespace: str | None = None) -> list[str]:
        return self._refuse()

    def delete(self, *, fact_id: int | None = None, entity: str | None = None, relation: str | None = None,
               namespace: str | None = None) -> ForgetReceipt:
        return self._refuse()

    def describe(self) -> dict[str, Any]:
        return {"db": self.url, "index": None, "namespace": self.namespace, "policy": "remote", "read_only": True}

    def close(self) -> None:
        self._client.close()
