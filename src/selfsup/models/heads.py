"""Heads that sit on a backbone's features: projection and prediction MLPs (SimCLR, MoCo, BYOL), the DINO head,
and L2-normalised prototypes (SwAV)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def mlp(dim_in: int, hidden: int, dim_out: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU × (layers − 1), then Linear (+ BN without affine: MoCo v3's projector). SimCLR uses
    layers=2, BYOL's projector and predictor layers=2, MoCo v3 3 (projector) and 2 (predictor)."""
    mods: list[nn.Module] = []
    d = dim_in
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, dim_out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(dim_out, affine=False))
    return nn.Sequential(*mods)


class DINOHead(nn.Module):
    """3-layer GELU MLP (BatchNorm after the hidden layers with `bn`, DINO's use_bn_in_head) to an L2-normalised
    bottleneck, then a weight-normalised linear layer to `out_dim` logits. The last layer's norm is fixed to 1
    (DINO's norm_last_layer), written as a row normalisation."""

    def __init__(self, dim_in: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256, bn: bool = False):
        super().__init__()
        norm = (lambda: nn.BatchNorm1d(hidden)) if bn else nn.Identity  # DINO's use_bn_in_head
        self.mlp = nn.Sequential(nn.Linear(dim_in, hidden), norm(), nn.GELU(), nn.Linear(hidden, hidden), norm(),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.Linear(bottleneck, out_dim, bias=False)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def bottleneck(self, x: Tensor) -> Tensor:  # (B, D) -> (B, bottleneck), L2-normalised
        return F.normalize(self.mlp(x), dim=-1)

    def logits(self, z: Tensor) -> Tensor:  # (B, bottleneck) -> (B, out_dim): cosines with the prototypes
        return F.linear(z, F.normalize(self.last.weight, dim=1))

    def forward(self, x: Tensor) -> Tensor:  # (B, D) -> (B, out_dim)
        return self.logits(self.bottleneck(x))
