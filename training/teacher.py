"""The teacher: any OpenAI-compatible chat endpoint that annotates text with lookup calls.

The client sends our own annotation prompt, checks every answer (it must be the
input text with calls added, nothing else) and keeps an on-disk cache keyed by
(model, prompt, text), so an interrupted run resumes without paying twice.

A teacher sometimes edits the text as it annotates (GPT-4o changed commas and
spaces in about half of the published documents). ``align_calls`` maps each call
back onto the input text through a character alignment; answers whose text
differs by more than small edits, or that contain broken calls, are rejected.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Iterable, Iterator, Literal

from lmlm_agent.format import LookupCall, insert_calls, legacy_to_special, parse

SYSTEM_PROMPT = """\
You annotate encyclopedic text for a language model that looks its facts up in a database.

Insert a lookup call just before the words that state each fact:
  <|db_entity|> ENTITY<|db_relationship|> RELATION<|db_return|> VALUE<|db_end|>
(the legacy form [dblookup('ENTITY', 'RELATION') -> VALUE] is accepted too).

Rules:
- Annotate every atomic fact about a named entity: one call per fact.
- ENTITY is the entity's full name as written in the text (use the article title when the
  text refers to it implicitly).
- RELATION is a short, reusable name in lower case ("birth year", "capital", "founded by"),
  not a phrase that only fits this sentence.
- VALUE is short: the few words of the text that state the fact.
- Put the call right before those words; the words themselves stay in the text after the call.
- Do not change the text in any other way: no rewording, no punctuation or spacing edits.
- Answer with the annotated text only, nothing before or after it."""

# The text travels between these markers, so an endpoint can find it in the request.
TEXT_OPEN = "<<<TEXT\n"
TEXT_CLOSE = "\nTEXT>>>"
USER_TEMPLATE = "Annotate this text.\n" + TEXT_OPEN + "{text}" + TEXT_CLOSE

Status = Literal["ok", "realigned", "empty", "rejected_text", "rejected_calls", "unknown", "failed"]
KEPT: frozenset[str] = frozenset({"ok", "realigned", "empty"})


@dataclass
class TeacherConfig:
    """Where the teacher lives and how hard to push it."""

    base_url: str = field(
        default_factory=lambda: os.environ.get("LMLM_TEACHER_BASE_URL", "http://127.0.0.1:8765/v1"),
        metadata={"help": "OpenAI-compatible base URL (env LMLM_TEACHER_BASE_URL)."},
    )
    api_key: str = field(
        default_factory=lambda: os.environ.get("LMLM_TEACHER_KEY", "offline"),
        metadata={"help": "API key (env LMLM_TEACHER_KEY); the offline teacher ignores it."},
    )
    model: str = field(
        default_factory=lambda: os.environ.get("LMLM_TEACHER_MODEL", "lmlm-offline-teacher"),
        metadata={"help": "Model name sent with each request (env LMLM_TEACHER_MODEL)."},
    )
    cache_dir: Path | None = field(
        default=Path("runs/teacher-cache"),
        metadata={"help": "On-disk response cache; None disables it."},
    )
    concurrency: int = field(default=4, metadata={"help": "Requests in flight at once."})
    max_retries: int = field(default=4, metadata={"help": "Retries of a timed-out or 429/5xx request."})
    backoff_s: float = field(default=1.0, metadata={"help": "First retry delay; doubles each time, with jitter."})
    timeout_s: float = field(default=120.0, metadata={"help": "Per-request timeout in seconds."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature."})
    max_tokens: int | None = field(default=None, metadata={"help": "Completion token limit (None: server default)."})
    realign: bool = field(
        default=True,
        metadata={"help": "Keep answers whose text differs by small edits, moving the calls onto the input."},
    )
    min_similarity: float = field(
        default=0.97,
        metadata={"help": "Least character similarity (difflib ratio) for an edited answer to be realigned."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})


# --------------------------------------------------------------------------- checking answers


def calls_with_offsets(annotated: str) -> tuple[str, list[tuple[int, LookupCall]], int]:
    """Plain text, each complete call with its character offset in it, and the broken-fragment count."""
    parsed = parse(annotated)
    plain: list[str] = []
    length = 0
    placed: list[tuple[int, LookupCall]] = []
    after_call = False
    for seg in parsed.segments:
        if isinstance(seg, str):
            piece = seg[1:] if after_call and seg.startswith(" ") else seg
            plain.append(piece)
            length += len(piece)
            after_call = False
        else:
            if isinstance(seg, LookupCall):
                placed.append((length, seg))
            after_call = isinstance(seg, LookupCall)
    return "".join(plain), placed, len(parsed.errors)


def _offset_map(matcher: SequenceMatcher, src_len: int, dst_len: int):
    """A function from offsets of the matcher's first string to offsets of its second, along the alignment."""
    opcodes = matcher.get_opcodes()

    def mapped(offset: int) -> int:
        for tag, i1, i2, j1, _ in opcodes:
            if i1 <= offset < i2 or (offset == i2 == src_len and tag == "equal"):
                return j1 + (offset - i1) if tag == "equal" else j1
        return dst_len

    return mapped


@dataclass
class Alignment:
    """Calls of an annotation placed on the input text; ``similarity`` is 1.0 when nothing was edited."""

    placed: list[tuple[int, LookupCall]]
    similarity: float
    broken: int


def align_calls(text: str, annotated: str) -> Alignment:
    """Place the calls of ``annotated`` (either call form) on ``text``, following its edits if any."""
    conv = legacy_to_special(annotated) if "[dblookup(" in annotated else None
    special = conv.text if conv else annotated
    plain, placed, broken = calls_with_offsets(special)
    broken += len(conv.dropped) if conv else 0
    if plain == text:
        return Alignment(placed, 1.0, broken)
    # autojunk off: in prose, spaces and "e" are "popular" and would be ignored by the matcher.
    matcher = SequenceMatcher(None, plain, text, autojunk=False)
    similarity = matcher.ratio() if plain and text else 0.0
    to_text = _offset_map(matcher, len(plain), len(text))
    return Alignment([(to_text(o), c) for o, c in placed], similarity, broken)


def _unwrap(content: str) -> str:
    """Drop a Markdown code fence or the text markers a chat model may echo around its answer."""
    body = content.strip("\n")
    if body.startswith("```") and body.rstrip().endswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rstrip()[:-3].rstrip("\n")
    if body.startswith(TEXT_OPEN) and body.endswith(TEXT_CLOSE):
        body = body[len(TEXT_OPEN) : -len(TEXT_CLOSE)]
    return body


@dataclass
class Checked:
    status: Status
    annotated: str | None
    calls: int = 0
    detail: str = ""
    placed: list[tuple[int, LookupCall]] = field(default_factory=list)  # calls at offsets of the input


def check_answer(text: str, content: str, realign: bool = True, min_similarity: float = 0.97) -> Checked:
    """Accept an answer only if it is ``text`` with well-formed calls added (after realignment, if allowed)."""
    al = align_calls(text, _unwrap(content))
    if al.broken:
        return Checked("rejected_calls", None, detail=f"{al.broken} broken call(s)")
    if al.similarity < 1.0 and (not realign or al.similarity < min_similarity):
        return Checked("rejected_text", None, detail=f"text changed (similarity {al.similarity:.3f})")
    status: Status = "ok" if al.similarity == 1.0 else "realigned"
    return Checked(status, insert_calls(text, al.placed), calls=len(al.placed), placed=al.placed)


# --------------------------------------------------------------------------- the client


@dataclass
class TeacherResult:
    """One document's outcome; ``annotated`` is None unless the status is kept (see ``KEPT``)."""

    text: str
    status: Status
    annotated: str | None = None
    calls: int = 0
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    detail: str = ""


@dataclass
class TeacherSummary:
    documents: int = 0
    statuses: Counter = field(default_factory=Counter)
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def add(self, r: TeacherResult) -> None:
        self.documents += 1
        self.statuses[r.status] += 1
        self.calls += r.calls
        self.cache_hits += r.cached
        self.prompt_tokens += r.prompt_tokens
        self.completion_tokens += r.completion_tokens

    @property
    def kept(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in KEPT)

    def to_json(self) -> dict:
        d = asdict(self)
        d["statuses"] = dict(self.statuses)
        d["kept"] = self.kept
        return d


class TeacherClient:
    """Annotates texts through an OpenAI-compatible endpoint; thread-safe, cached, retried."""

    def __init__(self, config: TeacherConfig | None = None):
        import openai

        self.config = config or TeacherConfig()
        # Retries are ours (with the counting and backoff we want), so the SDK's are off.
        self._client = openai.OpenAI(
            base_url=self.config.base_url,
            api_key=self.config.api_key,
            timeout=self.config.timeout_s,
            max_retries=0,
        )
        self._openai = openai

    # The cache key covers everything that determines the answer.
    def _cache_path(self, text: str) -> Path | None:
        if self.config.cache_dir is None:
            return None
        key = json.dumps([self.config.model, SYSTEM_PROMPT, USER_TEMPLATE, self.config.temperature, text])
        digest = hashlib.sha256(key.encode()).hexdigest()
        return Path(self.config.cache_dir) / digest[:2] / f"{digest}.json"

    def _request(self, text: str) -> tuple[str, int, int]:
        """The answer's content and token usage; raises the SDK's error once retries are spent."""
        retryable = (
            self._openai.APITimeoutError,
            self._openai.APIConnectionError,
            self._openai.RateLimitError,
            self._openai.InternalServerError,
        )
        for attempt in range(self.config.max_retries + 1):
            try:
                resp = self._client.chat.completions.create(
                    model=self.config.model,
                    messages=[
                        {"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": USER_TEMPLATE.format(text=text)},
                    ],
                    temperature=self.config.temperature,
                    **({"max_tokens": self.config.max_tokens} if self.config.max_tokens else {}),
                )
                usage = resp.usage
                content = resp.choices[0].message.content or ""
                return content, (usage.prompt_tokens if usage else 0), (usage.completion_tokens if usage else 0)
            except retryable:
                if attempt == self.config.max_retries:
                    raise
                delay = self.config.backoff_s * 2**attempt
                time.sleep(delay * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def annotate(self, text: str) -> TeacherResult:
        """One text; never raises for a teacher failure (the status says what happened)."""
        if not text.strip():
            return TeacherResult(text, "empty", annotated=text)
        path = self._cache_path(text)
        cached = path is not None and path.exists()
        try:
            if cached:
                record = json.loads(path.read_text(encoding="utf-8"))
                content, pt, ct = record["content"], 0, 0
            else:
                content, pt, ct = self._request(text)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"model": self.config.model, "content": content}), encoding="utf-8")
                    tmp.replace(path)  # atomic: an interrupted run never leaves half a record
        except self._openai.NotFoundError as e:
            return TeacherResult(text, "unknown", detail=str(e)[:200])
        except (self._openai.OpenAIError, OSError, ValueError, KeyError) as e:
            return TeacherResult(text, "failed", detail=f"{type(e).__name__}: {str(e)[:200]}")
        checked = check_answer(text, content, self.config.realign, self.config.min_similarity)
        return TeacherResult(
            text, checked.status, checked.annotated, checked.calls, cached, pt, ct, checked.detail
        )

    def annotate_many(self, texts: Iterable[str], total: int | None = None) -> Iterator[TeacherResult]:
        """Results in input order, ``concurrency`` requests at a time, with a progress bar."""
        from tqdm.auto import tqdm

        texts = list(texts)
        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            bar = tqdm(total=total or len(texts), desc="teacher", unit="doc", disable=not self.config.progress)
            try:
                for result in pool.map(self.annotate, texts):
                    bar.update()
                    bar.set_postfix(status=result.status, refresh=False)
                    yield result
            finally:
                bar.close()

    def run(self, texts: Iterable[str]) -> tuple[list[TeacherResult], TeacherSummary]:
        start = time.perf_counter()
        summary = TeacherSummary()
        results = []
        for r in self.annotate_many(texts):
            summary.add(r)
            results.append(r)
        summary.seconds = time.perf_counter() - start
        return results, summary


def annotate_documents(in_path: str | Path, out_path: str | Path, config: TeacherConfig | None = None) -> TeacherSummary:
    """`lmlm teacher annotate`: the plain texts of ``in_path`` (JSONL with ``text``, or the published JSON)
    annotated by the teacher into ``out_path`` as JSONL ``{id, text, plain, source}``; invalid answers
    are counted in the summary and left out."""
    from training.corpus import read_documents, write_jsonl

    client = TeacherClient(config)
    docs = read_documents(in_path)
    results, summary = client.run([d.plain for d in docs])
    source = f"teacher:{client.config.model}"
    write_jsonl(out_path, ({"id": d.id, "text": r.annotated, "plain": d.plain, "source": source}
                           for d, r in zip(docs, results) if r.annotated is not None))
    return summary


__all__ = [
    "annotate_documents",
    "SYSTEM_PROMPT",
    "TEXT_OPEN",
    "TEXT_CLOSE",
    "USER_TEMPLATE",
    "KEPT",
    "TeacherConfig",
    "TeacherClient",
    "TeacherResult",
    "TeacherSummary",
    "Alignment",
    "align_calls",
    "calls_with_offsets",
    "check_answer",
]
