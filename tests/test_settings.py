"""One configuration path (tools.settings): a dataclass with help texts -> YAML, environment, --set and CLI options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tools.settings import load_settings, settings_help


@dataclass
class Example:
    rate: float = field(default=0.1, metadata={"help": "A learning rate."})
    steps: int = field(default=10, metadata={"help": "How many steps."})
    name: str | None = field(default=None, metadata={"help": "A name.", "env": "LMLM_TEST_EXAMPLE_NAME"})
    paths: list[Path] = field(default_factory=list, metadata={"help": "Some files."})


def test_each_layer_overrides_the_one_before(tmp_path, monkeypatch) -> None:
    path = tmp_path / "example.yaml"
    path.write_text("rate: 5e-4\nsteps: 20\nname: from-file\n")  # YAML 1.1 reads 5e-4 as a string: coerced
    assert load_settings(Example, path) == Example(rate=5e-4, steps=20, name="from-file")
    monkeypatch.setenv("LMLM_TEST_EXAMPLE_NAME", "from-env")
    assert load_settings(Example, path).name == "from-env"
    loaded = load_settings(Example, path, ["name=from-set", "steps=30"], {"steps": 40, "rate": None, "paths": [Path("a")]})
    assert (loaded.name, loaded.steps, loaded.rate, loaded.paths) == ("from-set", 40, 5e-4, [Path("a")])  # None: not given


def test_unknown_names_and_bad_files_are_refused_naming_the_file(tmp_path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text("stpes: 3\n")
    with pytest.raises(ValueError, match=r"example.yaml: unknown Example keys: stpes \(known: rate, steps, name, paths\)"):
        load_settings(Example, path)
    with pytest.raises(ValueError, match="unknown Example keys: nme"):
        load_settings(Example, None, ["nme=x"])
    with pytest.raises(ValueError, match="is not key=value"):
        load_settings(Example, None, ["steps"])
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="example.yaml: expected a mapping"):
        load_settings(Example, path)


def test_help_lists_every_field_and_never_a_computed_default(monkeypatch) -> None:
    from training.teacher import TeacherConfig

    text = settings_help(Example, skip=("paths",))
    assert [line.split(":")[0] for line in text.split("\n\n")[1:]] == ["rate (0.1)", "steps (10)", "name"]
    monkeypatch.setenv("LMLM_TEACHER_KEY", "sk-secret-value")
    assert "sk-secret-value" not in settings_help(TeacherConfig)  # its defaults read the environment


def test_serve_options_are_derived_from_server_config() -> None:
    from lmlm_agent.cli import app
    from lmlm_agent.server_config import ServerConfig

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for f in dataclasses.fields(ServerConfig):
        assert f"{f.name}" in result.output and f.metadata["help"][:40] in " ".join(result.output.split())
    for option in ("--max-batch", "--max-queue", "--public-read", "--private-read", "--semantic", "--exact", "--store", "--set"):
        assert option in result.output


def test_serve_set_reaches_server_config_before_anything_loads(tmp_path) -> None:
    from lmlm_agent.cli import app

    result = CliRunner().invoke(app, ["serve", "--run", str(tmp_path), "--set", "default_max_tokens=0"])
    assert result.exit_code == 2 and "default_max_tokens must be at least 1" in result.output
    result = CliRunner().invoke(app, ["serve", "--run", str(tmp_path), "--set", "max_batchh=4"])
    assert result.exit_code == 2 and "unknown ServerConfig keys: max_batchh" in result.output
