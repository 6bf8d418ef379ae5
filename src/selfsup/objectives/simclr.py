"""SimCLR (Chen et al. 2020): two augmented views of each image, a projection MLP, and NT-Xent that pulls the two
views of an image together against every other view in the batch.

Both views go through the backbone in one pass, so BatchNorm statistics cover the whole 2B batch as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.data.batch import ImageBatch
from selfsup.dist import gather, rank_and_world
from selfsup.models.heads import mlp
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import nt_xent
from selfsup.objectives.output import LossOutput


class SimCLR(nn.Module, Objective):
    unit = "image"

    def __init__(self, backbone: nn.Module, views: nn.Module, proj_hidden: int, proj_dim: int, temperature: float):
        super().__init__()
        self.model = backbone
        self.views = views
        self.projector = mlp(backbone.out_dim, proj_hidden, proj_dim, layers=2)
        self.temperature = temperature

    def forward(self, batch: ImageBatch) -> LossOutput:
        with torch.no_grad():
            v1, v2 = self.views(batch["images"])[:2]  # (B, C, S, S) each
        h = self.model(torch.cat([v1, v2]))  # (2B, D)
        z1, z2 = self.projector(h).chunk(2)  # (B, E) each
        rank, _ = rank_and_world()  # across processes: every view of the global batch is a negative
        loss, count = nt_xent(z1, z2, self.temperature, gather(z1, True), gather(z2, True), rank * z1.shape[0])
        return LossOutput(loss, count, units=v1.shape[0], embeddings=h.detach().chunk(2),
                          projections=(z1.detach(), z2.detach()))
