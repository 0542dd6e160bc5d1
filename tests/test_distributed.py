"""`lmlm train pretrain` and `lmlm train finetune` under `accelerate launch` with two CPU processes (gloo).

One launch runs three commands in the same two processes (tests/distributed_driver.py):
pretrain 2 steps (saving checkpoint-1), pretrain again resumed from checkpoint-1, and
fine-tune the first run's checkpoint. Each is compared with the same config trained in a
single process: per-device batch 4 and a global batch of 8 give gradient accumulation 2 in
one process and 1 in two, so the same rows make each optimiser step in both runs.

Tolerance: the two runs compute the same sums in a different order (two 4-row halves
all-reduced over gloo against one process accumulating two 4-row micro-batches), so they
differ by float32 rounding only: about 1e-7 relative per step, grown a little by AdamW.
Losses must agree to 1e-4 relative; a real fault (each process training alone, a
different tokenizer or data order, the loss scaled by the number of processes) moves them
by far more than that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from lmlm_agent.format import render_call
from lmlm_agent.model import load_checkpoint
from training.config import FinetuneConfig, PretrainConfig, load_config
from training.finetune import finetune, read_qa
from training.pretrain import pretrain

REPO = Path(__file__).resolve().parents[1]
RELATIVE_TOLERANCE = 1e-4
BATCH = ["--set", "per_device_batch_size=4", "--set", "effective_batch_size=8", "--set", "device=cpu"]
# Fine-tuning: no warm-up, so both steps move the weights; a loss logged at every step.
FINETUNE = ["max_steps=2", "warmup_steps=0", "context_length=64", "logging_steps=1", "progress=false"]


def sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def losses(checkpoint: Path) -> list[float]:
    return [row["loss"] for row in json.loads((checkpoint / "train_log.json").read_text()) if "loss" in row]


def launch_two_processes(commands: list[list[str]], tmp_path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    # `--cpu --num_processes 2` would start one process (accelerate's multi-CPU launcher needs mpirun);
    # `--multi_gpu` starts two through torchrun, and device=cpu makes them talk over gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(REPO / "tests" / "distributed_driver.py"), json.dumps(commands)]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
def test_two_cpu_processes_train_like_one(annotations_dir, tmp_path):
    from training.corpus import read_documents

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": d.id, "text": d.annotated}) + "\n"
                            for d in read_documents(annotations_dir / "squad-eval100.gpt4o.json")[:12]))
    qa = tmp_path / "qa.jsonl"
    answer = render_call("Ada Lovelace", "birth year", "1815") + " In 1815."
    qa.write_text("".join(json.dumps({"question": f"When was Ada Lovelace born? ({i})", "answer": answer}) + "\n"
                          for i in range(16)))
    two, resumed, tuned = tmp_path / "two", tmp_path / "resumed", tmp_path / "tuned"
    pretrain_args = ["train", "pretrain", "--config", "micro", "--set", f"data={docs}", "--set", "max_steps=2", *BATCH]
    output = launch_two_processes([
        [*pretrain_args, "--set", f"output_dir={two}", "--set", "save_steps=1"],
        [*pretrain_args, "--set", f"output_dir={resumed}", "--set", f"resume={two / 'checkpoint-1'}"],
        ["train", "finetune", "--config", "finetune-demo", "--set", f"checkpoint={two}", "--set", f"data={qa}",
         "--set", f"output_dir={tuned}", *sets(FINETUNE), *BATCH],
    ], tmp_path)

    # Both processes trained each of the three runs; process 0 alone wrote each checkpoint.
    for rank in (0, 1):
        assert output.count(f"process {rank} of 2 trained 2 steps") == 3, output[-4000:]
    assert output.count("process 0 saved") == 3 and "process 1 saved" not in output
    assert output.count("checkpoint: ") == 3  # the CLI reports it once, from process 0
    meta = load_checkpoint(two).meta
    assert (meta["processes"], meta["global_batch_size"], meta["steps"]) == (2, 8, 2)
    assert meta["tokens"] == 2 * 8 * 64  # both processes' rows counted
    assert {p.name for p in two.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}

    # The same config in one process (accumulation 2), with the tokenizer process 0 trained.
    overrides = [f"data={docs}", "max_steps=2", "per_device_batch_size=4", "effective_batch_size=8", "device=cpu",
                 f"tokenizer={two}", f"output_dir={tmp_path / 'one'}"]
    one = pretrain(load_config(PretrainConfig, "micro", overrides))
    assert load_checkpoint(one).meta["global_batch_size"] == 8
    assert len(losses(two)) == 2 and losses(two) == pytest.approx(losses(one), rel=RELATIVE_TOLERANCE)
    # Resumed from checkpoint-1, step 2 is the uninterrupted run's step 2.
    assert load_checkpoint(resumed).meta["steps"] == 2
    assert losses(resumed)[-1] == pytest.approx(losses(two)[-1], rel=RELATIVE_TOLERANCE)

    cfg = load_config(FinetuneConfig, "finetune-demo", [f"checkpoint={two}", f"output_dir={tmp_path / 'tuned-one'}",
                                                        *FINETUNE, *BATCH[1::2]])
    tuned_one = finetune(cfg, read_qa(qa))
    assert load_checkpoint(tuned).meta["processes"] == 2
    assert len(losses(tuned)) == 2 and losses(tuned) == pytest.approx(losses(tuned_one), rel=RELATIVE_TOLERANCE)


def test_device_option_is_checked():
    import torch

    with pytest.raises(ValueError, match="device must be auto, cuda or cpu"):
        load_config(PretrainConfig, "micro", ["device=gpu"]).uses_cpu()
    assert load_config(PretrainConfig, "micro", ["device=cpu"]).uses_cpu()
    if not torch.cuda.is_available():
        assert load_config(PretrainConfig, "micro").uses_cpu()
        with pytest.raises(ValueError, match="no CUDA device"):
            load_config(PretrainConfig, "micro", ["device=cuda"]).uses_cpu()
