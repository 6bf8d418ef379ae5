"""The GPT decoder: the shared transformer trunk, causal, with its tied output head. Maps onto Llama."""

from __future__ import annotations

from selfsup.config import ModelConfig
from selfsup.models.transformer import Transformer


def GPT(cfg: ModelConfig) -> Transformer:  # noqa: N802 - reads as the class it builds
    return Transformer(cfg, causal=True)
