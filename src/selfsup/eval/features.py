"""Frozen features of a trained text trunk: one (D,) vector per text (see eval/inputs.py for the path shared with
images).

Each text is tokenized as [EOS] + tokens (EOS opens every document in training, so it is the 'cls' position),
truncated to model.cfg.context tokens, right-padded with PAD and masked (`pad_mask`), run through the trunk,
and pooled over the final normalised hidden states: `model.cfg.pooling` ('cls' or 'mean') for an encoder, always
the mean over real tokens for a causal model (its first token sees nothing but itself). Texts are batched in
order of length, so little of a batch is padding, and returned in the input order.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from selfsup.data.tokenizer import PAD, eos_id


def pooling_kind(model: nn.Module) -> str:
    return "mean" if model.causal else model.cfg.pooling


def tokenize(tok: Tokenizer, texts: list[str], context: int) -> list[list[int]]:
    eos = eos_id(tok)
    return [([eos] + enc.ids)[:context] for enc in tok.encode_batch(texts, add_special_tokens=False)]


def pad_id(tok: Tokenizer) -> int:
    pad = tok.token_to_id(PAD)
    return eos_id(tok) if pad is None else pad


def collate(seqs: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Token lists -> idx (B, T) right-padded with `pad`, pad_mask (B, T) True on real tokens."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = True
    return idx.to(device), mask.to(device)


def encode(model: nn.Module, tok: Tokenizer, texts: list[str], batch_size: int, device: torch.device,
           progress=None) -> Tensor:
    """(N, D) float32 features of texts on the CPU, row i for texts[i]."""
    from selfsup.eval.inputs import TextInputs, encode as encode_items

    return encode_items(model, TextInputs(tok, model), texts, batch_size, device, progress)


def random_objective(cfg, tok: Tokenizer | None, device: torch.device) -> nn.Module:
    """A randomly initialised objective of the run's shape, seeded with the run's seed: the `--baseline random`."""
    from selfsup.objectives.build import build_objective
    from selfsup.seed import seed_everything

    seed_everything(cfg.seed)
    return build_objective(cfg, tok).to(device).eval()


def random_trunk(cfg, tok: Tokenizer | None, device: torch.device) -> nn.Module:
    return random_objective(cfg, tok, device).model
