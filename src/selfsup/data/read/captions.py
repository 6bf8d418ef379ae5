"""Captions as token ids for a text tower: the spine's byte-level BPE, trained on the training captions (or a
given tokenizer.json), and every caption tokenized once into a padded array.

Each caption is [EOS] + its tokens, truncated to `context`, right-padded with PAD; the mask is True on tokens. A
tokenizer with a post-processor of its own (a model's, from model.init) adds its own special tokens instead, kept
when the text is truncated: CLIP's <|startoftext|> + text + <|endoftext|>, SigLIP's text + </s>; without PAD it pads
with EOS (both models' padding token).
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from selfsup.data.read import tokenizer as toks


def caption_tokenizer(captions: list[str], vocab_size: int, given: str | None = None) -> Tokenizer:
    return toks.load(given) if given else toks.train_bpe(captions, vocab_size)


def caption_arrays(tok: Tokenizer, captions: list[str], context: int) -> tuple[np.ndarray, np.ndarray]:
    """-> ids (N, context) int32, mask (N, context) bool."""
    eos, pad = toks.eos_id(tok), tok.token_to_id(toks.PAD)
    pad = eos if pad is None else pad
    ids = np.full((len(captions), context), pad, dtype=np.int32)
    mask = np.zeros((len(captions), context), dtype=bool)
    own = tok.post_processor is not None
    if own:
        tok = Tokenizer.from_str(tok.to_str())  # a copy to truncate: the caller's tokenizer is left as it was
        tok.enable_truncation(context)  # the text is cut, its special tokens kept
    for i, enc in enumerate(tok.encode_batch(captions, add_special_tokens=own)):
        row = enc.ids if own else ([eos] + enc.ids)[:context]
        ids[i, :len(row)] = row
        mask[i, :len(row)] = True
    return ids, mask
