"""Typed tools: results on success, a ToolError observation (never an exception) on any failure."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import StructuredTool

from tools import SQLKnowledgeStore, open_store
from tools.schema import ForgetReceipt, LookupResult
from tools.typed_tools import ToolError, WriteResult, as_langchain_tools, delete, read, write


@pytest.fixture
def store() -> Iterator[SQLKnowledgeStore]:
    s = open_store(index=False)
    s.write("Ada Lovelace", "birth year", "1815", source="doc:1")
    yield s
    s.close()


def test_read_write_delete_return_typed_results(store: SQLKnowledgeStore) -> None:
    got = read(store, entity="ada lovelace", relation="birth_year")
    assert isinstance(got, LookupResult) and (got.match, got.value, got.source) == ("exact", "1815", "doc:1")
    made = write(store, entity="Alan Turing", relation="birthplace", value="London", source="doc:2")
    assert isinstance(made, WriteResult) and (made.action, made.previous_value) == ("inserted", None)
    fixed = write(store, entity="Ada Lovelace", relation="birth year", value="1816")
    assert (fixed.action, fixed.previous_value, fixed.fact.value) == ("updated", "1815", "1816")
    same = write(store, entity="ada lovelace", relation="birth year", value="1816")
    assert (same.action, same.fact.id) == ("unchanged", fixed.fact.id)
    gone = delete(store, entity="Alan Turing")
    assert isinstance(gone, ForgetReceipt) and gone.count == 1 and gone.verified
    assert read(store, entity="Alan Turing", relation="birthplace").match == "miss"


@pytest.mark.parametrize(
    "tool,args,fragment",
    [
        (read, {"entity": "Ada"}, "relation: Field required"),
        (read, {"entity": 5, "relation": "x"}, "entity: Input should be a valid string"),
        (read, {"entity": "   ", "relation": "x"}, "entity: String should have at least 1 character"),
        (read, {"entity": "Ada", "relation": "x", "limit": 3}, "limit: Extra inputs are not permitted"),
        (write, {"entity": "Ada", "relation": "born"}, "value: Field required"),
        (write, {"entity": "Ada", "relation": "born", "value": "x" * 20_000}, "value: String should have at most"),
        (delete, {}, "give fact_id, entity"),
        (delete, {"fact_id": 1, "entity": "Ada"}, "fact_id alone"),
        (delete, {"fact_id": "one"}, "fact_id: Input should be a valid integer"),
    ],
)
def test_bad_arguments_become_invalid_argument_observations(store: SQLKnowledgeStore, tool, args, fragment) -> None:
    obs = tool(store, **args)
    assert isinstance(obs, ToolError) and obs.error == "invalid_arguments"
    assert fragment in obs.message
    assert store.count() == 1 and store.read("Ada Lovelace", "birth year").value == "1815"


def test_store_refusals_and_failures_are_observations(store: SQLKnowledgeStore) -> None:
    refused = write(store, entity="Ada\x00", relation="born", value="1815")
    assert isinstance(refused, ToolError) and refused.error == "refused" and "NUL" in refused.message
    bad_ns = read(store, entity="Ada", relation="born", namespace="no spaces allowed")
    assert isinstance(bad_ns, ToolError) and bad_ns.error == "refused"

    class Broken:
        namespace = "default"

        def read(self, *args, **kwargs):
            raise RuntimeError("database went away")

    failed = read(Broken(), entity="Ada", relation="born")  # type: ignore[arg-type]
    assert isinstance(failed, ToolError) and failed.error == "store_error" and "database went away" in failed.message


def test_langchain_tools_return_json_content_and_typed_artifacts(store: SQLKnowledgeStore) -> None:
    tools = {t.name: t for t in as_langchain_tools(store)}
    assert set(tools) == {"kb_read", "kb_write", "kb_delete"}
    assert all(isinstance(t, StructuredTool) for t in tools.values())
    assert set(tools["kb_write"].args) == {"entity", "relation", "value", "source", "namespace", "mode"}

    content = json.loads(tools["kb_read"].invoke({"entity": "Ada Lovelace", "relation": "birth year"}))
    assert content["ok"] and content["result"]["value"] == "1815" and content["result"]["match"] == "exact"

    call = {"name": "kb_write", "args": {"entity": "Grace Hopper", "relation": "rank", "value": "Rear admiral"},
            "id": "call-1", "type": "tool_call"}
    msg = tools["kb_write"].invoke(call)
    assert isinstance(msg, ToolMessage) and isinstance(msg.artifact, WriteResult) and msg.artifact.action == "inserted"
    assert store.read("grace hopper", "rank").value == "Rear admiral"


def test_langchain_validation_errors_do_not_raise(store: SQLKnowledgeStore) -> None:
    tools = {t.name: t for t in as_langchain_tools(store)}
    call = {"name": "kb_read", "args": {"entity": "Ada"}, "id": "call-2", "type": "tool_call"}
    msg = tools["kb_read"].invoke(call)
    body = json.loads(msg.content)
    assert msg.status == "error" and body["ok"] is False and body["error"]["error"] == "invalid_arguments"
    refused = json.loads(tools["kb_delete"].invoke({"relation": "birth year"}))
    assert refused["ok"] is False and "entity" in refused["error"]["message"]
    assert store.count() == 1
