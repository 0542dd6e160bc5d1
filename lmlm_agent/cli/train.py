"""`lmlm train`: pretrain an LMLM, its baseline, or fine-tune on QA. Heavy imports stay inside the commands."""

from __future__ import annotations

from typing import List, Optional

import typer

from lmlm_agent.cli.options import document_settings, set_option
from training.config import FinetuneConfig, PretrainConfig

app = typer.Typer(help="Pretrain an LMLM (values masked from the loss), the baseline, and fine-tune.", no_args_is_help=True)

CONFIG_HELP = "YAML config file, or a preset name from training/configs (micro, small, demo, lmlm-176m, lmlm-382m, finetune-demo)."
# pretrain and baseline share their config: the same --config and --set.
PRETRAIN_CONFIG = typer.Option("demo", "--config", "-c", help=CONFIG_HELP)
PRETRAIN_SET = set_option(PretrainConfig)


def _echo_checkpoint(path) -> None:
    import os

    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, process 0 wrote it
        typer.echo(f"checkpoint: {path}")


def _pretrain(config: str, overrides: List[str], baseline: bool) -> None:
    import logging

    from training.config import load_config
    from training.pretrain import pretrain

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(PretrainConfig, config, [*overrides, f"baseline={str(baseline).lower()}"])
    if not cfg.data:
        raise typer.BadParameter("no training data: set `data:` in the config or pass --set data=FILE")
    if baseline and not (cfg.tokenizer or cfg.resume):
        raise typer.BadParameter("the baseline shares the LMLM's tokenizer: pass --set tokenizer=LMLM_CHECKPOINT")
    _echo_checkpoint(pretrain(cfg))


@app.command("pretrain")
@document_settings(PretrainConfig)
def pretrain_cmd(config: str = PRETRAIN_CONFIG, overrides: Optional[List[str]] = PRETRAIN_SET) -> None:
    """Pretrain an LMLM from scratch on annotated text, the returned values masked from the loss."""
    _pretrain(config, overrides or [], baseline=False)


@app.command("baseline")
@document_settings(PretrainConfig)
def baseline_cmd(config: str = PRETRAIN_CONFIG, overrides: Optional[List[str]] = PRETRAIN_SET) -> None:
    """Pretrain the baseline: same documents with the calls removed; needs --set tokenizer=LMLM_CHECKPOINT."""
    _pretrain(config, overrides or [], baseline=True)


@app.command("finetune")
@document_settings(FinetuneConfig)
def finetune_cmd(
    config: str = typer.Option("finetune-demo", "--config", "-c", help=CONFIG_HELP),
    overrides: Optional[List[str]] = set_option(FinetuneConfig),
) -> None:
    """Fine-tune a checkpoint on question -> answer pairs (JSONL with question, answer); prompt and values masked."""
    import logging

    from training.config import load_config
    from training.finetune import finetune

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(FinetuneConfig, config, overrides or [])
    if not cfg.data:
        raise typer.BadParameter("no QA data: set `data:` in the config or pass --set data=FILE")
    _echo_checkpoint(finetune(cfg))
