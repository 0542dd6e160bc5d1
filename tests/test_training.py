"""Configs, and 1-2 step trainings of the micro model: LMLM + baseline, resume, QA fine-tuning, CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lmlm_agent.cli import app
from lmlm_agent.format import render_call
from lmlm_agent.model import load_checkpoint
from training.config import FinetuneConfig, PretrainConfig, load_config
from training.corpus import read_documents
from training.data import IGNORE_INDEX, pack
from training.finetune import QAExample, finetune
from training.pretrain import train_pair


@pytest.fixture(scope="module")
def docs(annotations_dir):
    return read_documents(annotations_dir / "squad-eval100.gpt4o.json")[:6]


def test_presets_load_with_typed_overrides():
    cfg = load_config(PretrainConfig, "micro", ["max_steps=7", "learning_rate=2e-4", "output_dir=x", "bf16=false"])
    assert (cfg.preset, cfg.max_steps, cfg.learning_rate, cfg.output_dir, cfg.bf16) == ("micro", 7, 2e-4, "x", False)
    published = load_config(PretrainConfig, "lmlm-176m")
    assert (published.context_length, published.learning_rate, published.lr_scheduler, published.warmup_steps) == (
        1024, 5e-4, "cosine", 2000)
    assert published.gradient_accumulation_steps() * published.per_device_batch_size == 256
    assert load_config(PretrainConfig, "lmlm-382m").preset == "lmlm-382m"
    assert load_config(FinetuneConfig, "finetune-demo").learning_rate == 1e-4
    with pytest.raises(ValueError, match="unknown PretrainConfig keys: max_stpes"):
        load_config(PretrainConfig, "micro", ["max_stpes=3"])
    with pytest.raises(FileNotFoundError, match="presets"):
        load_config(PretrainConfig, "no-such-preset")


def test_trl_batches_keep_the_value_mask(docs):
    from trl import SFTTrainer

    from lmlm_agent.model import build_model
    from lmlm_agent.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([d.annotated for d in docs], vocab_size=512)
    packed = pack([d.annotated for d in docs], tokenizer, context_length=64)
    cfg = load_config(PretrainConfig, "micro", ["output_dir=unused"])
    trainer = SFTTrainer(model=build_model("micro", tokenizer), args=cfg.sft_config(),
                         train_dataset=packed.to_dataset(), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    rows = {tuple(r) for r in packed.input_ids}
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        i = packed.input_ids.index(ids) if tuple(ids) in rows else None
        assert i is not None and labels == packed.labels[i]
    assert (batch["labels"] == IGNORE_INDEX).any()


def test_lmlm_and_baseline_share_tokenizer_and_budget(docs, tmp_path):
    cfg = load_config(PretrainConfig, "micro")
    pair = train_pair(cfg, docs, tmp_path)
    lmlm, base = load_checkpoint(pair.lmlm), load_checkpoint(pair.baseline)
    assert (lmlm.meta["kind"], base.meta["kind"]) == ("lmlm", "baseline")
    assert lmlm.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    size = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert size(lmlm.model.config) == size(base.model.config)
    assert lmlm.meta["steps"] == base.meta["steps"] == 2
    assert lmlm.meta["tokens"] == base.meta["tokens"] == 2 * cfg.per_device_batch_size * cfg.context_length
    assert lmlm.meta["data_trained_tokens"] < lmlm.meta["data_tokens"]  # values masked
    assert base.meta["data_trained_tokens"] == base.meta["data_tokens"]
    log = json.loads((pair.lmlm / "train_log.json").read_text())
    assert [row["loss"] for row in log if "loss" in row]


def test_cli_pretrain_then_resume_then_finetune(docs, tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"id": d.id, "text": d.annotated}) + "\n" for d in docs))
    out = tmp_path / "lmlm"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "pretrain", "--config", "micro", "--set", f"data={data}",
                                 "--set", f"output_dir={out}", "--set", "save_steps=1", "--set", "max_steps=1"])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint-1").is_dir() and load_checkpoint(out).meta["steps"] == 1

    result = runner.invoke(app, ["train", "pretrain", "--config", "micro", "--set", f"data={data}",
                                 "--set", f"output_dir={out}", "--set", "resume=last", "--set", "max_steps=2"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out).meta["steps"] == 2

    answer = render_call("Ada Lovelace", "birth year", "1815") + " In 1815."
    qa = [QAExample("When was Ada Lovelace born?", answer)] * 4
    cfg = load_config(FinetuneConfig, None, [f"checkpoint={out}", f"output_dir={tmp_path / 'qa'}", "max_steps=1",
                                             "per_device_batch_size=2", "context_length=64", "progress=false"])
    tuned = load_checkpoint(finetune(cfg, qa))
    assert tuned.meta["finetuned"] == "qa" and tuned.meta["kind"] == "lmlm" and tuned.meta["steps"] == 1
    assert "{question}" in tuned.meta["qa_prompt"]


def test_baseline_refuses_a_tokenizer_of_its_own(docs):
    from training.pretrain import pretrain

    with pytest.raises(ValueError, match="LMLM's tokenizer"):
        pretrain(load_config(PretrainConfig, "micro", ["baseline=true"]), docs)
