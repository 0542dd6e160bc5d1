"""`lmlm tofu`: the TOFU protocol on a directory of TOFU files (benchmarks.tofu_run)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import List, Optional

import typer

from benchmarks.tofu_config import TofuRunConfig
from lmlm_agent.cli.options import document_settings, set_option


def tofu(
    data: Path = typer.Option(..., "--data", help="Directory of TOFU files: full, forget01/05/10, retain90/95/99 and the "
                              "*_perturbed evaluation sets (JSON list or JSON lines)."),
    out: Path = typer.Option(Path("runs/tofu"), "--out", help="Run directory; a rerun resumes (annotations, kb.sqlite and "
                             "finished models are reused; delete OUT/models to retrain)."),
    annotator: str = typer.Option("teacher", "--annotator", help="teacher (OpenAI-compatible; --set teacher_url=...), "
                                  "offline (the local offline teacher on DATA/teacher_records.jsonl, for generated files), "
                                  "or an annotator directory of any kind (lmlm annotate train --kind teacher/extractive/generative)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Start from a run directory with lmlm/ and baseline/, "
                                              "or one HF causal LM with the four call tokens; default: from scratch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: training goes through the trainer (accelerate), "
                               "scoring and unlearning run on that device."),
    generate: int = typer.Option(0, "--generate", help="First write TOFU-format files of a generated world with about N "
                                 "authors into --data (with the offline teacher's records; use --annotator offline)."),
    overrides: Optional[List[str]] = set_option(TofuRunConfig),
) -> None:
    """TOFU end to end: annotate the answers into a knowledge base, fine-tune the LMLM and a baseline (and the retain models), forget (the LMLM deletes rows; the baseline runs grad_ascent / grad_diff / NPO), score with TOFU's metrics with the lookups executed, and write OUT/tofu.json, tofu.md and tofu.png beside published figures."""
    from benchmarks.tofu_run import TofuRun
    from tools.settings import load_settings

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("--device must be auto, cpu or cuda")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch loads: the trainer then never sees a GPU
    if generate:
        from benchmarks.tofu_files import world_for_authors, write_world_files

        write_world_files(world_for_authors(generate), data)
        typer.echo(f"wrote TOFU-format files of a generated world with about {generate} authors to {data}", err=True)
    config = load_settings(TofuRunConfig, None, overrides or [], dict(data=str(data), out=str(out), annotator=annotator,
                                                                      checkpoint=str(checkpoint or ""), device=device))
    typer.echo(TofuRun(config).run().read_text())


EXAMPLES = """Examples:

A CPU smoke on files generated from the project's world (about a minute):
lmlm tofu --generate 8 --data /tmp/tofu-data --out /tmp/tofu-run --annotator offline --set preset=micro --set max_steps=20 --set forget_splits=forget10 --set rouge_tokens=0

The real benchmark on a GPU, from a fine-tunable checkpoint, the teacher at a URL:
lmlm tofu --data TOFU/ --out runs/tofu --checkpoint runs/demo --device cuda --set teacher_url=http://HOST/v1"""

tofu.__doc__ = f"{inspect.cleandoc(tofu.__doc__)}\n\n{EXAMPLES}"
# The settings that have options of their own above are left out of the --set list.
document_settings(TofuRunConfig, skip=("data", "out", "annotator", "checkpoint", "device"))(tofu)
