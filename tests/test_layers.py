"""The layer rules of docs/ARCHITECTURE.md, checked on the import statements of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"tools", "lmlm_agent", "training", "benchmarks"}
# package -> packages of ours it must never import
FORBIDDEN = {
    "tools": {"lmlm_agent", "training", "benchmarks"},
    "lmlm_agent": {"training", "benchmarks"},
    "training": {"benchmarks"},
    "benchmarks": set(),
}
FRONT_DOOR = ("lmlm_agent/cli/", "lmlm_agent/server.py")


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


def modules():
    for package in FORBIDDEN:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if not rel.startswith(FRONT_DOOR):
                yield package, rel


@pytest.mark.parametrize("package,rel", list(modules()))
def test_module_respects_layers(package: str, rel: str) -> None:
    bad = imported_packages(REPO / rel) & FORBIDDEN[package]
    assert not bad, f"{rel} imports {sorted(bad)}, which the layer rules forbid for {package}/"


def test_tools_does_not_pull_in_torch_or_trainers() -> None:
    for path in (REPO / "tools").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for heavy in ("import trl", "from trl", "import transformers", "from transformers"):
            assert heavy not in text, f"{path.name}: the knowledge layer must not import a model or trainer"


def test_cli_help_is_fast_and_lazy() -> None:
    import subprocess
    import sys

    code = "import sys, lmlm_agent.cli; print(sorted(m for m in ('torch','transformers','trl','chromadb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing the CLI pulled in heavy modules: {out}"


def test_server_is_an_adapter_over_the_agent_without_langchain() -> None:
    """The HTTP server sits on LMLMAgent directly; LangChain is ChatLMLM's business only."""
    import subprocess
    import sys

    tree = ast.parse((REPO / "lmlm_agent" / "server.py").read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {n for n in names if n.split(".")[0].startswith("langchain") or n == "lmlm_agent.chat_model"}
    code = "import sys, lmlm_agent.server, tools.typed_tools; print(sorted(m for m in sys.modules if m.startswith('langchain')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
    assert out == "[]", f"importing the server pulled in {out}"
