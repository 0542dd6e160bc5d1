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
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch
from transformers.cache_utils import Cache, DynamicLayer

from lmlm_agent.format import ParseError, clean_field, parse, strip_calls
from lmlm_agent.tokenizer import call_token_ids

UNKNOWN = "unknown"
# The published decoding bias, in the order <|db_entity|>, <|db_relationship|>, <|db_return|>, <|db_end|>.
PUBLISHED_CALL_BIAS = (4.0, 2.0, 2.0, 2.0)


class Store(Protocol):
    """What the runtime needs from the knowledge layer (``tools.KnowledgeStore`` is one)."""

    def read(self, entity: str, relation: str) -> Any: ...


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
    stop_strings: tuple[str, ...] = field(default=(), metadata={"help": "finish a row once its written text contains one of these"})
    force_lookup_start: bool = field(default=False, metadata={"help": "the answer starts with <|db_entity|> (cloze: the model must name the query)"})
    db_off: bool = field(default=False, metadata={"help": "every lookup returns 'unknown' (the ablation)"})
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
    position: int = 0  # index in GenerationOutput.token_ids of the <|db_return|> that asked
    error: str | None = None


@dataclass
class GenerationOutput:
    prompt: str
    raw_text: str  # what the model wrote with the calls and injected values kept
    text: str  # the display text: calls stripped
    token_ids: list[int]  # written + injected ids after the prompt (EOS excluded)
    lookups: list[LookupRecord]
    finish_reason: str  # eos, length (max_new_tokens), stop (a stop string), context (window full)
    generated_tokens: int  # ids the model chose (including a forced <|db_entity|>)
    injected_tokens: int  # value + <|db_end|> ids the runtime spliced in


def resolve(lookup: Store | None, entity: str, relation: str, db_off: bool = False) -> LookupRecord:
    """Ask the store, never raising: an exception from the store becomes an ``unknown`` with the error kept."""
    if lookup is None or db_off:
        return LookupRecord(entity, relation, UNKNOWN, match="off")
    start = time.perf_counter()
    try:
        hit = lookup.read(entity, relation)
    except Exception as exc:  # a broken store must not kill a whole batch mid-generation
        return LookupRecord(entity, relation, UNKNOWN, match="error", latency_s=time.perf_counter() - start, error=repr(exc))
    return LookupRecord(
        entity,
        relation,
        str(hit.value),
        fact_id=getattr(hit, "fact_id", None),
        score=getattr(hit, "score", None),
        match=getattr(hit, "match", "exact"),
        source=getattr(hit, "source", None),
        latency_s=time.perf_counter() - start,
    )


@dataclass
class _Row:
    """One prompt's state while it decodes."""

    prompt: str
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    lookups: list[LookupRecord] = field(default_factory=list)
    generated: int = 0
    injected: int = 0
    queue: list[int] = field(default_factory=list)  # chosen or injected ids not yet fed to the model
    written_from: int = 0  # first index of ids written since the last injection (stop strings look only there)
    finish_reason: str | None = None


class InterleavedDecoder:
    """The batched decoding loop; ``step()`` until it returns False, then ``outputs()``."""

    def __init__(self, model, tokenizer, prompts: list[str], lookup: Store | None, config: DecodingConfig):
        self.model, self.tokenizer, self.lookup, self.config = model, tokenizer, lookup, config
        self.call = call_token_ids(tokenizer)
        self.call_ids = list(self.call.all)
        self.call_bias = torch.tensor(PUBLISHED_CALL_BIAS, device=model.device)
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.device = model.device
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        # transformers 5 renamed past_key_values to cache; the cache object is updated in place either way.
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.generator = None
        if config.do_sample and config.seed is not None:
            self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.stop_window = 4 * max((len(s) for s in config.stop_strings), default=0) + 1  # tokens >= 1 byte, chars <= 4 bytes

        self.rows: list[_Row] = []
        for prompt in prompts:
            # An empty prompt still needs one token to predict from: start at a document boundary.
            ids = tokenizer.encode(prompt, add_special_tokens=False) or [self.eos]
            row = _Row(prompt, ids[-(self.max_positions - 1) :])
            if config.force_lookup_start:
                row.ids.append(self.call.entity)
                row.generated = 1
            self.rows.append(row)
        self.active = list(range(len(self.rows)))  # batch slot -> row index
        self._prefill()

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

    def _prefill(self) -> None:
        self.cache = growing_cache()  # layers made on first use: full attention, as in every preset
        self.attention_mask = torch.zeros(len(self.rows), 0, dtype=torch.long, device=self.device)
        feeds = [r.prompt_ids + r.ids for r in self.rows]
        vocab = self.model.config.vocab_size
        self.seen = torch.zeros(len(self.rows), vocab, dtype=torch.bool, device=self.device)
        for slot, feed in enumerate(feeds):
            self.seen[slot, feed] = True
        self.positions = torch.zeros(len(self.rows), dtype=torch.long, device=self.device)
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
        scores[:, self.pad] = float("-inf")
        spent = [i for i, slot in enumerate(slots) if len(self.rows[self.active[slot]].lookups) >= cfg.max_lookups]
        if spent:  # no new call, and no <|db_return|> that would count as one
            scores[spent, self.call.entity] = float("-inf")
            scores[spent, self.call.ret] = float("-inf")
        return scores

    def _choose(self, scores: torch.Tensor) -> list[int]:
        cfg = self.config
        if not cfg.do_sample:
            return scores.argmax(dim=-1).tolist()
        scores = scores / max(cfg.temperature, 1e-5)
        if cfg.top_k > 0:
            kth = torch.topk(scores, min(cfg.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if cfg.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            probs = sorted_scores.softmax(-1)
            drop = probs.cumsum(-1) - probs >= cfg.top_p  # keep the smallest prefix whose mass reaches top_p
            scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
        probs = scores.softmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1).tolist()

    # ----------------------------------------------------------------- lookups
    def _inject(self, row: _Row) -> list[int]:
        """Parse the call the row just closed with <|db_return|>, look it up, append value + <|db_end|>."""
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
        row.ids.extend(injected)
        row.injected += len(injected)
        row.written_from = len(row.ids)
        return injected

    def _hit_stop(self, row: _Row) -> bool:
        if not self.config.stop_strings:
            return False
        tail = row.ids[max(row.written_from, len(row.ids) - self.stop_window) :]
        text = self.tokenizer.decode(tail, skip_special_tokens=False)
        return any(s in text for s in self.config.stop_strings)

    # ----------------------------------------------------------------- the loop
    def step(self) -> bool:
        """Choose a token for every row that is due one, do the lookups, feed what is queued. False when all are done."""
        if not self.active:
            return False
        # A row whose queue is empty was fed everything it had: its last logits predict its next token.
        ready = [slot for slot, r in enumerate(self.active) if not self.rows[r].queue]
        if ready:
            seen_slots, seen_ids = [], []
            for slot, token in zip(ready, self._choose(self._scores(ready))):
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

    def _accept(self, row: _Row, token: int) -> None:
        """Append the chosen token (and, after <|db_return|>, the looked-up value) or finish the row."""
        row.generated += 1
        if token == self.eos:
            row.finish_reason = "eos"
            return
        row.ids.append(token)
        row.queue = [token]
        if token == self.call.ret:
            row.queue += self._inject(row)
        elif self._hit_stop(row):
            row.finish_reason = "stop"
        if row.finish_reason is None and row.generated >= self.config.max_new_tokens:
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
        return self.tokenizer.decode(self.rows[r].ids, skip_special_tokens=False)

    def outputs(self) -> list[GenerationOutput]:
        outs = []
        for r, row in enumerate(self.rows):
            raw = self.raw_text(r)
            outs.append(
                GenerationOutput(
                    prompt=row.prompt,
                    raw_text=raw,
                    text=strip_calls(raw),
                    token_ids=list(row.ids),
                    lookups=row.lookups,
                    finish_reason=row.finish_reason or "length",
                    generated_tokens=row.generated,
                    injected_tokens=row.injected,
                )
            )
        return outs


def interleaved_generate(
    model, tokenizer, prompts: str | list[str], lookup: Store | None = None, config: DecodingConfig | None = None
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


def stream_generate(
    model, tokenizer, prompt: str, lookup: Store | None = None, config: DecodingConfig | None = None, keep_calls: bool = False
) -> Iterator[str]:
    """Yield text pieces for one prompt as it decodes; their concatenation is the final text.

    With ``keep_calls`` the pieces are the raw text (calls and values included),
    otherwise the display text. The generator returns the :class:`GenerationOutput`
    (``output = yield from stream_generate(...)``).
    """
    decoder = InterleavedDecoder(model, tokenizer, [prompt], lookup, config or DecodingConfig())
    sent = ""
    while decoder.step():
        raw = decoder.raw_text(0)
        visible = raw.rstrip("\ufffd") if keep_calls else settled_text(raw)
        if len(visible) > len(sent) and visible.startswith(sent):
            yield visible[len(sent) :]
            sent = visible
    output = decoder.outputs()[0]
    final = output.raw_text if keep_calls else output.text
    if final[len(sent) :]:
        yield final[len(sent) :]
    return output
