"""Video encoder: an image backbone on every frame, then time. `temporal=attention` adds a learned embedding per
frame position and runs transformer blocks across the frames of a clip (a factorised, late-temporal design as
ViViT's model 2: spatial first, temporal on top); `temporal=mean` averages the frame features (TSN).

    frames (B, T, C, H, W) -> frame features (B, T, D) -> clip feature (B, D), the mean over time
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.config import ModelConfig
from selfsup.models.blocks import Block, init_weights, make_norm, mlp_hidden


class VideoEncoder(nn.Module):
    def __init__(self, frame_encoder: nn.Module, frames: int, temporal: str, depth: int, cfg: ModelConfig):
        super().__init__()
        self.frame = frame_encoder
        self.out_dim = D = frame_encoder.out_dim
        self.temporal = temporal
        if temporal == "attention":
            heads = cfg.heads if D % cfg.heads == 0 else 1
            self.time = nn.Parameter(torch.zeros(frames, D))
            self.blocks = nn.ModuleList(Block(D, heads, mlp_hidden(D, cfg.mlp_ratio, cfg.mlp), cfg.mlp, cfg.norm)
                                        for _ in range(depth))
            self.norm = make_norm(cfg.norm, D)
            init_weights(self.blocks, depth)
            nn.init.normal_(self.time, std=0.02)

    def forward(self, frames: Tensor) -> Tensor:
        """(B, T, C, H, W) normalised frames -> (B, D)."""
        B, T = frames.shape[:2]
        x = self.frame(frames.flatten(0, 1)).view(B, T, -1)  # (B, T, D)
        if self.temporal == "attention":
            x = x + self.time[:T].to(x.dtype)
            for block in self.blocks:
                x = block(x, None, None, causal=False)
            x = self.norm(x)
        return x.mean(dim=1)
