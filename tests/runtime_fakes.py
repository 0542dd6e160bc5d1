"""Test doubles for the runtime: a scripted causal LM, dict-backed stores, and a tiny tokenizer."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from lmlm_agent.tokenizer import call_token_ids, train_tokenizer
from tools.schema import FactRecord, LookupResult

# Two cores shared by several processes: more than one torch thread makes tiny models 10x slower here.
torch.set_num_threads(1)

CORPUS = [
    "Ada Lovelace was born in 1815 in London. She wrote the first program.",
    "Ko Itakura was born in Yokohama. He plays football for Japan.",
    "The capital of France is Paris. Paris is known for the Eiffel Tower.",
    "Question: When was Ada Lovelace born?\nAnswer: Ada Lovelace was born in 1815.",
] * 20


def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


class ScriptedLM(torch.nn.Module):
    """A causal LM with the HF call signature that writes a fixed text after each known prompt.

    Its "KV cache" is the token ids themselves (stored in layer 0 of the cache the
    decoder passes), so what it writes depends on the whole history the decoder
    fed it, padding masked out: a decoder that loses or garbles cached tokens
    derails the script. It writes the script's tokens in order and skips, when
    counting, what the runtime injected after each ``<|db_return|>``.
    """

    def __init__(self, tok, scripts: dict[str, str], delay_s: float = 0.0):
        super().__init__()
        self.delay_s = delay_s  # seconds per forward pass: a slow model, for server timing tests
        # A script is the text the model writes (verbatim, malformed calls included); values come from the runtime.
        self.scripts = {tuple(tok.encode(p)): tok.encode(s) for p, s in scripts.items()}
        self.call = call_token_ids(tok)
        self.eos = tok.eos_token_id
        self.config = SimpleNamespace(vocab_size=len(tok), max_position_embeddings=4096)
        self.widths: list[int] = []  # input width of every forward, to check what was re-encoded
        self.batch_sizes: list[int] = []  # rows of every forward, to check what was batched
        self.real_fed = 0  # unpadded tokens fed, summed over rows and calls

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        self.widths.append(input_ids.shape[1])
        self.batch_sizes.append(input_ids.shape[0])
        time.sleep(self.delay_s)
        self.real_fed += int(attention_mask[:, -input_ids.shape[1] :].sum())
        ids = input_ids[:, None, :, None].float()
        history, _ = cache.update(ids, ids, 0)
        logits = torch.full((input_ids.shape[0], 1, self.config.vocab_size), -1e4)
        for b in range(input_ids.shape[0]):
            real = history[b, 0, :, 0].long()[attention_mask[b].bool()].tolist()
            logits[b, 0, self._next(real)] = 0.0
        return SimpleNamespace(logits=logits)

    def _next(self, seq: list[int]) -> int:
        prompts = [p for p in self.scripts if tuple(seq[: len(p)]) == p]
        if not prompts:
            return self.eos
        prompt = max(prompts, key=len)
        # A prompt that ends in <|db_return|> is followed by the runtime's value first.
        written, injected = [], prompt[-1] == self.call.ret
        for t in seq[len(prompt) :]:
            if injected:
                injected = t != self.call.end
                continue
            written.append(t)
            injected = t == self.call.ret
        script = self.scripts[prompt]
        return script[len(written)] if len(written) < len(script) else self.eos


class DictStore:
    """A :class:`tools.Lookup` of exact keys in a dict; records every query."""

    def __init__(self, facts: dict[tuple[str, str], str], delay_s: float = 0.0):
        self.facts = facts
        self.ids = {key: i + 1 for i, key in enumerate(facts)}
        self.queries: list[tuple[str, str]] = []
        self.delay_s = delay_s

    def read(self, entity: str, relation: str) -> LookupResult:
        self.queries.append((entity, relation))
        time.sleep(self.delay_s)
        key = (entity, relation)
        if key not in self.facts:
            return LookupResult.miss(entity, relation)
        record = FactRecord(id=self.ids[key], entity=entity, relation=relation, value=self.facts[key], source=f"test:{self.ids[key]}")
        return LookupResult.hit(entity, relation, record.value, fact_id=record.id, score=1.0, source=record.source, records=[record])


class BrokenStore:
    def read(self, entity: str, relation: str):
        raise RuntimeError("database down")



# --------------------------------------------------------------------------- published-style checkpoints

PAD_SETUPS = ("no_pad", "pad_is_eos", "dedicated_pad")


def published_style_checkpoint(path, arch: str = "llama", pad_setup: str = "no_pad", texts: list[str] | None = None):
    """A tiny HF causal LM directory as a published LMLM checkpoint is laid out.

    ``arch`` is ``llama`` (LlamaForCausalLM) or ``gpt2`` (GPT2LMHeadModel). The
    tokenizer has the four call tokens as added special tokens and, by
    ``pad_setup``: no pad token at all, ``pad_token = eos_token``, or a dedicated
    ``<|pad|>``. No ``lmlm.json``: nothing of ours beyond the call tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from lmlm_agent.format import SPECIAL_TOKENS

    eos, pad = "<|endoftext|>", "<|pad|>"
    specials = [eos, *([pad] if pad_setup == "dedicated_pad" else [])]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts or CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, bos_token=eos, clean_up_tokenization_spaces=False)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    if pad_setup == "pad_is_eos":
        tok.pad_token = tok.eos_token
    elif pad_setup == "dedicated_pad":
        tok.pad_token = pad
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=True, **ids)
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128, **ids)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


CHAT_DRILLS = [
    ("Hello", "Hello, I am a small model that looks facts up."),
    ("hi", "Hi, ask me about people and places."),
    ("When was Ada Lovelace born?", "Ada Lovelace was born in 1815."),
    ("Where was Ko Itakura born?", "Ko Itakura was born in Yokohama."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a story about a cat.", "A cat sat by the river and watched the boats."),
    ("What is 1 + 1?", "It is two."),
    ("Who are you?", "I am a small model that looks facts up."),
]


def train_micro_chat_model(path, steps: int = 80, seed: int = 0):
    """A micro Llama trained for a few seconds on one-line question/answer drills, saved as a checkpoint.

    Enough that it answers in the chat form (a non-empty line after ``Answer:``),
    which is what langchain-tests' integration suite needs of a real model.
    """
    from lmlm_agent.format import qa_prompt
    from lmlm_agent.model import build_model, save_checkpoint

    tok = tokenizer()
    texts = [f"{qa_prompt(q)} {a}\n" for q, a in CHAT_DRILLS]
    rows = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(ids == tok.pad_token_id, -100)
    torch.manual_seed(seed)
    model = build_model("micro", tok)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    save_checkpoint(path, model, tok, kind="lmlm", preset="micro", note="test chat drills")
    return path, float(loss.detach())
