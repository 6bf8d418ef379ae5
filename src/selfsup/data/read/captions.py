"""Captions as token ids for a text tower: the spine's byte-level BPE, trained on the training captions (or a
given tokenizer.json), and every caption tokenized once into a padded array.

Each caption is [EOS] + its tokens, truncated to `context`, right-padded with PAD; the mask is True on tokens. A
tokenizer with a post-processor of its own adds its own special tokens instead, kept when the text is truncated, and
pads with EOS (CLIP's and SigLIP's padding token): a model's, from model.init (CLIP's <|startoftext|> + text +
<|endoftext|>, SigLIP's text + </s>), or the BPE trained for a text tower that pools at the last token (`closed`):
text + [EOS], so that the tower pools at the end-of-text token, where CLIPModel and SiglipModel pool.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, processors

from selfsup.data.read import tokenizer as toks


def caption_tokenizer(captions: list[str], vocab_size: int, given: str | None = None,
                      closed: bool = False) -> Tokenizer:
    """The given tokenizer.json as it is, or a BPE trained on the captions; `closed` (text.pooling=last): the trained
    one ends every caption with EOS."""
    if given:
        return toks.load(given)
    tok = toks.train_bpe(captions, vocab_size)
    if closed:
        tok.post_processor = processors.TemplateProcessing(single=f"$A {toks.EOS}",
                                                           special_tokens=[(toks.EOS, toks.eos_id(tok))])
    return tok


def closes(tok: Tokenizer) -> bool:
    """Whether captions end with EOS (a post-processor that closes them), as CLIPModel and SiglipModel expect."""
    return tok.post_processor is not None and tok.encode("a").ids[-1] == toks.eos_id(tok)


def caption_arrays(tok: Tokenizer, captions: list[str], context: int) -> tuple[np.ndarray, np.ndarray]:
    """-> ids (N, context) int32, mask (N, context) bool."""
    own = tok.post_processor is not None
    eos, pad = toks.eos_id(tok), tok.token_to_id(toks.PAD)
    pad = eos if own or pad is None else pad
    ids = np.full((len(captions), context), pad, dtype=np.int32)
    mask = np.zeros((len(captions), context), dtype=bool)
    if own:
        tok = Tokenizer.from_str(tok.to_str())  # a copy to truncate: the caller's tokenizer is left as it was
        tok.enable_truncation(context)  # the text is cut, its special tokens kept
    for i, enc in enumerate(tok.encode_batch(captions, add_special_tokens=own)):
        row = enc.ids if own else ([eos] + enc.ids)[:context]
        ids[i, :len(row)] = row
        mask[i, :len(row)] = True
    return ids, mask
