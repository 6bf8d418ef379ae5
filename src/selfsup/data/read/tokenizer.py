"""Byte-level BPE tokenizers trained with Hugging Face `tokenizers` (the GPT-2 scheme: every byte is a symbol,
so no text is ever out of vocabulary). The same special tokens serve every text objective."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from selfsup.data.errors import DataError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MASK = "<|mask|>"
SPECIALS = [EOS, PAD, MASK]
IGNORE = -100  # label of positions that carry no loss (padding, unmasked tokens)


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load(path: str | Path, key: str = "tokenizer") -> Tokenizer:
    """A tokenizer.json; a missing file or one that is not a tokenizer is a DataError naming `key` (what named the
    file: data.tokenizer, a run's tokenizer) and the file."""
    path = Path(path).expanduser()
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a missing or malformed file
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"{key} '{path}' could not be read ({why}); expected a tokenizer.json saved by Hugging Face "
                        "tokenizers, e.g. a run directory's") from None
    if tok.token_to_id(EOS) is None:
        raise DataError(f"{key} '{path}' has no '{EOS}' token, which separates packed documents; expected a "
                        "tokenizer.json with selfsup's special tokens, e.g. a run directory's")
    return tok


def eos_id(tok: Tokenizer) -> int:
    return tok.token_to_id(EOS)


def opening_eos(tok: Tokenizer) -> Tokenizer:
    """A copy of `tok` whose encode (add_special_tokens, the default of transformers' tokenizers) puts EOS before
    the text, as every document is opened in training and in `selfsup embed`: [EOS] + text; a pair is two packed
    documents, [EOS] + a + [EOS] + b. For the exported tokenizers, which other libraries call without our code."""
    out = Tokenizer.from_str(tok.to_str())
    eos = eos_id(tok)
    out.post_processor = processors.TemplateProcessing(single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B:1",
                                                       special_tokens=[(EOS, eos)])
    return out
