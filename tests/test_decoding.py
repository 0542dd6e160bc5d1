"""Interleaved decoding: a scripted model for the control flow, a micro Llama for the KV cache."""

from __future__ import annotations

import pytest
import torch
from runtime_fakes import BrokenStore, DictStore, ScriptedLM, tokenizer
from transformers import RepetitionPenaltyLogitsProcessor

from lmlm_agent.decoding import (
    PUBLISHED_CALL_BIAS,
    DecodingConfig,
    InterleavedDecoder,
    interleaved_generate,
    settled_text,
    stream_generate,
)
from lmlm_agent.format import parse, render_call, strip_calls, strip_values
from lmlm_agent.tokenizer import call_token_ids

ADA = " was born in " + render_call("Ada Lovelace", "birth year", "1815") + " 1815 in " + render_call(
    "Ada Lovelace", "birth place", "London"
) + " London."
KO = " plays for " + render_call("Ko Itakura", "team", "Japan") + " Japan."
PARIS = " is " + render_call("France", "capital", "Paris") + " Paris, on the " + render_call(
    "Paris", "river", "Seine"
) + " Seine, with the " + render_call("Paris", "landmark", "Eiffel Tower") + " Eiffel Tower."
SCRIPTS = {"Ada Lovelace": ADA, "Ko Itakura": KO, "The capital of France": PARIS}
FACTS = {
    ("Ada Lovelace", "birth year"): "1815",
    ("Ada Lovelace", "birth place"): "London",
    ("Ko Itakura", "team"): "Japan",
    ("France", "capital"): "Paris",
    ("Paris", "river"): "Seine",
    ("Paris", "landmark"): "Eiffel Tower",
}


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def scripted(tok, scripts=SCRIPTS):
    """Well-formed scripts are given annotated; the model writes them without the values."""
    return ScriptedLM(tok, {p: strip_values(s) for p, s in scripts.items()})


def test_scripted_single_prompt_trace_and_texts(tok):
    store = DictStore(FACTS)
    model = scripted(tok)
    (out,) = interleaved_generate(model, tok, "Ada Lovelace", store)
    assert out.raw_text == ADA
    assert out.text == strip_calls(ADA) == " was born in 1815 in London."
    assert out.finish_reason == "eos"
    assert [(r.entity, r.relation, r.value, r.fact_id, r.match) for r in out.lookups] == [
        ("Ada Lovelace", "birth year", "1815", 1, "exact"),
        ("Ada Lovelace", "birth place", "London", 2, "exact"),
    ]
    assert all(r.score == 1.0 and r.source.startswith("test:") and r.latency_s >= 0 for r in out.lookups)
    for r in out.lookups:  # position points at the <|db_return|> that asked
        assert out.token_ids[r.position] == call_token_ids(tok).ret
    assert out.generated_tokens + out.injected_tokens == len(out.token_ids) + 1  # + the EOS
    # Only new tokens were fed after the prompt: nothing was re-encoded.
    assert model.real_fed == len(tok.encode("Ada Lovelace")) + len(out.token_ids)
    assert max(model.widths[1:]) > 1  # a lookup step fed <|db_return|> + value + <|db_end|>


def test_batch_with_lookups_at_different_steps_equals_single(tok):
    prompts = list(SCRIPTS) + ["unknown prompt"]
    model = scripted(tok)
    batched = interleaved_generate(model, tok, prompts, DictStore(FACTS))
    singles = [interleaved_generate(scripted(tok), tok, p, DictStore(FACTS))[0] for p in prompts]
    assert [o.raw_text for o in batched] == [o.raw_text for o in singles] == [ADA, KO, PARIS, ""]
    assert [o.lookups[0].position for o in batched[:3]] == [o.lookups[0].position for o in singles[:3]]
    assert len({o.lookups[0].position for o in batched[:3]}) == 3  # the first lookups fall on different steps
    assert batched[3].finish_reason == "eos" and batched[3].lookups == []
    assert model.real_fed == sum(len(tok.encode(p)) + len(o.token_ids) for p, o in zip(prompts, batched))


def test_db_off_and_no_store_return_unknown(tok):
    store = DictStore(FACTS)
    for lookup, cfg in ((store, DecodingConfig(db_off=True)), (None, DecodingConfig())):
        (out,) = interleaved_generate(scripted(tok), tok, "Ada Lovelace", lookup, cfg)
        assert [r.value for r in out.lookups] == ["unknown", "unknown"]
        assert {r.match for r in out.lookups} == {"off"}
        assert [c.value for c in parse(out.raw_text).calls] == ["unknown", "unknown"]
    assert store.queries == []


def test_miss_and_broken_store_never_raise(tok):
    (miss,) = interleaved_generate(scripted(tok), tok, "Ko Itakura", DictStore({}))
    assert miss.lookups[0].value == "unknown" and miss.lookups[0].match == "miss"
    (broken,) = interleaved_generate(scripted(tok), tok, "Ko Itakura", BrokenStore())
    rec = broken.lookups[0]
    assert (rec.value, rec.match) == ("unknown", "error") and "database down" in rec.error
    assert broken.text.rstrip(".") == " plays for unknown"  # by default the runtime says what the store said, errors included
    (trained,) = interleaved_generate(scripted(tok), tok, "Ko Itakura", BrokenStore(), DecodingConfig(abstain_on_unknown=False))
    assert trained.text == " plays for Japan."  # off: the model goes on from its weights


def test_abstain_on_unknown_repeats_the_miss_and_leaves_hits_and_db_off_alone(tok):
    abstain = DecodingConfig(abstain_on_unknown=True)
    (miss,) = interleaved_generate(scripted(tok), tok, "Ko Itakura", DictStore({}), abstain)
    assert miss.raw_text.startswith(" plays for " + render_call("Ko Itakura", "team", "unknown") + " unknown")
    after = miss.raw_text[len(" plays for " + render_call("Ko Itakura", "team", "unknown") + " unknown"):]
    assert "Japan" not in after and not after.lstrip(" ")[:1].isalnum()  # the script's remembered value may not follow
    (hit,) = interleaved_generate(scripted(tok), tok, "Ko Itakura", DictStore(FACTS), abstain)
    assert hit.raw_text == KO
    (off,) = interleaved_generate(scripted(tok), tok, "Ko Itakura", DictStore(FACTS), DecodingConfig(
        abstain_on_unknown=True, db_off=True))
    assert off.text == " plays for Japan."  # the ablation measures the weights: nothing is said for them


class _PeriodSecondLM(ScriptedLM):
    """Writes its script, with "." always its second choice: what a model does when its first is banned."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        out = super().forward(input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep)
        out.logits[..., self.period] = torch.maximum(out.logits[..., self.period], torch.tensor(-1.0))
        return out


# What demo models wrote after an abstention, the first word of each injected: the value they remembered, as a new
# word or after a bare "!", or a call asking someone else.
AFTER_ABSTAINING = {"new word": " unknown 18.", "exclaimed": " unknown!ayor.",
                    "another call": " unknown " + strip_values(render_call("Ann Other", "team", "x")) + " Oslo."}


@pytest.mark.parametrize("name", list(AFTER_ABSTAINING))
def test_after_abstaining_the_sentence_ends_instead_of_going_on_with_a_remembered_value(tok, name):
    model = _PeriodSecondLM(tok, {"Ko Itakura": " plays for " + strip_values(render_call("Ko Itakura", "team", "x"))
                                  + AFTER_ABSTAINING[name]})
    model.period = tok.convert_tokens_to_ids(tok.tokenize(".")[0])
    facts = DictStore({("Ann Other", "team"): "Oslo"})
    (out,) = interleaved_generate(model, tok, "Ko Itakura", facts, DecodingConfig(abstain_on_unknown=True))
    sentence = " plays for " + render_call("Ko Itakura", "team", "unknown") + " unknown."
    assert out.raw_text.startswith(sentence)  # what follows is a new sentence's, a call of its own included
    assert not out.raw_text[len(sentence):][:1].isalnum()  # no word piece glued to the sentence's end


MALFORMED = {
    "stray return": " a <|db_return|> b",
    "empty entity": " x <|db_entity|><|db_relationship|> team<|db_return|> y",
    "nested": " <|db_entity|> A <|db_entity|> Ko Itakura<|db_relationship|> team<|db_return|> z",
    "stray end": " <|db_end|> <|db_relationship|> q",
    "unterminated": " tail <|db_entity|> Ko Itakura<|db_relationship|> te",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_calls_from_the_model_never_raise(tok, name):
    text = MALFORMED[name]
    (out,) = interleaved_generate(ScriptedLM(tok, {"Ko Itakura": text}), tok, "Ko Itakura", DictStore(FACTS))
    assert out.finish_reason == "eos"
    parse(out.raw_text)  # total
    if name in ("stray return", "empty entity"):
        assert [r.match for r in out.lookups] == ["malformed"]
        assert out.lookups[0].value == "unknown"
    if name == "nested":  # the inner, well-formed call is looked up
        assert [(r.entity, r.value) for r in out.lookups] == [("Ko Itakura", "Japan")]


def test_max_lookups_stops_new_calls(tok):
    (out,) = interleaved_generate(scripted(tok), tok, "The capital of France", DictStore(FACTS), DecodingConfig(max_lookups=1))
    assert len(out.lookups) == 1


def test_length_stop_string_and_forced_start(tok):
    (out,) = interleaved_generate(scripted(tok), tok, "Ada Lovelace", DictStore(FACTS), DecodingConfig(max_new_tokens=3))
    assert out.finish_reason == "length" and out.generated_tokens == 3
    (out,) = interleaved_generate(scripted(tok), tok, "Ada Lovelace", DictStore(FACTS), DecodingConfig(stop_strings=["London"]))
    # The text ends before the stop string (as OpenAI's stop); the value "London" injected earlier did not trigger it.
    assert out.finish_reason == "stop" and out.raw_text.endswith("London<|db_end|> ") and out.text == " was born in 1815 in "
    forced = {"Question: Ko": render_call("Ko Itakura", "team", "Japan") + " Japan."}
    (out,) = interleaved_generate(
        scripted(tok, forced), tok, "Question: Ko", DictStore(FACTS), DecodingConfig(force_lookup_start=True)
    )
    assert out.raw_text.startswith("<|db_entity|>") and out.lookups[0].value == "Japan"


@pytest.mark.parametrize("keep_calls", [False, True])
def test_stream_pieces_concatenate_to_the_output(tok, keep_calls):
    gen = stream_generate(scripted(tok), tok, "The capital of France", DictStore(FACTS), keep_calls=keep_calls)
    pieces = []
    while True:
        try:
            pieces.append(next(gen))
        except StopIteration as stop:
            out = stop.value
            break
    assert len(pieces) > 5
    assert "".join(pieces) == (out.raw_text if keep_calls else out.text)
    if not keep_calls:
        assert not any("<|" in p for p in pieces)


def test_settled_text_holds_back_an_open_call():
    assert settled_text("born in <|db_entity|> Ada<|db_relationship|> birth") == "born in "
    assert settled_text("born in " + render_call("A", "b", "1") + " 1") == "born in 1"
    assert settled_text("caf\u00e9\ufffd") == "caf\u00e9"


# --------------------------------------------------------------------------- a real micro model

@pytest.fixture(scope="module")
def micro(tok):
    from benchmarks.decode_speed import scheduled_model

    return scheduled_model("micro", tok, "Ada Lovelace", "birth year", period=22)


def reference(model, tok, prompt: str, store, config: DecodingConfig) -> list[int]:
    """Greedy decoding that re-encodes the whole sequence for every token (no cache at all)."""
    call = call_token_ids(tok)
    penalty = RepetitionPenaltyLogitsProcessor(config.repetition_penalty)
    ids = tok.encode(prompt, add_special_tokens=False)
    start = len(ids)
    for _ in range(config.max_new_tokens):
        full = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=full, position_ids=torch.arange(len(ids))[None]).logits[:, -1].float()
        scores = penalty(full, logits)
        if config.call_bias:
            scores[0, list(call.all)] += torch.tensor(PUBLISHED_CALL_BIAS)
        scores[0, tok.pad_token_id] = float("-inf")
        token = int(scores.argmax())
        if token == tok.eos_token_id:
            break
        ids.append(token)
        if token == call.ret:
            pending = parse(tok.decode(ids[start:], skip_special_tokens=False)).pending
            value = store.read(pending.entity, pending.relation).value if pending else "unknown"
            ids += tok.encode(" " + value, add_special_tokens=False)
            ids.append(call.end)
    return ids[start:]


PROMPTS = ["Ada Lovelace was born", "The capital of France is Paris. Paris is known", "Ko"]


@pytest.mark.parametrize("max_padding", [1.0, 0.0])  # injected values fed in one wide step / one token per step
def test_kv_cache_equals_reencoding_from_scratch(tok, micro, max_padding):
    cfg = DecodingConfig(max_new_tokens=45, call_bias=True, max_padding=max_padding)
    store = DictStore(FACTS)
    batched = interleaved_generate(micro, tok, PROMPTS, store, cfg)
    for prompt, out in zip(PROMPTS, batched):
        assert len([r for r in out.lookups if r.match == "exact"]) >= 1
        assert out.token_ids == reference(micro, tok, prompt, store, cfg)
    assert len({out.lookups[0].position for out in batched}) == len(PROMPTS)


def test_micro_batch_equals_single_and_sampling_is_seeded(tok, micro):
    cfg = DecodingConfig(max_new_tokens=30)
    store = DictStore(FACTS)
    batched = interleaved_generate(micro, tok, PROMPTS, store, cfg)
    assert [o.token_ids for o in batched] == [interleaved_generate(micro, tok, p, store, cfg)[0].token_ids for p in PROMPTS]
    top1 = DecodingConfig(max_new_tokens=30, do_sample=True, top_k=1, seed=3)
    assert [o.token_ids for o in interleaved_generate(micro, tok, PROMPTS, store, top1)] == [o.token_ids for o in batched]
    hot = DecodingConfig(max_new_tokens=20, do_sample=True, temperature=1.5, top_p=0.9, seed=7)
    first, again = (interleaved_generate(micro, tok, PROMPTS, store, hot) for _ in range(2))
    assert [o.token_ids for o in first] == [o.token_ids for o in again]


def test_context_window_ends_a_row_and_long_prompts_keep_their_end(tok):
    model = scripted(tok)
    model.config.max_position_embeddings = 12
    prompt_len = len(tok.encode("Ada Lovelace"))
    (out,) = interleaved_generate(model, tok, "Ada Lovelace", DictStore(FACTS))
    assert out.finish_reason == "context" and prompt_len + len(out.token_ids) <= 13
    decoder = InterleavedDecoder(model, tok, ["x " * 40 + "Ada Lovelace"], None, DecodingConfig())
    assert len(decoder.rows[0].prompt_ids) == 11 and tok.decode(decoder.rows[0].prompt_ids).endswith("Ada Lovelace")


def test_growing_cache_layer_matches_dynamic_layer():
    """Appending into spare room must give the same keys/values as concatenating, through growth, crop and row drops."""
    from transformers.cache_utils import DynamicLayer

    from lmlm_agent.decoding import GrowingLayer

    torch.manual_seed(0)
    grown, plain = GrowingLayer(), DynamicLayer()
    for width in [70, 1, 1, 5, 1, 40]:  # the first prefill fills 64+ slots; later ones force regrowth
        k, v = torch.randn(3, 2, width, 4), torch.randn(3, 2, width, 4)
        for a, b in zip(grown.update(k, v), plain.update(k, v)):
            assert torch.equal(a, b)
        assert grown.get_seq_length() == plain.get_seq_length()
    grown.crop(-3)
    plain.crop(-3)
    keep = torch.tensor([2, 0])
    grown.batch_select_indices(keep)
    plain.batch_select_indices(keep)
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    for a, b in zip(grown.update(k, v), plain.update(k, v)):
        assert torch.equal(a, b)
    assert grown.get_seq_length() == plain.get_seq_length() == 70 + 1 + 1 + 5 + 1 + 40 - 3 + 1


def test_decode_benchmark_runs_small_and_checks_its_decoders_agree(tmp_path):
    """The benchmark itself: its token-equality checks pass and it writes JSON and Markdown (timings not judged)."""
    import json

    from benchmarks.decode_speed import DecodeSpeedConfig, run

    setup = DecodeSpeedConfig(
        preset="micro", vocab_size=512, context_tokens=60, batch_prompt_tokens=40, max_new_tokens=48, period=20,
        batch=3, repeats=1, threads=1,
    )
    result = run(setup, tmp_path)
    assert result["lookups_per_answer"] >= 2
    assert all(r > 0 for r in result["ratios"].values())
    assert json.loads((tmp_path / "decode_speed.json").read_text())["tokens_written"] == 48
    assert "batch 3 vs batch 1" in (tmp_path / "decode_speed.md").read_text()


def test_decode_benchmark_rejects_a_period_shorter_than_its_call(tok):
    from benchmarks.decode_speed import scheduled_model

    with pytest.raises(ValueError, match="must exceed"):
        scheduled_model("micro", tok, "Ada Lovelace", "birth year", period=3)


# --------------------------------------------------------------------------- prompts inside calls, per-row limits, logprobs


def test_prompt_ending_inside_a_call_is_completed_with_one_lookup(tok):
    from runtime_fakes import ScriptedLM

    after = "Ada Lovelace was born in <|db_entity|> Ada Lovelace<|db_relationship|> birth year<|db_return|>"
    mid = "Ada Lovelace was born in <|db_entity|> Ada Lov"
    model = ScriptedLM(tok, {after: " 1815 in London.", mid: "elace<|db_relationship|> birth year<|db_return|> 1815 in London."})
    store = DictStore(FACTS)
    done_after, done_mid = interleaved_generate(model, tok, [after, mid], store)
    assert done_after.raw_text == " 1815<|db_end|> 1815 in London."  # the value first, then the model goes on
    assert done_mid.raw_text == "elace<|db_relationship|> birth year<|db_return|> 1815<|db_end|> 1815 in London."
    assert done_after.text == done_mid.text == "1815 in London."  # the call begun in the prompt is stripped whole
    assert store.queries == [("Ada Lovelace", "birth year")] * 2  # one lookup each
    assert done_after.lookups[0].position == -1  # the <|db_return|> that asked is the prompt's last token
    assert done_mid.token_ids[done_mid.lookups[0].position] == call_token_ids(tok).ret
    pieces = list(stream_generate(model, tok, mid, store))
    assert "".join(pieces) == "1815 in London." and not any("<|" in p for p in pieces)


def test_rows_keep_their_own_limits_and_stop_strings(tok):
    from lmlm_agent.decoding import Prompt

    rows = [Prompt("Ada Lovelace", max_new_tokens=4), Prompt("Ada Lovelace", stop_strings=("London",)), "Ko Itakura"]
    short, stopped, full = interleaved_generate(scripted(tok), tok, rows, DictStore(FACTS))
    assert (short.finish_reason, short.generated_tokens) == ("length", 4)
    assert stopped.finish_reason == "stop" and stopped.text == " was born in 1815 in "
    assert full.raw_text == KO and full.finish_reason == "eos"


def test_logprobs_are_the_models_and_cover_chosen_tokens_only(tok, micro):
    (out,) = interleaved_generate(micro, tok, "Ada Lovelace was born", DictStore(FACTS), DecodingConfig(max_new_tokens=30, logprobs=3))
    assert len(out.logprobs) == out.generated_tokens  # one per choice: injected value tokens have none
    written = [lp for lp in out.logprobs if lp.position < len(out.token_ids)]
    assert all(out.token_ids[lp.position] == lp.token_id for lp in written)
    assert all(len(lp.top) == 3 and lp.top[0][1] >= lp.logprob - 1e-6 and lp.logprob <= 0 for lp in out.logprobs)
    (plain,) = interleaved_generate(micro, tok, "Ada Lovelace was born", DictStore(FACTS), DecodingConfig(max_new_tokens=30))
    assert plain.token_ids == out.token_ids and plain.logprobs == []  # recording changes nothing


def test_a_cancelled_row_leaves_the_batch(tok):
    model = scripted(tok)
    decoder = InterleavedDecoder(model, tok, ["Ada Lovelace", "The capital of France"], DictStore(FACTS), DecodingConfig())
    decoder.step()
    decoder.cancel(1)
    decoder.step()
    assert decoder.active == [0] and model.batch_sizes[-1] == 1
    outs = decoder.run()
    assert outs[0].raw_text == ADA and outs[1].finish_reason == "cancelled"


def test_a_stream_never_sends_part_of_a_stop_string(tok):
    pieces = list(stream_generate(scripted(tok), tok, "Ada Lovelace", DictStore(FACTS), DecodingConfig(stop_strings=("don.",))))
    assert "".join(pieces) == " was born in 1815 in Lon"  # the "d" that could start "don." was held back, never sent


def test_prompts_joining_a_running_batch_decode_as_if_alone(tok, micro):
    """Continuous batching: rows added mid-way (prefilled apart, caches merged) give what they give alone."""
    cfg = DecodingConfig(max_new_tokens=30, call_bias=True)
    store = DictStore(FACTS)
    decoder = InterleavedDecoder(micro, tok, [PROMPTS[0]], store, cfg)
    for _ in range(4):
        decoder.step()
    assert decoder.add([PROMPTS[1]]) == [1]
    for _ in range(7):
        decoder.step()
    assert decoder.add([PROMPTS[2], "Ada"]) == [2, 3]
    outs = decoder.run()
    alone = [interleaved_generate(micro, tok, p, store, cfg)[0] for p in PROMPTS + ["Ada"]]
    assert [o.token_ids for o in outs] == [o.token_ids for o in alone]
    assert any(r.match == "exact" for o in outs for r in o.lookups)


def test_scripted_rows_join_after_others_finished(tok):
    model = scripted(tok)
    decoder = InterleavedDecoder(model, tok, ["Ko Itakura"], DictStore(FACTS), DecodingConfig())
    while decoder.step():
        pass
    decoder.add(["Ada Lovelace", "The capital of France"])
    outs = decoder.run()
    assert [o.raw_text for o in outs] == [KO, ADA, PARIS]


def test_rows_with_their_own_sampling_share_a_batch(tok, micro):
    from lmlm_agent.decoding import Prompt

    store = DictStore(FACTS)
    greedy_alone = [interleaved_generate(micro, tok, p, store, DecodingConfig(max_new_tokens=20))[0].token_ids for p in PROMPTS]
    mixed = [Prompt(PROMPTS[0], temperature=0.0, logprobs=2), Prompt(PROMPTS[1], temperature=1.4, top_p=0.9),
             Prompt(PROMPTS[2], temperature=0.0)]
    outs = interleaved_generate(micro, tok, mixed, store, DecodingConfig(max_new_tokens=20, seed=4))
    assert outs[0].token_ids == greedy_alone[0] and outs[2].token_ids == greedy_alone[2]  # greedy rows unaffected
    again = interleaved_generate(micro, tok, mixed, store, DecodingConfig(max_new_tokens=20, seed=4))
    assert [o.token_ids for o in again] == [o.token_ids for o in outs]  # the seed reproduces the sampled row
    assert len(outs[0].logprobs) == outs[0].generated_tokens and all(len(lp.top) == 2 for lp in outs[0].logprobs)
    assert outs[1].logprobs == [] and outs[2].logprobs == []  # only the row that asked
