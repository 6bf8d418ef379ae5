"""Frozen features of a trained text trunk: one (D,) vector per text, through the evaluation path every modality
shares (eval/inputs.py: TextInputs says how a text is tokenized, padded and pooled)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from selfsup.eval.inputs import TextInputs, encode as encode_items


def encode(model: nn.Module, tok: Tokenizer, texts: list[str], batch_size: int, device: torch.device,
           progress=None) -> Tensor:
    """(N, D) float32 features of texts on the CPU, row i for texts[i]."""
    return encode_items(model, TextInputs(tok, model), texts, batch_size, device, progress)


def random_objective(cfg, tok: Tokenizer | None, device: torch.device) -> nn.Module:
    """A randomly initialised objective of the run's shape, seeded with the run's seed: the `--baseline random`."""
    from selfsup.objectives.build import build_objective
    from selfsup.train.trainer import seed_everything

    seed_everything(cfg.seed)
    return build_objective(cfg, tok).to(device).eval()


def random_trunk(cfg, tok: Tokenizer | None, device: torch.device) -> nn.Module:
    return random_objective(cfg, tok, device).model
