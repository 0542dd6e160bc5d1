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
# The front door's exception, module by module: what each command module may reach beyond lmlm_agent/ and tools/,
# and why. The commands call public entry points there and only parse arguments and print; the rest of the
# CLI (errors, options, serve/chat, the group itself) and the server keep lmlm_agent's rule.
FRONT_DOOR = {
    "lmlm_agent/cli/annotate.py": ({"training"}, "makes, runs and scores annotators (training.annotator_run)"),
    "lmlm_agent/cli/bench.py": ({"benchmarks"}, "runs the benchmarks (benchmarks.run_all, kb_lookup, *_speed)"),
    "lmlm_agent/cli/demo.py": ({"benchmarks"}, "runs the demo's stages (benchmarks.demo) and prints its table"),
    "lmlm_agent/cli/evaluate.py": ({"training"}, "perplexity of checkpoints (training.perplexity)"),
    "lmlm_agent/cli/kb.py": ({"training"}, "`kb ingest` loads an annotator of any kind (training.annotators)"),
    "lmlm_agent/cli/teacher.py": ({"training"}, "serves and queries the teacher (training.teacher, teacher_server)"),
    "lmlm_agent/cli/tofu.py": ({"benchmarks"}, "runs the TOFU protocol (benchmarks.tofu_run)"),
    "lmlm_agent/cli/train.py": ({"training"}, "pretrains and fine-tunes (training.pretrain, finetune)"),
}


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
            yield package, path.relative_to(REPO).as_posix()


@pytest.mark.parametrize("package,rel", list(modules()))
def test_module_respects_layers(package: str, rel: str) -> None:
    allowed = FRONT_DOOR.get(rel, (set(), ""))[0]
    bad = imported_packages(REPO / rel) & FORBIDDEN[package] - allowed
    assert not bad, f"{rel} imports {sorted(bad)}, which the layer rules forbid for {package}/"


@pytest.mark.parametrize("rel", sorted(FRONT_DOOR))
def test_front_door_exception_is_needed_and_public(rel: str) -> None:
    """Each exception is used (else it goes), and through public names only (no ``_private`` of another layer)."""
    allowed, _ = FRONT_DOOR[rel]
    assert (REPO / rel).is_file(), f"FRONT_DOOR names {rel}, which is gone: remove its exception"
    assert imported_packages(REPO / rel) & allowed == allowed, f"{rel} no longer needs {sorted(allowed)}: narrow FRONT_DOOR"
    tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
    private = [f"{node.module}.{alias.name}" for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in allowed
               for alias in node.names
               if alias.name.startswith("_") or alias.name not in public_names(node.module, alias.name)]
    assert not private, f"{rel} reaches past the public entry points: {private}"


def public_names(module: str, name: str) -> set[str]:
    """What ``module`` exports: its ``__all__`` when it declares one, else every name (a submodule included)."""
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = REPO / module.replace(".", "/") / "__init__.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return {name}


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
