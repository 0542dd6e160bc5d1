"""The value mask on hand-written token sequences, packing, and QA rows."""

from __future__ import annotations

import pytest

from lmlm_agent.format import QA_PROMPT, render_call, strip_calls
from lmlm_agent.tokenizer import CallTokenIds, call_token_ids, train_tokenizer
from training.data import (
    IGNORE_INDEX,
    baseline_texts,
    call_block_mask,
    mask_labels,
    pack,
    qa_example,
    value_mask,
    with_abstentions,
)

E, R, RET, END = 90, 91, 92, 93
CALL = CallTokenIds(E, R, RET, END)
x = IGNORE_INDEX

#          text  <e> ent <r> rel <ret> value  <end> value  text
ONE_CALL = [1, 2, E, 3, R, 4, RET, 5, 6, END, 5, 6, 7]


def test_values_and_db_end_masked_everything_else_trained():
    assert mask_labels(ONE_CALL, CALL) == [1, 2, E, 3, R, 4, RET, x, x, x, 5, 6, 7]


def test_two_calls_and_an_empty_value():
    ids = [E, 3, R, 4, RET, END, 8, E, 3, R, 9, RET, 5, END, 5]
    assert mask_labels(ids, CALL) == [E, 3, R, 4, RET, x, 8, E, 3, R, 9, RET, x, x, 5]


def test_chunk_starting_inside_a_value_masks_until_db_end():
    # The window cut the call after <|db_return|> 5: the chunk opens with the rest of the value.
    chunk = ONE_CALL[8:] + [E, 3, R, 4, RET, 8]
    assert mask_labels(chunk, CALL) == [x, x, 5, 6, 7, E, 3, R, 4, RET, x]


def test_state_carried_across_every_cut_matches_the_whole_sequence():
    ids = [1] + ONE_CALL + [E, 3, R, 4, RET, 5, 6, 6, END, 7]
    whole = value_mask(ids, CALL, inside=False)
    for cut in range(len(ids) + 1):
        # The state a chunker carries: inside a value iff the last call token so far is <|db_return|>.
        last = next((t for t in reversed(ids[:cut]) if t in CALL.all), None)
        head = value_mask(ids[:cut], CALL, inside=False)
        assert head + value_mask(ids[cut:], CALL, inside=last == RET) == whole, cut


def test_malformed_sequences():
    # A stray <|db_end|> is masked (the runtime writes it); a value left open ends at the next call.
    assert mask_labels([1, END, 2], CALL, inside=False) == [1, x, 2]
    assert mask_labels([RET, 5, E, 3, R, 4, RET, 6, END], CALL) == [RET, x, E, 3, R, 4, RET, x, x]
    assert mask_labels([], CALL) == []


def test_call_block_mask():
    assert call_block_mask(ONE_CALL, CALL) == [False, False] + [True] * 8 + [False] * 3


@pytest.fixture(scope="module")
def tokenizer():
    texts = [
        "Ada Lovelace was born in " + render_call("Ada Lovelace", "birth year", "1815") + " 1815 in London.",
        "The Analytical Engine was designed by " + render_call("Analytical Engine", "designer", "Charles Babbage")
        + " Charles Babbage.",
    ] * 20
    return train_tokenizer(texts, vocab_size=300)


def test_pack_masks_values_across_rows_and_drops_fully_masked_rows(tokenizer):
    long_value = "a very long looked-up value that fills whole rows " * 3
    texts = ["Born in " + render_call("Ada", "birth year", long_value) + " then.", "Plain text only."]
    call = call_token_ids(tokenizer)
    packed = pack(texts, tokenizer, context_length=4)
    stream = tokenizer(texts[0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    stream += tokenizer(texts[1], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    expected = mask_labels(stream, call)
    rows = [(stream[i : i + 4], expected[i : i + 4]) for i in range(0, len(stream), 4)]
    kept = [r for r in rows if any(t != x for t in r[1])]
    assert len(kept) < len(rows), "the long value should fill at least one row entirely"
    assert list(zip(packed.input_ids, packed.labels)) == kept
    assert packed.trained_tokens == sum(t != x for _, lab in kept for t in lab)
    # EOS ends each document and is trained.
    assert packed.input_ids[-1][-1] == tokenizer.eos_token_id and packed.labels[-1][-1] == tokenizer.eos_token_id


def test_pack_without_mask_and_baseline_text(tokenizer):
    texts = ["Born in " + render_call("Ada", "birth year", "1815") + " 1815."]
    assert baseline_texts(texts) == ["Born in 1815."] == [strip_calls(texts[0])]
    plain = pack(baseline_texts(texts), tokenizer, context_length=64)
    assert plain.labels == plain.input_ids
    assert call_token_ids(tokenizer).entity not in plain.input_ids[0]


def test_qa_example_masks_prompt_and_values(tokenizer):
    answer = render_call("Ada Lovelace", "birth year", "1815") + " In 1815."
    row = qa_example("When was Ada Lovelace born?", answer, tokenizer, max_length=128)
    prompt = tokenizer(QA_PROMPT.format(question="When was Ada Lovelace born?"), add_special_tokens=False)["input_ids"]
    labels = row["labels"]
    assert labels[: len(prompt)] == [x] * len(prompt)
    reply = row["input_ids"][len(prompt) :]
    assert labels[len(prompt) :] == mask_labels(reply, call_token_ids(tokenizer))
    assert reply[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(reply[:-1]) == " " + answer
    # A prompt that fills the window leaves nothing to train: no row.
    assert qa_example("When was Ada Lovelace born?", answer, tokenizer, max_length=len(prompt)) is None


def test_abstentions_answer_a_share_of_calls_unknown_in_the_call_and_the_text():
    bio = ("Ada was born in " + render_call("Ada", "birth place", "Lund") + " Lund. Ada works as a "
           + render_call("Ada", "occupation", "poet") + " poet.")
    assert with_abstentions([bio], share=0.0) == [bio]
    (every,) = with_abstentions([bio], share=1.0)
    assert every == ("Ada was born in " + render_call("Ada", "birth place", "unknown") + " unknown. Ada works as a "
                     + render_call("Ada", "occupation", "unknown") + " unknown.")
    assert strip_calls(every) == "Ada was born in unknown. Ada works as a unknown."
    some = with_abstentions([bio] * 400, share=0.1, seed=1)
    changed = sum(t.count("unknown") // 2 for t in some)
    assert 40 <= changed <= 120  # about 10 % of 800 calls
    assert with_abstentions([bio] * 400, share=0.1, seed=1) == some  # seeded
    # A call whose value the text does not repeat right after it is left alone.
    odd = "In " + render_call("Ada", "birth place", "Lund") + " the north."
    assert with_abstentions([odd], share=1.0) == [odd]


def test_abstention_keeps_the_loss_mask():
    """The returned `unknown` is masked like any value; the repeated `unknown` is trained."""
    tok = train_tokenizer(["Ada was born in Lund. unknown " * 20], vocab_size=300)
    (text,) = with_abstentions(["Ada was born in " + render_call("Ada", "birth place", "Lund") + " Lund."], 1.0)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    labels = mask_labels(ids, call_token_ids(tok))
    call = call_token_ids(tok)
    ret, end = ids.index(call.ret), ids.index(call.end)
    assert all(label == IGNORE_INDEX for label in labels[ret + 1 : end + 1])
    trained_after = tok.decode([t for t in labels[end + 1 :] if t != IGNORE_INDEX])
    assert "unknown" in trained_after
