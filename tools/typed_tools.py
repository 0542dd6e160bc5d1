"""Typed read / write / delete tools over a :class:`KnowledgeStore`, for agents and LangChain.

The tools fail soft: whatever the arguments (missing, wrong type, empty, too
long) or the store does, the caller gets an observation back, a result model or a
:class:`ToolError`, never an exception into its generation loop.

    obs = read(store, entity="Ada Lovelace", relation="birth year")   # LookupResult | ToolError
    tools = as_langchain_tools(store)                                  # kb_read, kb_write, kb_delete
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tools.schema import MAX_FIELD_CHARS, MAX_SOURCE_CHARS, MAX_VALUE_CHARS, FactRecord, ForgetReceipt, InvalidInput, LookupResult
from tools.backends import KnowledgeStore

if TYPE_CHECKING:
    from langchain_core.tools import StructuredTool

class _Args(BaseModel):
    """Arguments are stripped, so min_length=1 means non-blank; the store applies the other rules (NUL, call tokens)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ReadArgs(_Args):
    """Look up the value of a relation of an entity in the knowledge base."""

    entity: str = Field(min_length=1, max_length=MAX_FIELD_CHARS, description="the entity, e.g. 'Ada Lovelace'")
    relation: str = Field(min_length=1, max_length=MAX_FIELD_CHARS, description="the relation, e.g. 'birth year'")
    namespace: str | None = Field(default=None, description="knowledge-base namespace; the store's own when omitted")


class WriteArgs(_Args):
    """Store (or correct) one fact: the value of a relation of an entity."""

    entity: str = Field(min_length=1, max_length=MAX_FIELD_CHARS)
    relation: str = Field(min_length=1, max_length=MAX_FIELD_CHARS)
    value: str = Field(min_length=1, max_length=MAX_VALUE_CHARS)
    source: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS, description="provenance, e.g. 'doc:12@340'")
    namespace: str | None = None
    mode: Literal["add", "replace"] | None = Field(
        default=None,
        description="'add': keep beside the relation's other values; 'replace': the one value; "
        "omitted: 'add' if the relation is declared multi-valued, else 'replace'",
    )


class DeleteArgs(_Args):
    """Forget facts: by fact_id, by entity (all its relations), or by entity and relation."""

    fact_id: int | None = Field(default=None, ge=1)
    entity: str | None = Field(default=None, min_length=1, max_length=MAX_FIELD_CHARS)
    relation: str | None = Field(default=None, min_length=1, max_length=MAX_FIELD_CHARS)
    namespace: str | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> DeleteArgs:
        if self.fact_id is not None and (self.entity or self.relation):
            raise ValueError("give fact_id alone, or entity with an optional relation")
        if self.fact_id is None and self.entity is None:
            raise ValueError("give fact_id, entity, or entity and relation")
        return self


class WriteResult(BaseModel):
    """A successful write: the stored row and what it replaced (``previous_value`` on an update).

    ``inserted`` is a new row: a first value, or one more value of a multi-valued relation.
    """

    action: Literal["inserted", "updated", "unchanged"]
    fact: FactRecord
    namespace: str
    previous_value: str | None = None


ErrorKind = Literal["invalid_arguments", "refused", "store_error"]


class ToolError(BaseModel):
    """A failed call, as an observation: which tool, what kind of failure, and a message a model can act on."""

    tool: str
    error: ErrorKind
    message: str


Observation = LookupResult | WriteResult | ForgetReceipt | ToolError


def _guarded(tool: str, args_model: type[_Args], body: Callable[[Any], Observation], raw: dict[str, Any]) -> Observation:
    """Validate ``raw`` and run ``body``; every failure becomes a :class:`ToolError`."""
    try:
        args = args_model.model_validate(raw)
    except ValidationError as exc:
        return ToolError(tool=tool, error="invalid_arguments", message=_describe(exc))
    try:
        return body(args)
    except InvalidInput as exc:
        return ToolError(tool=tool, error="refused", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - the contract: nothing escapes into the caller's loop
        return ToolError(tool=tool, error="store_error", message=f"{type(exc).__name__}: {exc}")


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())


def read(store: KnowledgeStore, /, **raw: Any) -> LookupResult | ToolError:
    """Look a fact up with the store's policy; a miss is a result with value 'unknown', not an error."""
    return _guarded("kb_read", ReadArgs, lambda a: store.read(a.entity, a.relation, namespace=a.namespace), raw)


def write(store: KnowledgeStore, /, **raw: Any) -> WriteResult | ToolError:
    """Store a fact: a known single-valued (entity, relation) gets its value replaced (the old value is reported),
    a multi-valued one gets the value added."""

    def body(a: WriteArgs) -> WriteResult:
        before = store.read(a.entity, a.relation, namespace=a.namespace)
        stored = {r.id: r.value for r in before.records} if before.match == "exact" else {}
        fact = store.write(a.entity, a.relation, a.value, a.source, namespace=a.namespace, mode=a.mode)
        previous = stored.get(fact.id)
        action = "inserted" if previous is None else "unchanged" if previous == fact.value else "updated"
        return WriteResult(action=action, fact=fact.record(), namespace=fact.namespace, previous_value=previous)

    return _guarded("kb_write", WriteArgs, body, raw)


def delete(store: KnowledgeStore, /, **raw: Any) -> ForgetReceipt | ToolError:
    """Forget facts and return the receipt (removed rows, index removal, re-lookups)."""
    return _guarded(
        "kb_delete",
        DeleteArgs,
        lambda a: store.delete(fact_id=a.fact_id, entity=a.entity, relation=a.relation, namespace=a.namespace),
        raw,
    )


def observation_json(obs: Observation) -> str:
    """The JSON a model sees: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...}``."""
    if isinstance(obs, ToolError):
        return json.dumps({"ok": False, "error": obs.model_dump(mode="json")}, ensure_ascii=False)
    return json.dumps({"ok": True, "result": obs.model_dump(mode="json")}, ensure_ascii=False)


def as_langchain_tools(store: KnowledgeStore) -> list[StructuredTool]:
    """``kb_read``, ``kb_write``, ``kb_delete`` as StructuredTools: JSON content, the typed model as artifact."""
    from langchain_core.tools import StructuredTool

    def make(name: str, fn: Callable[..., Observation], args_model: type[_Args]) -> StructuredTool:
        def run(**kwargs: Any) -> tuple[str, Observation]:
            obs = fn(store, **kwargs)
            return observation_json(obs), obs

        def invalid(exc: Exception) -> str:
            message = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
            return observation_json(ToolError(tool=name, error="invalid_arguments", message=message))

        return StructuredTool.from_function(
            func=run,
            name=name,
            description=(args_model.__doc__ or name).strip(),
            args_schema=args_model,
            response_format="content_and_artifact",
            handle_validation_error=invalid,
        )

    return [make("kb_read", read, ReadArgs), make("kb_write", write, WriteArgs), make("kb_delete", delete, DeleteArgs)]
