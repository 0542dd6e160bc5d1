"""langchain-tests' ChatModelIntegrationTests on a real (micro, trained once per test run) LMLM checkpoint.

Measured on this code: see docs/runtime.md (ChatLMLM) for the pass/skip counts.
Tool calling, structured output, JSON mode and multimodal inputs are declared off
(they are skipped, as the flags say); everything else runs against the checkpoint.
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from runtime_fakes import train_micro_chat_model

from lmlm_agent.chat_model import ChatLMLM

# The suite's async tests (ainvoke, astream, abatch) run on asyncio through the anyio plugin.
pytestmark = pytest.mark.anyio

_TRAINED: dict[str, str] = {}


@pytest.fixture(scope="session", autouse=True)
def micro_chat_checkpoint(tmp_path_factory) -> str:
    """A micro LMLM trained for a few seconds on one-line QA drills, once per test run."""
    if "path" not in _TRAINED:
        path, _ = train_micro_chat_model(tmp_path_factory.mktemp("micro-chat") / "lmlm")
        _TRAINED["path"] = str(path)
    return _TRAINED["path"]


class TestChatLMLMIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatLMLM]:
        return ChatLMLM

    @property
    def chat_model_params(self) -> dict:
        return {"model": _TRAINED["path"], "temperature": 0, "max_tokens": 12}

    @property
    def has_tool_calling(self) -> bool:
        return False  # it never returns tool_calls (the kb read happens inside its text)

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": [], "stream": []}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
