"""Vision Transformer: patch embedding, a class token, fixed 2-D sin-cos positions and the shared transformer
blocks (bidirectional, no RoPE). Maps images (B, C, H, W) to features (B, D); `tokens` gives every token and can
encode a subset of patches, as MAE's encoder does.

Positions are computed for the grid at hand, in units of the full-size grid, so smaller local crops (DINO,
SwAV multi-crop) get the positions an interpolated embedding would give them. model.learned_positions: a learned
table for a square grid of patches instead (ViT, DINOv2, CLIP, SigLIP; the class token's own position is part of
the class token, the same sum), interpolated to other grids exactly as transformers' `interpolate_pos_encoding`
does; model.embed_norm: a norm on the embedded tokens before the blocks (CLIP's pre_layrnorm); model.pooling=map:
no class token, the features are a learned probe's attention over the patch tokens (SigLIP's multihead attention
pooling head).

Letters in shape comments: B batch, C channels, P patch side, T patches, D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ModelConfig
from selfsup.models.blocks import MLP, init_weights, make_norm, mlp_hidden, transformer_blocks
from selfsup.models.transformer import pool


def sincos_2d(rows: int, cols: int, dim: int, scale: float = 1.0) -> Tensor:
    """(rows · cols, dim) fixed positions as MAE and MoCo v3: half the channels encode the row, half the column;
    `scale` stretches coordinates so a smaller grid spans the same range as the full one."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (D/4,)
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float32) * scale,
                          torch.arange(cols, dtype=torch.float32) * scale, indexing="ij")
    out = []
    for coord in (r.flatten(), c.flatten()):
        angles = torch.outer(coord, omega)  # (T, D/4)
        out += [angles.sin(), angles.cos()]
    pos = torch.cat(out, dim=1)  # (T, 4 · D/4)
    return torch.nn.functional.pad(pos, (0, dim - pos.shape[1]))  # D not a multiple of 4: zero tail


def interpolate_positions(table: Tensor, rows: int, cols: int) -> Tensor:
    """(N, D) learned positions of a square grid -> (rows · cols, D): the table itself at its own grid, else bicubic
    (align_corners false) in fp32, as transformers' ViT and DINOv2 `interpolate_pos_encoding`."""
    side = math.isqrt(table.shape[0])
    if rows == cols == side:
        return table
    grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()  # (1, D, side, side)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)  # (1, D, rows, cols)
    return grid.permute(0, 2, 3, 1).reshape(rows * cols, -1).to(table.dtype)


class ViT(nn.Module):
    def __init__(self, cfg: ModelConfig, image_size: int, channels: int):
        super().__init__()
        self.cfg = cfg
        self.patch = cfg.patch
        self.grid = image_size // cfg.patch
        self.out_dim = cfg.dim
        self.embed = nn.Conv2d(channels, cfg.dim, cfg.patch, stride=cfg.patch)  # (B, C, H, W) -> (B, D, H/P, W/P)
        self.cls = None if cfg.pooling == "map" else nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.embed_norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias == "all") if cfg.embed_norm else None
        hidden = cfg.mlp_hidden or mlp_hidden(cfg.dim, cfg.mlp_ratio, cfg.mlp)
        self.blocks = transformer_blocks(cfg, hidden)
        # post-norm blocks end on a norm
        self.norm = nn.Identity() if cfg.norm_position == "post" else make_norm(cfg.norm, cfg.dim, cfg.norm_eps,
                                                                                cfg.bias == "all")
        self.attn_pool = AttentionPool(cfg, hidden) if cfg.pooling == "map" else None
        if cfg.learned_positions:  # the patches' of a square grid (model.position_grid, else the training grid)
            side = cfg.position_grid or self.grid
            self.pos = nn.Parameter(torch.zeros(side * side, cfg.dim))  # (N, D), N(0, 0.02) by init_weights
        else:
            self.register_buffer("pos", sincos_2d(self.grid, self.grid, cfg.dim), persistent=False)  # (T, D)
        init_weights(self, cfg.depth, scheme=cfg.weight_init)
        # the patch embedding as a linear layer with Xavier init (MAE): at N(0, 0.02) the image signal in a token is
        # a few percent of the sin-cos positions, and every image starts with nearly the same features (measured:
        # 1.4% spread across digits), which prototype methods (DINO, SwAV) never escape
        nn.init.xavier_uniform_(self.embed.weight.view(cfg.dim, -1))
        nn.init.zeros_(self.embed.bias)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)

    def positions(self, rows: int, cols: int) -> Tensor:
        """(rows · cols, D) positions of the patches of a grid."""
        if self.cfg.learned_positions:
            return interpolate_positions(self.pos, rows, cols)
        if rows == cols == self.grid:
            return self.pos
        return sincos_2d(rows, cols, self.out_dim, scale=self.grid / max(rows, cols)).to(self.pos.device)

    def patch_tokens(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, T, D) embedded patches with positions, no class token."""
        x = self.embed(images)  # (B, D, H/P, W/P)
        rows, cols = x.shape[-2:]
        return x.flatten(2).transpose(1, 2) + self.positions(rows, cols).to(x.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """(B, T', D) patch tokens -> (B, 1 + T', D) after the class token, the blocks and the final norm (no class
        token with model.pooling=map: (B, T', D))."""
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        for block in self.blocks:
            x = block(x, None, None, causal=False)
        return self.norm(x)

    def tokens(self, images: Tensor, keep: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B, 1 + T', D); keep: (B, T') indices of the patches to encode (MAE), or all."""
        x = self.patch_tokens(images)  # (B, T, D)
        if keep is not None:
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, T', D)
        return self.encode(x)

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D): the class token, the mean of the patch tokens (model.pooling=mean), or their
        attention pooling (map)."""
        x = self.tokens(images)
        if self.attn_pool is not None:
            return self.attn_pool(x)
        return x[:, 0] if self.cfg.pooling == "cls" else pool(x[:, 1:], None, "mean")


class AttentionPool(nn.Module):
    """A learned probe attends over the tokens, then a residual MLP on its normalised result: SigLIP's multihead
    attention pooling head (torch's MultiheadAttention, with its biases, as theirs)."""

    def __init__(self, cfg: ModelConfig, hidden: int):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.attn = nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
        self.norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias == "all")
        self.mlp = MLP(cfg.dim, hidden, cfg.mlp, cfg.bias == "all")

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, D)
        h = self.attn(self.probe.expand(x.shape[0], -1, -1).to(x.dtype), x, x, need_weights=False)[0]  # (B, 1, D)
        return (h + self.mlp(self.norm(h)))[:, 0]
