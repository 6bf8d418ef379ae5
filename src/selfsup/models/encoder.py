"""The text encoder: the shared transformer trunk, bidirectional, with a normalised embedding and no norm before
the first attention. With model.norm=layernorm and model.mlp=geglu it maps onto ModernBERT exactly (its local
layers: model.local_attention); with model.norm_position=post, model.bias=all, model.mlp=gelu and
model.learned_positions onto BERT (models/hf/bert.py). As the text tower of clip/siglip it may be causal
(text.causal) and without the embedding norm (text.embed_norm=false): CLIP's and SigLIP's text transformers."""

from __future__ import annotations

from selfsup.config import ModelConfig
from selfsup.models.transformer import Transformer


def Encoder(cfg: ModelConfig) -> Transformer:  # noqa: N802 - reads as the class it builds
    return Transformer(cfg, causal=cfg.causal, embed_norm=cfg.embed_norm is not False)
