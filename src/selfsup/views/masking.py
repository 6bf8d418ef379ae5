"""Masking for masked language modelling (BERT, Devlin et al. 2019, section 3.1 and appendix A.1).

Of the tokens that are neither special nor padding, each is chosen with probability p (0.15); of the chosen,
80% become the mask token, 10% a random non-special token and 10% stay unchanged. Labels hold the original
token where chosen and IGNORE elsewhere. With whole-word masking a word's tokens are chosen together. The
draws come from batch_random.py: new every batch, seeded, restored on resume, and the same for a sample
on any number of processes.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import Tensor

from selfsup import batch_random
from selfsup.data.read.tokenizer import IGNORE, MASK


class MaskingTable:
    """What the masking needs to know about a vocabulary, as tensors indexed by token id."""

    def __init__(self, tok: Tokenizer, padded_vocab: int):
        vocab = tok.get_vocab()
        specials = {t.content for t in tok.get_added_tokens_decoder().values()}
        self.special = torch.ones(padded_vocab, dtype=torch.bool)  # ids past the tokenizer's count are special too
        self.word_start = torch.ones(padded_vocab, dtype=torch.bool)
        continuing = getattr(tok.model, "continuing_subword_prefix", None)  # WordPiece's '##' (BERT)
        for piece, i in vocab.items():
            self.special[i] = piece in specials
            if continuing:  # WordPiece marks the pieces that continue a word instead
                self.word_start[i] = not piece.startswith(continuing)
            else:  # byte-level BPE marks a leading space with 'Ġ' and a newline with 'Ċ'; anything else continues
                self.word_start[i] = piece in specials or piece[:1] in ("Ġ", "Ċ") or not piece[:1].isalnum()
        self.ordinary = (~self.special).nonzero()[:, 0]  # ids a random replacement is drawn from
        self.mask_id = vocab[MASK]

    def to(self, device) -> MaskingTable:
        for name in ("special", "word_start", "ordinary"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def mask_tokens(tokens: Tensor, table: MaskingTable, p: float = 0.15, whole_word: bool = False,
                pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """tokens: (B, T) -> (inputs (B, T), labels (B, T) with IGNORE where nothing is predicted)."""
    candidates = ~table.special[tokens]  # (B, T)
    if pad_mask is not None:
        candidates &= pad_mask
    draw = batch_random.rand(tokens.shape, tokens.device)  # (B, T)
    if whole_word:  # every token of a word takes the draw of the word's first token
        starts = table.word_start[tokens] | ~candidates  # (B, T); a word also starts after a special or padding
        starts[:, 1:] |= ~candidates[:, :-1]
        t = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        first = torch.where(starts, t, torch.zeros_like(t)).cummax(dim=1).values  # (B, T)
        draw = draw.gather(1, first)
    chosen = candidates & (draw < p)
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE))
    how = batch_random.rand(tokens.shape, tokens.device)  # 80% mask, 10% random, 10% unchanged
    random_ids = table.ordinary[batch_random.randint(0, len(table.ordinary), tokens.shape, tokens.device)]
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(tokens, table.mask_id), tokens)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    return inputs, labels
