"""Interleaved decoding: the model writes a call, the runtime looks it up, splices the value in, and goes on.

One loop serves a batch of prompts. Every row generates until it writes
``<|db_return|>`` (recognised by token id); the runtime parses the open call from
that row's tokens, asks the store, and queues ``" value<|db_end|>"`` after it. The
KV cache is kept the whole time: a forward pass feeds each row only the tokens in
its queue, never re-encoding what the cache holds.

A row that just looked something up has several tokens queued while the others
have one. Two ways to feed that step, both exact:

- wide: every queue whole, right-aligned and padded on the left, the padding
  masked out of attention, so the last position of every row holds its
  next-token logits::

      row 0:  [ret  " 18" "15" end]   <- looked up "1815"
      row 1:  [pad  pad   pad  " the"]

- narrow: one queued token per row per step; a row chooses its next token only
  once its queue is empty, and meanwhile the others keep writing.

Wide costs one pass for the whole injection but pays for the padding of every
row; narrow costs a few extra (cheap, unpadded) steps to the row that looked up.
A step goes wide when at most ``max_padding`` of it would be padding (always for
a single prompt). Prompts are left-padded, position ids count each row's real
tokens only, so a row sees exactly what it would see unbatched. Finished rows
are dropped from the batch, with their cache rows.

The cache (:func:`growing_cache`) writes each step's keys and values into
buffers with spare room instead of concatenating: transformers' ``DynamicCache``
copies the whole cache every step, which on a CPU costs a sixth of a step at
900 tokens of context.

Any HF causal LM whose tokenizer has the four call tokens works, whatever its
padding set-up: padding positions only ever carry a valid id under a zero
attention mask (the pad id, else EOS, else 0), and only a *dedicated* pad token is
banned from being chosen (with ``pad_token = eos_token`` banning the pad would ban
EOS). A prompt may end inside a call: after ``<|db_return|>`` the value is looked
up before the first forward pass; mid-entity the model finishes the call and the
lookup happens when it writes ``<|db_return|>``, once.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator

import torch
from transformers.cache_utils import Cache, DynamicLayer

from lmlm_agent.format import ParseError, clean_field, parse, strip_calls
from lmlm_agent.tokenizer import call_token_ids
from tools.schema import UNKNOWN, Lookup, LookupResult

# The published decoding bias, in the order <|db_entity|>, <|db_relationship|>, <|db_return|>, <|db_end|>.
PUBLISHED_CALL_BIAS = (4.0, 2.0, 2.0, 2.0)


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends into buffers with spare room (doubled when full) instead of ``torch.cat``.

    ``keys``/``values`` are views of the filled part, so everything that reads a
    ``DynamicLayer`` reads this one the same way.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self.key_buffer = self.value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            self.key_buffer = self._grown(self.key_buffer, key_states, 2 * end)
            self.value_buffer = self._grown(self.value_buffer, value_states, 2 * end)
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self._set_length(end)
        return self.keys, self.values

    def _grown(self, buffer: torch.Tensor | None, like: torch.Tensor, capacity: int) -> torch.Tensor:
        new = like.new_empty(*like.shape[:2], capacity, like.shape[-1])
        if self.length:
            new[:, :, : self.length] = buffer[:, :, : self.length]
        return new

    def _set_length(self, length: int) -> None:
        self.length = length
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.is_initialized and self.length:
            self._set_length(max(0, self.length + tokens_to_remove))
        elif tokens_to_remove > 0:
            super().crop(tokens_to_remove)  # raises, as for a DynamicLayer

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized and self.length:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self._set_length(self.length)

    def append_rows(self, other: GrowingLayer, length: int) -> None:
        """Put ``other``'s rows after these, both histories right-aligned to ``length`` (the gap is for a zero mask)."""

        def aligned(buffer: torch.Tensor, filled: int) -> torch.Tensor:
            out = buffer.new_zeros(*buffer.shape[:2], 2 * length, buffer.shape[-1])
            out[:, :, length - filled : length] = buffer[:, :, :filled]
            return out

        self.key_buffer = torch.cat([aligned(self.key_buffer, self.length), aligned(other.key_buffer, other.length)])
        self.value_buffer = torch.cat([aligned(self.value_buffer, self.length), aligned(other.value_buffer, other.length)])
        self._set_length(length)


def growing_cache() -> Cache:
    """A KV cache of :class:`GrowingLayer` s, made lazily, one per attention layer."""
    return Cache(layer_class_to_replicate=GrowingLayer)


@dataclass
class DecodingConfig:
    max_new_tokens: int = field(default=128, metadata={"help": "tokens the model writes per answer; injected values do not count"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy argmax"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature when sampling"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens when sampling (0: all)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1.0: all)"})
    seed: int | None = field(default=None, metadata={"help": "seed of the sampling generator (reproducible for a given batch)"})
    repetition_penalty: float = field(default=1.2, metadata={"help": "HF-style penalty on every token already in the row (prompt, written, injected)"})
    call_bias: bool = field(default=False, metadata={"help": "add the published logit bias: +4 on <|db_entity|>, +2 on the other three call tokens"})
    max_lookups: int = field(default=10, metadata={"help": "lookups per answer; after that the model may not open another call"})
    stop_strings: tuple[str, ...] = field(
        default=(), metadata={"help": "finish a row once its written text contains one of these; the text ends before it"})
    force_lookup_start: bool = field(default=False, metadata={"help": "the answer starts with <|db_entity|> (cloze: the model must name the query)"})
    db_off: bool = field(default=False, metadata={"help": "every lookup returns 'unknown' (the ablation)"})
    abstain_on_unknown: bool = field(
        default=True,
        metadata={"help": "after a lookup the store answers 'unknown' (a miss, a deleted row or a store error; never "
                  "under db_off), the text goes on with ' unknown' and the sentence ends: the model repeats what the "
                  "database said, as its corpus repeats every looked-up value, instead of stating a value from its "
                  "weights (docs/runtime.md, abstention). False: the model goes on as it was trained"},
    )
    logprobs: int | None = field(
        default=None,
        metadata={"help": "record each written token's log-probability under the model (before penalties and bias) "
                  "and its N most likely alternatives (0: the chosen token only; None: record nothing)"},
    )
    max_padding: float = field(
        default=0.5,
        metadata={"help": "largest share of padding a step may carry to feed injected values whole; "
                  "beyond it each row feeds one queued token per step (same tokens, less wasted compute)"},
    )

    def __post_init__(self) -> None:
        # A list from JSON or the CLI must still hash and compare like the default.
        self.stop_strings = tuple(self.stop_strings)


@dataclass
class LookupRecord:
    """One call the model made: what it asked, what came back, from where, and how long it took."""

    entity: str
    relation: str
    value: str
    fact_id: int | None = None
    score: float | None = None
    match: str = "miss"  # the store's exact/semantic/fallback/miss, or off, malformed, error
    source: str | None = None
    latency_s: float = 0.0
    position: int = 0  # index in GenerationOutput.token_ids of the <|db_return|> that asked (-1: the prompt's last token)
    error: str | None = None
    # A multi-valued answer: (fact_id, value, source) of each value spliced in (joined) as ``value``, in the
    # store's order, so every row can be cited and forgotten by its own id. Empty for a single value.
    values: tuple[tuple[int, str, str | None], ...] = ()


@dataclass
class TokenLogprob:
    """A token the model chose, with its log-probability and the most likely alternatives (``logprobs`` set)."""

    position: int  # index in GenerationOutput.token_ids (len(token_ids) for the EOS that ended the row)
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), most likely first


@dataclass
class Prompt:
    """A prompt with settings of its own (None: the batch's :class:`DecodingConfig`'s), so unlike requests share a batch."""

    text: str
    max_new_tokens: int | None = None
    stop_strings: tuple[str, ...] | None = None
    temperature: float | None = None  # 0: greedy; above 0: sampling at that temperature
    top_p: float | None = None
    logprobs: int | None = None


@dataclass
class GenerationOutput:
    prompt: str
    raw_text: str  # what the model wrote with the calls and injected values kept (ending before a stop string)
    text: str  # the display text: calls stripped (a call the prompt left open included)
    token_ids: list[int]  # written + injected ids after the prompt (EOS excluded; a stop string's tokens included)
    lookups: list[LookupRecord]
    finish_reason: str  # eos, length (max_new_tokens), stop (a stop string), context (window full), cancelled
    generated_tokens: int  # ids the model chose (including a forced <|db_entity|>)
    injected_tokens: int  # value + <|db_end|> ids the runtime spliced in
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per chosen token, when asked for


def token_first_chars(tokenizer) -> tuple[str, ...]:
    """The first character of every token's text ('' for none), decoded once per tokenizer and vocabulary size (a
    server decodes many requests with one; a token added later is seen): both abstention rules read it."""
    return _first_chars(tokenizer, len(tokenizer))


@lru_cache(maxsize=4)
def _first_chars(tokenizer, size: int) -> tuple[str, ...]:
    return tuple(tokenizer.decode([i])[:1] for i in range(size))


def _left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros(mask.shape[0], width - mask.shape[1]), mask], dim=1)


def _eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a row: the tokenizer's EOS and the model's generation-config EOS id(s)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple, set)) else [configured])
    return {i for i in ids if isinstance(i, int)}


def resolve(lookup: Lookup | None, entity: str, relation: str, db_off: bool = False) -> LookupRecord:
    """Ask the lookup, never raising: an exception from it becomes an ``unknown`` with the error kept."""
    if lookup is None or db_off:
        return LookupRecord(entity, relation, UNKNOWN, match="off")
    start = time.perf_counter()
    try:
        hit = lookup.read(entity, relation)
    except Exception as exc:  # a broken store must not kill a whole batch mid-generation
        hit = LookupResult.miss(entity, relation, error=repr(exc))
    return LookupRecord(
        entity,
        relation,
        hit.value,
        fact_id=hit.fact_id,
        score=hit.score,
        match=hit.match,
        source=hit.source,
        latency_s=time.perf_counter() - start,
        error=hit.error,
        # A multi-valued answer cites each of its rows; a single value is the record itself.
        values=tuple((r.id, r.value, r.source) for r in hit.records) if len(hit.records) > 1 else (),
    )


@dataclass
class _Row:
    """One prompt's state while it decodes."""

    prompt: str
    prompt_ids: list[int]
    max_new_tokens: int
    stop_strings: tuple[str, ...]
    call_prefix: str = ""  # the call the prompt leaves open (its text), so the display text strips it whole
    ids: list[int] = field(default_factory=list)
    lookups: list[LookupRecord] = field(default_factory=list)
    generated: int = 0
    injected: int = 0
    queue: list[int] = field(default_factory=list)  # chosen or injected ids not yet fed to the model
    written_from: int = 0  # first index of ids written since the last injection (stop strings look only there)
    stop_from: int | None = None  # where the text searched for the stop string that ended the row began
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_logprobs: int | None = None  # None: record no log-probabilities
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    abstained: int = 0  # after the runtime wrote ' unknown' (abstain_on_unknown): 2, the sentence must end; 1, a word start

    @property
    def stop_window(self) -> int:
        return 4 * max((len(s) for s in self.stop_strings), default=0) + 1  # tokens >= 1 byte, chars <= 4 bytes


class InterleavedDecoder:
    """The batched decoding loop; ``step()`` until it returns False, then ``outputs()``."""

    def __init__(self, model, tokenizer, prompts: list[str | Prompt], lookup: Lookup | None, config: DecodingConfig):
        self.model, self.tokenizer, self.lookup, self.config = model, tokenizer, lookup, config
        self.call = call_token_ids(tokenizer)
        self.call_ids = list(self.call.all)
        self.call_bias = torch.tensor(PUBLISHED_CALL_BIAS, device=model.device)
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        # Padding is always masked out, so any valid id will do; EOS (or 0) when the tokenizer has no pad token.
        self.pad = pad if pad is not None else next(iter(sorted(self.eos_ids)), 0)
        # A dedicated pad token is never a token to write; a pad that *is* EOS must stay choosable.
        self.banned_pad = pad if pad is not None and pad not in self.eos_ids else None
        self.device = model.device
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        # transformers 5 renamed past_key_values to cache; the cache object is updated in place either way.
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.generator = None
        if config.seed is not None:
            self.generator = torch.Generator(self.device).manual_seed(config.seed)

        self.rows: list[_Row] = [self._new_row(p) for p in prompts]
        self.active = list(range(len(self.rows)))  # batch slot -> row index
        self._prefill(self.rows)

    def _new_row(self, prompt: str | Prompt) -> _Row:
        spec = prompt if isinstance(prompt, Prompt) else Prompt(prompt)
        # An empty prompt still needs one token to predict from: start at a document boundary.
        ids = self.tokenizer.encode(spec.text, add_special_tokens=False) or [self.eos_boundary]
        row = _Row(
            spec.text,
            ids[-(self.max_positions - 1) :],
            max_new_tokens=self.config.max_new_tokens if spec.max_new_tokens is None else spec.max_new_tokens,
            stop_strings=tuple(self.config.stop_strings if spec.stop_strings is None else spec.stop_strings),
            temperature=(self.config.temperature if self.config.do_sample else 0.0) if spec.temperature is None else spec.temperature,
            top_p=self.config.top_p if spec.top_p is None else spec.top_p,
            top_logprobs=self.config.logprobs if spec.logprobs is None else spec.logprobs,
        )
        self._enter_open_call(row)
        if self.config.force_lookup_start and not row.call_prefix:
            row.ids.append(self.call.entity)
            row.generated = 1
        return row

    def add(self, prompts: list[str | Prompt]) -> list[int]:
        """Join new prompts to the running batch (continuous batching); returns their row indices.

        The new rows are prefilled in a cache of their own, then appended to the
        batch: the shorter of the two histories is left-padded under a zero mask,
        and each row keeps its own position ids, so every row still sees exactly
        what it would see alone.
        """
        rows = [self._new_row(p) for p in prompts]
        first = len(self.rows)
        self.rows += rows
        added = list(range(first, len(self.rows)))
        if not self.active:
            self.active = added
            self._prefill(rows)
            return added
        running = (self.cache, self.attention_mask, self.positions, self.seen, self.logits, self.active)
        self.active = added
        self._prefill(rows)
        cache, mask, positions, seen, logits, active = running
        width = max(mask.shape[1], self.attention_mask.shape[1])
        for layer, new in zip(cache.layers, self.cache.layers):
            layer.append_rows(new, width)
        self.cache = cache
        self.attention_mask = torch.cat([_left_pad(mask, width), _left_pad(self.attention_mask, width)])
        self.positions = torch.cat([positions, self.positions])
        self.seen = torch.cat([seen, self.seen])
        self.logits = torch.cat([logits, self.logits])
        self.active = active + added
        return added

    @property
    def eos_boundary(self) -> int:
        return next(iter(sorted(self.eos_ids)), self.pad)

    def _enter_open_call(self, row: _Row) -> None:
        """A prompt that ends inside a call: keep the call's text for display, and look it up now if it asks already."""
        seq = row.prompt_ids
        start = next((i for i in range(len(seq) - 1, -1, -1) if seq[i] == self.call.entity), None)
        if start is None:
            return
        tail = self.tokenizer.decode(seq[start:], skip_special_tokens=False)
        last = parse(tail).segments[-1]
        if not (isinstance(last, ParseError) and last.kind == "unterminated") and seq[-1] != self.call.ret:
            return  # the prompt's last call is closed
        row.call_prefix = tail
        if seq[-1] == self.call.ret:
            self._inject(row)
            row.lookups[-1].position = -1
            row.written_from = len(row.ids)

    # ----------------------------------------------------------------- model calls
    def _forward(self, input_ids: torch.Tensor, new_mask: torch.Tensor, position_ids: torch.Tensor) -> None:
        self.attention_mask = torch.cat([self.attention_mask, new_mask], dim=1)
        with torch.no_grad():
            out = self.model(
                input_ids=input_ids,
                attention_mask=self.attention_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_kw: self.cache},
            )
        self.logits = out.logits[:, -1, :].float()

    def _prefill(self, rows: list[_Row]) -> None:
        self.cache = growing_cache()  # layers made on first use: full attention, as in every preset
        self.attention_mask = torch.zeros(len(rows), 0, dtype=torch.long, device=self.device)
        feeds = [r.prompt_ids + r.ids for r in rows]
        vocab = self.model.config.vocab_size
        self.seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=self.device)
        for slot, feed in enumerate(feeds):
            self.seen[slot, feed] = True
        self.positions = torch.zeros(len(rows), dtype=torch.long, device=self.device)
        self._feed(feeds)

    def _feed(self, feeds: list[list[int]]) -> None:
        """One forward pass: each active row's new tokens, right-aligned, left-padded, padding masked."""
        width = max(len(f) for f in feeds)
        lengths = torch.tensor([len(f) for f in feeds], device=self.device)
        if width == 1:  # the common step: one token each, no padding to build
            input_ids = torch.tensor(feeds, device=self.device)
            new_mask = torch.ones(len(feeds), 1, dtype=torch.long, device=self.device)
            position_ids = self.positions[:, None]
        else:
            input_ids = torch.tensor([[self.pad] * (width - len(f)) + f for f in feeds], device=self.device)
            offsets = torch.arange(width, device=self.device)[None, :] - (width - lengths)[:, None]
            new_mask = (offsets >= 0).long()
            # Padding gets the row's next position too; it is masked out, so its value only has to be valid.
            position_ids = self.positions[:, None] + offsets.clamp(min=0)
        self.positions = self.positions + lengths
        self._forward(input_ids, new_mask, position_ids)

    # ----------------------------------------------------------------- choosing tokens
    def _scores(self, slots: list[int]) -> torch.Tensor:
        """Next-token scores of the rows in ``slots``: penalties, bias and bans applied to their logits."""
        cfg = self.config
        every = len(slots) == len(self.active)  # the usual case: no gather needed
        scores = self.logits if every else self.logits[slots]
        if cfg.repetition_penalty != 1.0:
            penalised = torch.where(scores > 0, scores / cfg.repetition_penalty, scores * cfg.repetition_penalty)
            scores = torch.where(self.seen if every else self.seen[slots], penalised, scores)
        if cfg.call_bias:
            scores[:, self.call_ids] += self.call_bias
        if self.banned_pad is not None:
            scores[:, self.banned_pad] = float("-inf")
        # A model that never wrote "unknown" as text goes on with the value it remembers ("unknownayor", "unknown 18."),
        # or, words banned, with a call that asks someone else ("unknown <call> Galford.") or with ".ayor". ``unknown``
        # stands for the whole value: the sentence ends there, and what follows starts a new word.
        ending = [i for i, slot in enumerate(slots) if self.rows[self.active[slot]].abstained == 2]
        if ending:
            rows = torch.tensor(ending, device=self.device)
            scores[rows] = scores[rows].masked_fill(~self._sentence_enders(), float("-inf"))
        ended = [i for i, slot in enumerate(slots) if self.rows[self.active[slot]].abstained == 1]
        if ended:
            scores[torch.tensor(ended, device=self.device)[:, None], self._word_pieces()[None, :]] = float("-inf")
        spent = [i for i, slot in enumerate(slots) if len(self.rows[self.active[slot]].lookups) >= cfg.max_lookups]
        if spent:  # no new call, and no <|db_return|> that would count as one
            scores[spent, self.call.entity] = float("-inf")
            scores[spent, self.call.ret] = float("-inf")
        return scores

    def _word_pieces(self) -> torch.Tensor:
        """Ids of the tokens that continue a word (their text starts with a letter or digit: no leading space)."""
        if not hasattr(self, "_word_piece_ids"):
            ids = [i for i, c in enumerate(token_first_chars(self.tokenizer)) if c.isalnum()]
            self._word_piece_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self._word_piece_ids

    def _sentence_enders(self) -> torch.Tensor:
        """A mask over the vocabulary: EOS and the tokens whose text starts with '.' or a newline (a statement's ends:
        "unknown!" or "unknown?" would read as an exclamation or a question)."""
        if not hasattr(self, "_sentence_end_mask"):
            mask = torch.zeros(len(self.tokenizer), dtype=torch.bool, device=self.device)
            ends = [i for i, c in enumerate(token_first_chars(self.tokenizer)) if c in (".", "\n")]
            mask[ends + sorted(self.eos_ids)] = True
            self._sentence_end_mask = mask
        return self._sentence_end_mask

    def _choose(self, scores: torch.Tensor, slots: list[int]) -> list[int]:
        """Greedy for rows at temperature 0; the others sample, each with its own temperature and top_p."""
        rows = [self.rows[self.active[slot]] for slot in slots]
        sampled = [i for i, row in enumerate(rows) if row.temperature > 0]
        chosen = scores.argmax(dim=-1)
        if not sampled:
            return chosen.tolist()
        every = len(sampled) == len(rows)
        index = torch.tensor(sampled, device=self.device)
        temperature = torch.tensor([rows[i].temperature for i in sampled], device=self.device)
        top_p = torch.tensor([rows[i].top_p for i in sampled], device=self.device)[:, None]
        scores = (scores if every else scores[index]) / temperature.clamp(min=1e-5)[:, None]
        if self.config.top_k > 0:
            kth = torch.topk(scores, min(self.config.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if bool((top_p < 1.0).any()):
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            probs = sorted_scores.softmax(-1)
            # Keep the smallest prefix whose mass reaches top_p (rows at top_p 1 keep everything).
            drop = (probs.cumsum(-1) - probs >= top_p) & (top_p < 1.0)
            scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
        picks = torch.multinomial(scores.softmax(-1), 1, generator=self.generator).squeeze(-1)
        chosen[index] = picks
        return chosen.tolist()

    # ----------------------------------------------------------------- lookups
    def _inject(self, row: _Row) -> list[int]:
        """Parse the call the row (or its prompt) just closed with <|db_return|>, look it up, append value + <|db_end|>."""
        seq = row.prompt_ids + row.ids
        # The call starts at the last <|db_entity|>; if that call is already closed, parse finds no pending call.
        start = next((i for i in range(len(seq) - 1, -1, -1) if seq[i] == self.call.entity), len(seq) - 1)
        pending = parse(self.tokenizer.decode(seq[start:], skip_special_tokens=False)).pending
        if pending is None:
            record = LookupRecord("", "", UNKNOWN, match="malformed")
        else:
            record = resolve(self.lookup, pending.entity, pending.relation, self.config.db_off)
        record.position = len(row.ids) - 1
        row.lookups.append(record)
        value = clean_field(record.value)
        injected = self.tokenizer.encode(" " + value, add_special_tokens=False) + [self.call.end]
        if self.config.abstain_on_unknown and record.value == UNKNOWN and record.match != "off":
            injected += self.tokenizer.encode(" " + UNKNOWN, add_special_tokens=False)
            row.abstained = 2
        row.ids.extend(injected)
        row.injected += len(injected)
        row.written_from = len(row.ids)
        return injected

    def _hit_stop(self, row: _Row) -> bool:
        if not row.stop_strings:
            return False
        start = max(row.written_from, len(row.ids) - row.stop_window)
        text = self.tokenizer.decode(row.ids[start:], skip_special_tokens=False)
        if any(s in text for s in row.stop_strings):
            row.stop_from = start
            return True
        return False

    # ----------------------------------------------------------------- the loop
    def step(self) -> bool:
        """Choose a token for every row that is due one, do the lookups, feed what is queued. False when all are done."""
        if not self.active:
            return False
        # A row whose queue is empty was fed everything it had: its last logits predict its next token.
        ready = [slot for slot, r in enumerate(self.active) if not self.rows[r].queue and self.rows[r].finish_reason is None]
        if ready:
            chosen = self._choose(self._scores(ready), ready)
            self._record_logprobs(ready, chosen)
            seen_slots, seen_ids = [], []
            for slot, token in zip(ready, chosen):
                row = self.rows[self.active[slot]]
                self._accept(row, token)
                seen_slots += [slot] * len(row.queue)
                seen_ids += row.queue
            self.seen[seen_slots, seen_ids] = True
        keep = [slot for slot, r in enumerate(self.active) if self.rows[r].finish_reason is None]
        if len(keep) < len(self.active):
            self._drop_finished(keep)
        if not self.active:
            return False
        self._feed_queues()
        return True

    def _record_logprobs(self, ready: list[int], chosen: list[int]) -> None:
        """For the rows that asked: the chosen token's log-probability under the model, and the top alternatives."""
        asking = [i for i, slot in enumerate(ready) if self.rows[self.active[slot]].top_logprobs is not None]
        if not asking:
            return
        slots = [ready[i] for i in asking]
        logp = (self.logits if len(slots) == len(self.active) else self.logits[slots]).log_softmax(-1)
        tokens = [chosen[i] for i in asking]
        picked = logp.gather(1, torch.tensor(tokens, device=self.device)[:, None]).squeeze(1).tolist()
        most = max(self.rows[self.active[slot]].top_logprobs for slot in slots)
        top = torch.topk(logp, min(most, logp.shape[-1]), dim=-1) if most else None
        for j, (slot, token) in enumerate(zip(slots, tokens)):
            row = self.rows[self.active[slot]]
            n = row.top_logprobs
            alternatives = list(zip(top.indices[j, :n].tolist(), top.values[j, :n].tolist())) if top is not None and n else []
            row.logprobs.append(TokenLogprob(len(row.ids), token, picked[j], alternatives))

    def cancel(self, r: int) -> None:
        """Stop row ``r`` (its client went away): it leaves the batch, and the cache, at the next step."""
        if self.rows[r].finish_reason is None:
            self.rows[r].finish_reason = "cancelled"
            self.rows[r].queue = []

    def _accept(self, row: _Row, token: int) -> None:
        """Append the chosen token (and, after <|db_return|>, the looked-up value) or finish the row."""
        row.generated += 1
        row.abstained = max(0, row.abstained - 1)
        if token in self.eos_ids:
            row.finish_reason = "eos"
            return
        row.ids.append(token)
        row.queue = [token]
        if token == self.call.ret:
            row.queue += self._inject(row)
        elif self._hit_stop(row):
            row.finish_reason = "stop"
        if row.finish_reason is None and row.generated >= row.max_new_tokens:
            row.finish_reason = "length"
        if row.finish_reason is None and len(row.prompt_ids) + len(row.ids) > self.max_positions:
            row.finish_reason = "context"

    def _feed_queues(self) -> None:
        """Feed every row's queue whole in one wide step, or, if that step would be mostly padding, one token each."""
        queues = [self.rows[r].queue for r in self.active]
        longest = max(len(q) for q in queues)
        real = sum(len(q) for q in queues)
        width = longest if real >= (1 - self.config.max_padding) * len(queues) * longest else 1
        for r in self.active:
            self.rows[r].queue = self.rows[r].queue[width:]
        self._feed([q[:width] for q in queues])

    def _drop_finished(self, keep: list[int]) -> None:
        self.active = [self.active[slot] for slot in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.positions = self.positions[index]
        self.seen = self.seen[index]

    def run(self) -> list[GenerationOutput]:
        while self.step():
            pass
        return self.outputs()

    def raw_text(self, r: int) -> str:
        """Row ``r``'s text so far, calls and values kept; once a stop string ended it, up to that string."""
        row = self.rows[r]
        raw = self.tokenizer.decode(row.ids, skip_special_tokens=False)
        if row.stop_from is None:
            return raw
        searched = len(self.tokenizer.decode(row.ids[: row.stop_from], skip_special_tokens=False))
        return raw[: min(i for i in (raw.find(s, searched) for s in row.stop_strings) if i >= 0)]

    def display_text(self, r: int, raw: str | None = None) -> str:
        """The calls-stripped text of row ``r`` (a call its prompt left open is stripped whole)."""
        row = self.rows[r]
        raw = self.raw_text(r) if raw is None else raw
        return strip_calls(row.call_prefix + raw) if row.call_prefix else strip_calls(raw)

    def output(self, r: int) -> GenerationOutput:
        row = self.rows[r]
        raw = self.raw_text(r)
        return GenerationOutput(
            prompt=row.prompt,
            raw_text=raw,
            text=self.display_text(r, raw),
            token_ids=list(row.ids),
            lookups=row.lookups,
            finish_reason=row.finish_reason or "length",
            generated_tokens=row.generated,
            injected_tokens=row.injected,
            logprobs=row.logprobs,
        )

    def outputs(self) -> list[GenerationOutput]:
        return [self.output(r) for r in range(len(self.rows))]


def interleaved_generate(
    model, tokenizer, prompts: str | list[str], lookup: Lookup | None = None, config: DecodingConfig | None = None
) -> list[GenerationOutput]:
    """Generate for every prompt in one batch, looking calls up as the model writes them."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        return []
    return InterleavedDecoder(model, tokenizer, prompts, lookup, config or DecodingConfig()).run()


def settled_text(raw: str) -> str:
    """The display text of a raw text that may still grow: an open call at the end is held back.

    Growing ``raw`` only ever appends to this, which is what lets a stream send pieces.
    """
    parsed = parse(raw)
    last = parsed.segments[-1] if parsed.segments else None
    if isinstance(last, ParseError) and last.kind == "unterminated":
        parsed.segments.pop()
    return parsed.plain.rstrip("\ufffd")  # a character whose bytes have not all arrived yet


class TextStream:
    """The pieces of one row's text as it decodes, each sent once; their concatenation is the final text.

    Held back until settled: an open call (display text), a character whose bytes
    have not all arrived, and a tail that could still grow into a stop string (the
    decoder ends the text before a stop string, so no piece of one is ever sent).
    With ``strip`` the final text is ``text.strip()`` (a chat answer's layout
    spaces): leading whitespace is dropped and trailing whitespace held back.
    """

    def __init__(self, decoder: InterleavedDecoder, r: int, keep_calls: bool = False, strip: bool = False):
        self.decoder, self.r, self.keep_calls, self.strip = decoder, r, keep_calls, strip
        self.stops = [s for s in decoder.rows[r].stop_strings if s]
        self.sent = ""

    def update(self) -> str:
        """The new settled text since the last call ('' if none)."""
        row = self.decoder.rows[self.r]
        if row.finish_reason is not None:
            return self.finish()
        raw = self.decoder.raw_text(self.r)
        visible = raw.rstrip("\ufffd") if self.keep_calls else settled_text(row.call_prefix + raw)
        hold = max((k for s in self.stops for k in range(1, len(s)) if visible.endswith(s[:k])), default=0)
        visible = visible[: len(visible) - hold]
        return self._send(visible.strip() if self.strip else visible)

    def finish(self) -> str:
        """The rest of the final text (call once the row has finished)."""
        raw = self.decoder.raw_text(self.r)
        final = raw if self.keep_calls else self.decoder.display_text(self.r, raw)
        return self._send(final.strip() if self.strip else final)

    def _send(self, visible: str) -> str:
        if len(visible) <= len(self.sent) or not visible.startswith(self.sent):
            return ""
        piece, self.sent = visible[len(self.sent) :], visible
        return piece


def stream_generate(
    model, tokenizer, prompt: str, lookup: Lookup | None = None, config: DecodingConfig | None = None, keep_calls: bool = False
) -> Iterator[str]:
    """Yield text pieces for one prompt as it decodes; their concatenation is the final text.

    With ``keep_calls`` the pieces are the raw text (calls and values included),
    otherwise the display text. The generator returns the :class:`GenerationOutput`
    (``output = yield from stream_generate(...)``).
    """
    decoder = InterleavedDecoder(model, tokenizer, [prompt], lookup, config or DecodingConfig())
    stream = TextStream(decoder, 0, keep_calls)
    while decoder.step():
        if piece := stream.update():
            yield piece
    if piece := stream.finish():
        yield piece
    return decoder.outputs()[0]
