"""Perplexity of an LMLM and its baseline on held-out annotated text, three ways (docs/training.md).

    from training.perplexity import evaluate_checkpoint
    report = evaluate_checkpoint("runs/demo/lmlm", read_documents("eval.json"))
    report.static_ppl, report.dynamic_ppl, report.normalised_ppl, report.value_loss

For an LMLM, on the annotated text ``A`` of each document (``NLL_t`` = -log p(token t | tokens before)):

- static:     exp(sum NLL over trained tokens of A / number of trained tokens), gold calls and
              values in the context; trained = every token but the values and ``<|db_end|>``
              (the pretraining loss, on held-out text).
- normalised: exp(the same sum / number of tokens of A outside lookup blocks): the cost of
              the calls is charged to the text they serve.
- dynamic:    at each annotated call the model writes its own query (greedy, from
              ``<|db_entity|>`` to ``<|db_return|>``), the database answers (``unknown`` on a
              miss), and exp(mean NLL over the tokens outside lookup blocks) is taken.
- value loss: mean NLL of the value tokens (masked in training: it should stay high).

The baseline is scored on the same documents with the calls stripped, every token
counted; with no lookups its three perplexities coincide.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from lmlm_agent.format import DB_ENTITY, DB_RETURN, extract_triples, parse, strip_calls
from lmlm_agent.tokenizer import call_token_ids
from training.corpus import AnnotatedDocument
from tools.schema import UNKNOWN, Lookup, LookupResult, normalise_text
from training.data import call_block_mask, encode, value_mask

MAX_QUERY_TOKENS = 32


def _key(entity: str, relation: str) -> tuple[str, str]:
    return normalise_text(entity), normalise_text(relation)


class OracleDatabase:
    """A :class:`tools.Lookup` of the held-out annotations' triples by normalised (entity, relation); first value wins."""

    def __init__(self, documents: Sequence[AnnotatedDocument]):
        self.facts: dict[tuple[str, str], str] = {}
        for doc in documents:
            for entity, relation, value in extract_triples(doc.annotated):
                self.facts.setdefault(_key(entity, relation), value)

    def read(self, entity: str, relation: str) -> LookupResult:
        value = self.facts.get(_key(entity, relation))
        return LookupResult.miss(entity, relation) if value is None else LookupResult.hit(entity, relation, value)


@dataclass
class PerplexityReport:
    kind: str
    documents: int
    static_ppl: float
    dynamic_ppl: float
    normalised_ppl: float
    text_ppl: float  # tokens outside lookup blocks, gold lookups in context
    value_loss: float | None  # None for the baseline (it has no value tokens)
    trained_tokens: int
    text_tokens: int
    value_tokens: int
    lookups: int = 0  # dynamic: queries the model wrote
    lookup_hits: int = 0  # ... that the database answered

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_checkpoint(path: str | Path, documents: Sequence[AnnotatedDocument], lookup: Lookup | None = None, **kwargs) -> PerplexityReport:
    """Load a checkpoint and score it; its kind (lmlm/baseline) comes from its lmlm.json."""
    from lmlm_agent.model import load_checkpoint

    ckpt = load_checkpoint(path, device=_device())
    # Score in windows of the length the model was trained on, not the preset's position range.
    kwargs.setdefault("context_length", ckpt.meta.get("config", {}).get("context_length"))
    return evaluate_perplexity(ckpt.model, ckpt.tokenizer, documents, ckpt.meta.get("kind", "lmlm"), lookup, **kwargs)


def evaluate_perplexity(
    model,
    tokenizer,
    documents: Sequence[AnnotatedDocument],
    kind: str = "lmlm",
    lookup: Lookup | None = None,
    context_length: int | None = None,
    batch_size: int = 8,
) -> PerplexityReport:
    """Score ``documents``; ``lookup`` answers the dynamic queries (default: the documents' own triples)."""
    import torch

    model.eval()
    context = context_length or model.config.max_position_embeddings
    call = call_token_ids(tokenizer)
    baseline = kind == "baseline"
    texts = [strip_calls(d.annotated) if baseline else d.annotated for d in documents]

    # Windows of at most `context` tokens, each opened by EOS (as after a document in training);
    # the masks are computed on the whole document, so a call cut by a window stays masked.
    windows, masked, in_block = [], [], []
    for ids in encode(texts, tokenizer):
        vmask, bmask = value_mask(ids, call, inside=False), call_block_mask(ids, call)
        for start in range(0, len(ids), context - 1):
            end = start + context - 1
            windows.append([tokenizer.eos_token_id, *ids[start:end]])
            masked.append([False, *vmask[start:end]])
            in_block.append([True, *bmask[start:end]])  # the EOS opener is never scored

    trained = text = value = 0
    trained_nll = text_nll = value_nll = 0.0
    with torch.no_grad():
        for b in range(0, len(windows), batch_size):
            for w, nll in enumerate(_token_nll(model, windows[b : b + batch_size], tokenizer.pad_token_id), start=b):
                for pos, loss in enumerate(nll, start=1):
                    if masked[w][pos]:
                        value, value_nll = value + 1, value_nll + loss
                    else:
                        trained, trained_nll = trained + 1, trained_nll + loss
                    if not in_block[w][pos]:
                        text, text_nll = text + 1, text_nll + loss

    static = _ppl(trained_nll, trained)
    report = PerplexityReport(
        kind=kind,
        documents=len(documents),
        static_ppl=static,
        dynamic_ppl=static,
        normalised_ppl=_ppl(trained_nll, text),
        text_ppl=_ppl(text_nll, text),
        value_loss=None if baseline else (value_nll / value if value else float("nan")),
        trained_tokens=trained,
        text_tokens=text,
        value_tokens=value,
    )
    if not baseline:
        lookup = lookup or OracleDatabase(documents)
        tally = _Tally()
        with torch.no_grad(), _single_thread_on_cpu(model):
            for ids, block in zip(windows, in_block):
                _dynamic_window(model, tokenizer, call, ids, block, lookup, tally)
        report.dynamic_ppl, report.lookups, report.lookup_hits = _ppl(tally.nll, tally.tokens), tally.queries, tally.hits
    return report


def _ppl(nll: float, count: int) -> float:
    return math.exp(nll / count) if count else float("nan")


@contextmanager
def _single_thread_on_cpu(model):
    # One-token forwards are too small to split across threads: on a busy CPU the threads' hand-offs
    # made each one ~30x slower than on a single thread.
    import torch

    threads = torch.get_num_threads()
    if model.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _token_nll(model, windows: list[list[int]], pad_id: int) -> list[list[float]]:
    """Per window, the NLL of tokens 1..n-1 given the tokens before them."""
    import torch

    device = model.device
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = torch.tensor(w)
        attention[i, : len(w)] = 1
    ids, attention = ids.to(device), attention.to(device)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").cpu()
    return [nll[i, : len(w) - 1].tolist() for i, w in enumerate(windows)]


class _Stream:
    """Feeds tokens through the model with a KV cache and scores them as they go."""

    def __init__(self, model):
        self.model, self.past, self.last = model, None, None  # last: logits predicting the next token

    def feed(self, tokens: list[int], score: list[bool] | None = None) -> tuple[float, int]:
        import torch

        if not tokens:
            return 0.0, 0
        ids = torch.tensor([tokens], device=self.model.device)
        out = self.model(input_ids=ids, cache=self.past, use_cache=True)
        logits = out.logits[0].float()
        self.past = out.cache
        # The logits predicting tokens[k] are the previous feed's last row for k=0, else row k-1;
        # the very first token of the stream has nothing before it and is not scored.
        first = 1 if self.last is None else 0
        preds = logits[:-1] if self.last is None else torch.cat([self.last[None], logits[:-1]])
        self.last = logits[-1]
        if score is None or not any(score[first:]):
            return 0.0, 0
        nll = torch.nn.functional.cross_entropy(preds, ids[0, first:], reduction="none")
        keep = torch.tensor(score[first:], device=nll.device)
        return float(nll[keep].sum()), int(keep.sum())

    def greedy(self) -> int:
        return int(self.last.argmax())


@dataclass
class _Tally:
    nll: float = 0.0
    tokens: int = 0
    queries: int = 0
    hits: int = 0


def _dynamic_window(model, tokenizer, call, ids: list[int], in_block: list[bool], lookup: Lookup, tally: _Tally) -> None:
    """Score the text tokens of one window with the model's own queries in place of the gold ones."""
    stream = _Stream(model)
    i = 0
    while i < len(ids):
        # The text (and any call cut at the window's start) up to the next gold call: teacher-forced.
        j = next((k for k in range(max(i, 1), len(ids)) if ids[k] == call.entity), len(ids))
        nll, count = stream.feed(ids[i:j], [not b for b in in_block[i:j]])
        tally.nll, tally.tokens = tally.nll + nll, tally.tokens + count
        if j == len(ids):
            break
        # A gold call: the model writes entity and relation itself; the database answers.
        stream.feed([call.entity])
        query: list[int] = []
        while len(query) < MAX_QUERY_TOKENS:
            nxt = stream.greedy()
            if nxt in (call.ret, call.end, call.entity, tokenizer.eos_token_id):
                break
            query.append(nxt)
            stream.feed([nxt])
        stream.feed([call.ret])
        tally.queries += 1
        pending = parse(DB_ENTITY + tokenizer.decode(query) + DB_RETURN).pending
        answer = lookup.read(pending.entity, pending.relation) if pending else None
        tally.hits += answer is not None and answer.found
        stream.feed(encode([" " + (answer.value if answer is not None else UNKNOWN)], tokenizer)[0] + [call.end])
        # Skip the gold call block; the text after it is scored against the model's own lookup.
        i = next((k + 1 for k in range(j, len(ids)) if ids[k] == call.end), len(ids))


def markdown(reports: Sequence[PerplexityReport], title: str = "Perplexity on held-out text") -> str:
    rows = [
        f"| {r.kind} | {r.static_ppl:.2f} | {r.dynamic_ppl:.2f} | {r.normalised_ppl:.2f} | {r.text_ppl:.2f} | "
        f"{'n/a' if r.value_loss is None else f'{r.value_loss:.3f}'} | {r.trained_tokens} | {r.text_tokens} | "
        f"{r.lookup_hits}/{r.lookups} |"
        for r in reports
    ]
    return "\n".join(
        [
            f"## {title}",
            "",
            "| model | static | dynamic | normalised | text (gold lookups) | value-token loss | trained tokens | text tokens | dynamic hits |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


__all__ = ["OracleDatabase", "PerplexityReport", "evaluate_checkpoint", "evaluate_perplexity", "markdown"]
