"""The three perplexities and the value-token loss, on a micro model (untrained: the figures are checked, not judged)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from lmlm_agent.cli import app
from lmlm_agent.format import strip_calls
from lmlm_agent.model import build_model, save_checkpoint
from lmlm_agent.tokenizer import call_token_ids, train_tokenizer
from training.corpus import AnnotatedDocument, read_documents
from training.data import encode, mask_labels
from tools.schema import LookupResult
from training.perplexity import OracleDatabase, _Stream, _token_nll, evaluate_perplexity


@pytest.fixture(scope="module")
def docs(annotations_dir):
    return read_documents(annotations_dir / "squad-eval100.gpt4o.json")[:4]


class Answering:
    """A lookup that answers every query with ``value`` (None: every query misses) and records the queries."""

    def __init__(self, value: str | None):
        self.value, self.asked = value, []

    def read(self, entity: str, relation: str) -> LookupResult:
        self.asked.append((entity, relation))
        return LookupResult.miss(entity, relation) if self.value is None else LookupResult.hit(entity, relation, self.value)


@pytest.fixture(scope="module")
def model_and_tokenizer(docs):
    tokenizer = train_tokenizer([d.annotated for d in docs], vocab_size=400)
    torch.manual_seed(0)
    return build_model("micro", tokenizer, max_position_embeddings=1024).eval(), tokenizer


def test_static_matches_the_training_loss(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    doc = AnnotatedDocument("d", "Born in <|db_entity|> Ada<|db_relationship|> birth year<|db_return|> 1815<|db_end|> 1815.", "")
    report = evaluate_perplexity(model, tokenizer, [doc], "lmlm", lookup=Answering(None))
    ids = [tokenizer.eos_token_id] + encode([doc.annotated], tokenizer)[0]
    labels = [-100] + mask_labels(ids[1:], call_token_ids(tokenizer))
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    assert math.log(report.static_ppl) == pytest.approx(float(loss), rel=1e-4)
    assert report.value_tokens == labels.count(-100) - 1  # the value and <|db_end|> (not the EOS opener)
    assert report.lookups == 1 and report.lookup_hits == 0


def test_lmlm_report_is_consistent(model_and_tokenizer, docs):
    model, tokenizer = model_and_tokenizer
    lookup = Answering("x")
    asked = lookup.asked
    docs = docs[:2]  # an untrained model writes every query to the 32-token cap: keep it short
    report = evaluate_perplexity(model, tokenizer, docs, "lmlm", lookup=lookup)
    calls = sum(d.annotated.count("<|db_entity|>") for d in docs)
    # One query per annotated call; the database is asked only for those that parse (an
    # untrained model rarely writes entity<|db_relationship|>relation), and this one always answers.
    assert report.lookups == calls and len(asked) == report.lookup_hits <= calls
    # normalised = loss on trained tokens x trained tokens / tokens outside lookup blocks
    assert math.log(report.normalised_ppl) * report.text_tokens == pytest.approx(
        math.log(report.static_ppl) * report.trained_tokens, rel=1e-9)
    assert report.trained_tokens > report.text_tokens and report.value_tokens > calls
    assert report.value_loss > 0 and all(math.isfinite(v) for v in (report.static_ppl, report.dynamic_ppl))


def test_baseline_scores_plain_text_once(model_and_tokenizer, docs):
    model, tokenizer = model_and_tokenizer
    report = evaluate_perplexity(model, tokenizer, docs, "baseline")
    assert report.static_ppl == report.dynamic_ppl == report.normalised_ppl == report.text_ppl
    assert report.value_loss is None and report.value_tokens == 0 and report.lookups == 0
    plain_tokens = sum(len(ids) for ids in encode([strip_calls(d.annotated) for d in docs], tokenizer))
    assert report.trained_tokens == report.text_tokens == plain_tokens


def test_cached_stream_scores_like_one_forward(model_and_tokenizer, docs):
    model, tokenizer = model_and_tokenizer
    ids = [tokenizer.eos_token_id] + encode([docs[0].plain], tokenizer)[0][:40]
    batch = _token_nll(model, [ids], tokenizer.pad_token_id)[0]
    stream = _Stream(model)
    with torch.no_grad():
        a = stream.feed(ids[:7], [True] * 7)
        b = stream.feed(ids[7:], [True] * (len(ids) - 7))
    assert a[1] + b[1] == len(batch)
    assert a[0] + b[0] == pytest.approx(sum(batch), rel=1e-4)


def test_oracle_database_normalises_keys(docs):
    oracle = OracleDatabase([AnnotatedDocument("d", "<|db_entity|> Arsenal_F.C.<|db_relationship|> Founded<|db_return|> 1886<|db_end|> x", "")])
    assert oracle.read("arsenal f.c.", " founded ").value == "1886" and not oracle.read("Arsenal", "Founded").found


def test_cli_eval_perplexity(model_and_tokenizer, docs, annotations_dir, tmp_path):
    model, tokenizer = model_and_tokenizer
    ckpt = save_checkpoint(tmp_path / "m", model, tokenizer, kind="lmlm", preset="micro", config={"context_length": 128})
    result = CliRunner().invoke(app, ["eval", "perplexity", "--checkpoint", str(ckpt), "--data",
                                      str(annotations_dir / "squad-eval100.gpt4o.json"), "--limit", "2",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "perplexity.json").read_text())
    assert rows[0]["kind"] == "lmlm" and rows[0]["documents"] == 2
    assert "| lmlm |" in (tmp_path / "out" / "perplexity.md").read_text()
