"""Frozen features of a trained text trunk: one (D,) vector per text, through the evaluation path every modality
shares (probe/inputs.py: TextInputs says how a text is tokenized, padded and pooled)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from selfsup.probe.inputs import TextInputs, encode as encode_items


def encode(model: nn.Module, tok: Tokenizer, texts: list[str], batch_size: int, device: torch.device,
           progress=None) -> Tensor:
    """(N, D) float32 features of texts on the CPU, row i for texts[i]."""
    return encode_items(model, TextInputs(tok, model), texts, batch_size, device, progress)

