"""The two towers of media-text alignment (CLIP, ALIGN, SigLIP, CLAP, video-text): a media tower behind its view
(image, audio or video), a text tower (a transformer: bidirectional, or causal as CLIP's), and linear projections
to one joint, L2-normalised embedding (align.media_proj=false: the media tower's features are the embedding, as
SigLIP's; align.text_proj_bias: SigLIP's text head). CLIP and SigLIP add only their loss and its learned scale.

    batch {'media': cached rows (B, ...), 'lengths': (B,), 'text': (B, L) ids, 'text_mask': (B, L) True on tokens}
    embed_media(media, lengths) -> (B, E) unit vectors;  embed_text(ids, mask) -> (B, E) unit vectors
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.models.blocks import wide
from selfsup.models.transformer import Transformer, pool
from selfsup.objectives.contract import Objective


class Towers(nn.Module, Objective):
    unit = "pair"

    def __init__(self, media: nn.Module, view: nn.Module, text: Transformer, embed_dim: int, media_proj: bool = True,
                 text_proj_bias: bool = False, attend_padding: bool = False):
        """attend_padding: the text tower reads captions whole, padding included (SigLIP)."""
        super().__init__()
        self.model = media  # the media tower: what kNN, linear probes and fine-tuning evaluate
        self.view = view
        self.text = text
        self.attend_padding = attend_padding
        self.media_proj = nn.Linear(media.out_dim, embed_dim, bias=False) if media_proj else nn.Identity()
        self.text_proj = nn.Linear(text.out_dim, embed_dim, bias=text_proj_bias)
        if media_proj:
            nn.init.normal_(self.media_proj.weight, std=media.out_dim ** -0.5)  # CLIP's projection init
        nn.init.normal_(self.text_proj.weight, std=text.out_dim ** -0.5)
        if text_proj_bias:
            nn.init.zeros_(self.text_proj.bias)

    def media_features(self, media: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, ...) cached rows -> (B, D) pooled tower features."""
        return self.model(*self.view(media, lengths))

    def project_media(self, features: Tensor) -> Tensor:
        """(B, D) tower features -> (B, E) unit vectors in the joint space."""
        return F.normalize(wide(self.media_proj(features)), dim=-1)

    def embed_media(self, media: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.project_media(self.media_features(media, lengths))

    def text_features(self, ids: Tensor, mask: Tensor) -> Tensor:
        mask = None if self.attend_padding else mask  # (B, L) True on tokens
        return pool(self.text(ids, pad_mask=mask), mask, self.text.cfg.pooling)  # (B, D)

    def embed_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        return F.normalize(wide(self.text_proj(self.text_features(ids, mask))), dim=-1)
