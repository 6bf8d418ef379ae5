"""Audio encoder: a convolutional front end over log-mel frames (Whisper's: two 3-wide convolutions with GELU, the
second strided) and the shared transformer blocks, bidirectional, with rotary positions over time.

    log-mel (B, M, F) -> tokens (B, T, D), T = ⌊(F − 1) / stride⌋ + 1; features (B, D) = mean over real tokens

Clips are padded to a fixed length with silence; `lengths` (B,) gives each clip's real frames, and padded tokens
are kept out of attention (as keys) and out of the mean. Letters: B batch, M mel bands, F frames, T tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.config import ModelConfig
from selfsup.models.blocks import Rotary, init_weights, make_norm, mlp_hidden, transformer_blocks
from selfsup.models.transformer import pool


class AudioEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, n_mels: int, frames: int, stride: int):
        super().__init__()
        self.cfg, self.stride, self.out_dim = cfg, stride, cfg.dim
        self.tokens_per_clip = (frames - 1) // stride + 1
        self.front = nn.Sequential(nn.Conv1d(n_mels, cfg.dim, 3, padding=1), nn.GELU(),
                                   nn.Conv1d(cfg.dim, cfg.dim, 3, stride=stride, padding=1), nn.GELU())
        self.blocks = transformer_blocks(cfg, cfg.mlp_hidden or mlp_hidden(cfg.dim, cfg.mlp_ratio, cfg.mlp))
        # post-norm blocks end on a norm
        self.norm = nn.Identity() if cfg.norm_position == "post" else make_norm(cfg.norm, cfg.dim, cfg.norm_eps,
                                                                                cfg.bias == "all")
        self.rotary = Rotary(cfg.dim // cfg.heads, self.tokens_per_clip, cfg.rope_theta)
        init_weights(self, cfg.depth)

    def token_mask(self, lengths: Tensor | None, T: int) -> Tensor | None:
        """(B,) real frames -> (B, T) True on tokens that cover real audio (None: all real)."""
        if lengths is None:
            return None
        real = (lengths.clamp(min=1) - 1) // self.stride + 1  # tokens whose window starts on a real frame
        return torch.arange(T, device=lengths.device)[None, :] < real[:, None]

    def embed(self, mel: Tensor) -> Tensor:
        """(B, M, F) -> (B, T, D) front-end features, before the blocks (HuBERT masks here)."""
        return self.front(mel).transpose(1, 2)

    def encode(self, x: Tensor, real: Tensor | None) -> Tensor:
        """(B, T, D) front-end features, (B, T) real-token mask or None -> (B, T, D) final-norm hidden states."""
        B, T, _ = x.shape
        mask = None if real is None else real[:, None, None, :].expand(B, 1, T, T)  # (B, 1, T, T) keys
        rope = self.rotary(T, None)
        for block in self.blocks:
            x = block(x, rope, mask, causal=False)
        return self.norm(x)

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, M, F) normalised log-mel, (B,) real frames -> (B, D) mean over real tokens."""
        x = self.embed(mel)
        real = self.token_mask(lengths, x.shape[1])
        return pool(self.encode(x, real), real, "mean")
