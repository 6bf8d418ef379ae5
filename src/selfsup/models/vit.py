"""Vision Transformer: patch embedding, a class token, fixed 2-D sin-cos positions and the shared transformer
blocks (bidirectional, no RoPE). Maps images (B, C, H, W) to features (B, D); `tokens` gives every token and can
encode a subset of patches, as MAE's encoder does.

Positions are computed for the grid at hand, in units of the full-size grid, so smaller local crops (DINO,
SwAV multi-crop) get the positions an interpolated embedding would give them. With model.learned_positions they are
a learned table for the class token and a square grid of patches (ViT, DINOv2 in transformers), interpolated to
other grids exactly as transformers' `interpolate_pos_encoding` does.

Letters in shape comments: B batch, C channels, P patch side, T patches, D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ModelConfig
from selfsup.models.blocks import init_weights, make_norm, mlp_hidden, transformer_blocks
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
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.blocks = transformer_blocks(cfg, cfg.mlp_hidden or mlp_hidden(cfg.dim, cfg.mlp_ratio, cfg.mlp))
        # post-norm blocks end on a norm
        self.norm = nn.Identity() if cfg.norm_position == "post" else make_norm(cfg.norm, cfg.dim, cfg.norm_eps,
                                                                                cfg.bias == "all")
        if cfg.learned_positions:  # the class token's, then the patches' of a square grid
            side = cfg.position_grid or self.grid
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + side * side, cfg.dim))  # (1, 1 + N, D)
        else:
            self.pos_embed = None
            self.register_buffer("pos", sincos_2d(self.grid, self.grid, cfg.dim), persistent=False)  # (T, D)
        init_weights(self, cfg.depth)
        # the patch embedding as a linear layer with Xavier init (MAE): at N(0, 0.02) the image signal in a token is
        # a few percent of the sin-cos positions, and every image starts with nearly the same features (measured:
        # 1.4% spread across digits), which prototype methods (DINO, SwAV) never escape
        nn.init.xavier_uniform_(self.embed.weight.view(cfg.dim, -1))
        nn.init.zeros_(self.embed.bias)
        nn.init.normal_(self.cls, std=0.02)

    def positions(self, rows: int, cols: int) -> Tensor:
        """(rows · cols, D) positions of the patches of a grid."""
        if self.pos_embed is not None:
            return interpolate_positions(self.pos_embed[0, 1:], rows, cols)
        if rows == cols == self.grid:
            return self.pos
        return sincos_2d(rows, cols, self.out_dim, scale=self.grid / max(rows, cols)).to(self.pos.device)

    def patch_tokens(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, T, D) embedded patches with positions, no class token."""
        x = self.embed(images)  # (B, D, H/P, W/P)
        rows, cols = x.shape[-2:]
        return x.flatten(2).transpose(1, 2) + self.positions(rows, cols).to(x.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """(B, T', D) patch tokens -> (B, 1 + T', D) after the class token, the blocks and the final norm."""
        cls = self.cls if self.pos_embed is None else self.cls + self.pos_embed[:, :1]  # (1, 1, D)
        x = torch.cat([cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
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
        """(B, C, H, W) -> (B, D): the class token, or the mean of the patch tokens (model.pooling=mean)."""
        x = self.tokens(images)
        return x[:, 0] if self.cfg.pooling == "cls" else pool(x[:, 1:], None, "mean")
