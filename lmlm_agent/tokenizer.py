"""Byte-level BPE tokenizer with the four lookup-call tokens as single ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from lmlm_agent.format import DB_END, DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, SPECIAL_TOKENS

EOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass(frozen=True)
class CallTokenIds:
    entity: int
    relationship: int
    ret: int
    end: int

    @property
    def all(self) -> tuple[int, int, int, int]:
        return (self.entity, self.relationship, self.ret, self.end)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts`` and wrap it as a transformers fast tokenizer.

    The call tokens are added as special tokens so a call never splits across ids
    and ``decode(encode(text)) == text`` holds for annotated text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS, PAD, *SPECIAL_TOKENS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(SPECIAL_TOKENS),
        clean_up_tokenization_spaces=False,
    )


def call_token_ids(tokenizer) -> CallTokenIds:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (DB_ENTITY, DB_RELATIONSHIP, DB_RETURN, DB_END)]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("tokenizer lacks the lookup-call special tokens; train it with train_tokenizer")
    return CallTokenIds(*ids)
