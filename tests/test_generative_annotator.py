"""The generative annotator: SFT rows and labels, copy-verified decoding against token by token, bad input."""

from __future__ import annotations

import pytest

from lmlm_agent.format import SPECIAL_TOKENS, LookupCall, insert_calls, list_calls, render_call, strip_calls
from training.generative_annotator import (
    GenerativeAnnotator,
    GenerativeConfig,
    GenerativeReport,
    build_trainer,
    encode,
    ensure_call_tokens,
    new_base,
    sft_rows,
    training_windows,
)

TEXT = "Ada Lovelace was born in 1815 in London. She wrote the first program in 1843."
CALLS = [(25, LookupCall("Ada Lovelace", "birth year", "1815")), (33, LookupCall("Ada Lovelace", "birth place", "London"))]
ANNOTATED = insert_calls(TEXT, CALLS)
OTHER = "Charles Babbage designed the Analytical Engine in 1837 in England."
OTHER_ANNOTATED = insert_calls(OTHER, [(51, LookupCall("Analytical Engine", "designed in", "1837"))])


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = new_base([TEXT, ANNOTATED, OTHER, OTHER_ANNOTATED] * 4, tmp_path_factory.mktemp("base"), preset="micro", vocab_size=350)
    return path, AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_training_windows_copy_the_input_with_calls_before_their_values(micro) -> None:
    _, _, tok = micro
    enc = encode(tok, TEXT)
    assert TEXT[enc.at[enc.ids.index(tok(" 1815", add_special_tokens=False)["input_ids"][0])]:].startswith("1815")
    (prompt, completion), = training_windows(tok, TEXT, CALLS, size=100)
    assert prompt == [tok.bos_token_id, *enc.ids, tok.eos_token_id] and completion[-1] == tok.eos_token_id
    entity, _, _, end = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    inside, copied = False, []
    for t in completion[:-1]:  # outside the calls, the completion is the input token for token
        if inside or t == entity:
            inside = t != end
        else:
            copied.append(t)
    assert copied == enc.ids
    assert [c.triple for c in list_calls(tok.decode(completion))] == [c.triple for _, c in CALLS]
    windows = training_windows(tok, TEXT, CALLS, size=8)  # split at a sentence end or the size, every token once
    assert len(windows) > 1 and sum((p[1:-1] for p, _ in windows), []) == enc.ids


def test_sft_labels_cover_the_output_only_and_two_steps_train(micro, tmp_path) -> None:
    _, model, tok = micro
    config = GenerativeConfig(max_steps=2, batch_size=2, lr=1e-2, progress=False, window_tokens=64)
    report = GenerativeReport()
    records = [(TEXT, ANNOTATED), (OTHER, OTHER_ANNOTATED), (TEXT, "A different text " + render_call("A", "b", "c") + " entirely.")]
    rows = sft_rows(tok, model, records, config, report)
    assert report.records == 2 and report.skipped == {"records_rejected_text": 1} and report.calls == 3
    trainer = build_trainer(model, tok, rows, config, tmp_path)
    row = trainer.train_dataset[0]
    prompt_len = len(encode(tok, TEXT).ids) + 2  # begin- and end-of-text around the paragraph
    assert row["input_ids"][:prompt_len] == [tok.bos_token_id, *encode(tok, TEXT).ids, tok.eos_token_id]
    assert row["labels"][:prompt_len] == [-100] * prompt_len
    assert row["labels"][prompt_len:] == row["input_ids"][prompt_len:]
    before = next(model.parameters()).detach().clone()
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0
    assert not next(model.parameters()).detach().equal(before)


def _writes_short_calls(model, tok, call_bias: float):
    """A hook on the micro model: after an ordinary token a field closes, after a call token it does not, and
    ``<|db_entity|>`` gets ``call_bias``; an untrained model that writes one-token fields, decided by context."""
    import torch

    ent, rel, ret, end = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))

    def hook(module, args, output):
        after_call_token = torch.isin(args[0], torch.tensor([ent, rel, ret, end]))[0]
        logits = output.logits[0]
        logits[:, [rel, ret, end]] += torch.where(after_call_token, -10.0, 10.0)[:, None]
        logits[:, ent] += torch.where(after_call_token, -10.0, call_bias)
        return output

    return model.register_forward_hook(hook)


@pytest.mark.parametrize("call_bias", [None, 0.5])
def test_copy_verified_decoding_writes_what_token_by_token_writes(micro, call_bias) -> None:
    from transformers import AutoModelForCausalLM

    path, _, tok = micro
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    hook = _writes_short_calls(model, tok, call_bias) if call_bias is not None else None
    annotator = GenerativeAnnotator(model, tok, GenerativeConfig(window_tokens=12, max_field_tokens=3))
    texts = [TEXT, OTHER]
    slow, fast = annotator.annotate(texts, draft_tokens=1), annotator.annotate(texts, draft_tokens=5)
    if hook:
        hook.remove()
    assert [r.annotated for r in fast] == [r.annotated for r in slow]
    assert [r.calls for r in fast] == [r.calls for r in slow] and [r.dropped_calls for r in fast] == [r.dropped_calls for r in slow]
    assert all(r.status == "ok" and strip_calls(r.annotated) == r.text and r.windows > 1 for r in fast)
    written, dropped = sum(len(r.calls) for r in fast), sum(r.dropped_calls for r in fast)
    if call_bias is None:  # an untrained model's fields run past their budget: its calls are dropped, no text is lost
        assert written == 0 and dropped > 0
    else:
        assert written > 0 and all(len(c.value.split()) == 1 for r in fast for _, c in r.calls)


def test_copied_values_are_the_text_after_their_call(micro) -> None:
    from transformers import AutoModelForCausalLM

    path, _, tok = micro
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    hook = _writes_short_calls(model, tok, 0.5)
    config = GenerativeConfig(window_tokens=12, max_field_tokens=3, copy_values=True)
    slow = GenerativeAnnotator(model, tok, config).annotate([TEXT, OTHER], draft_tokens=1)
    fast = GenerativeAnnotator(model, tok, config).annotate([TEXT, OTHER], draft_tokens=5)
    hook.remove()
    assert [r.annotated for r in fast] == [r.annotated for r in slow]
    calls = [(r.text, offset, c) for r in fast for offset, c in r.calls]
    assert calls and all(text[offset:].startswith(c.value) for text, offset, c in calls)


def test_a_base_without_call_tokens_gets_them(tmp_path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lmlm_agent.model import build_model

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator([TEXT, OTHER], trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], show_progress=False,
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    model = build_model("micro", tok)
    rows_before = model.get_input_embeddings().weight.shape[0]
    assert ensure_call_tokens(model, tok) == 4 and ensure_call_tokens(model, tok) == 0
    assert model.get_input_embeddings().weight.shape[0] == rows_before + 4 and tok.pad_token == "<eos>"
    assert len(tok(render_call("A", "b", "c"), add_special_tokens=False)["input_ids"]) < 12  # each call token one id
    no_eos = PreTrainedTokenizerFast(tokenizer_object=bpe)
    with pytest.raises(ValueError, match="end-of-text"):
        ensure_call_tokens(model, no_eos)


def test_lora_trains_adapters_then_merges(micro, tmp_path) -> None:
    from training.generative_annotator import train_generative

    path, _, _ = micro
    config = GenerativeConfig(base=str(path), lora_rank=2, max_steps=1, batch_size=2, progress=False, window_tokens=64)
    annotator, report = train_generative([(TEXT, ANNOTATED), (OTHER, OTHER_ANNOTATED)], config, tmp_path)
    assert report.steps == 1 and 0 < report.trainable_parameters < report.parameters
    assert type(annotator.model).__name__ == "LlamaForCausalLM"  # merged: saved and loaded as a plain model
    assert strip_calls(annotator.annotate([OTHER])[0].annotated) == OTHER
