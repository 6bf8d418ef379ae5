"""BYOL (Grill et al. 2020): the online network (backbone, projector, predictor) regresses the target network's
projection of the other view; the target is an EMA of the online backbone and projector, with a momentum on a
cosine schedule from `momentum` (0.996) to 1. No negatives: the predictor and the slow target prevent collapse.
Views are BYOL's asymmetric pair (blur 1.0 / 0.1, solarize 0.0 / 0.2), set in the recipe."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.data.batch import ImageBatch
from selfsup.models.heads import mlp
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import byol_loss
from selfsup.objectives.output import LossOutput
from selfsup.objectives.teacher import ema_update, frozen_copy, momentum_at


class BYOL(nn.Module, Objective):
    unit = "image"

    def __init__(self, backbone: nn.Module, views: nn.Module, proj_hidden: int, proj_dim: int, pred_hidden: int,
                 momentum: float, max_steps: int):
        super().__init__()
        self.model = backbone
        self.views = views
        self.projector = mlp(backbone.out_dim, proj_hidden, proj_dim, layers=2)
        self.predictor = mlp(proj_dim, pred_hidden, proj_dim, layers=2)
        self.target = frozen_copy(nn.ModuleDict({"model": backbone, "projector": self.projector}))
        self.momentum, self.max_steps = momentum, max_steps

    def forward(self, batch: ImageBatch) -> LossOutput:
        with torch.no_grad():
            v1, v2 = self.views(batch["images"])[:2]  # (B, C, S, S) each
            z1, z2 = self.target.projector(self.target.model(torch.cat([v1, v2]))).chunk(2)  # (B, E) each
        h = self.model(torch.cat([v1, v2]))  # (2B, D)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)  # (B, E) each
        loss_12, count = byol_loss(p1, z2)
        loss_21, _ = byol_loss(p2, z1)
        return LossOutput(loss_12 + loss_21, count, units=v1.shape[0], embeddings=h.detach().chunk(2),
                          projections=(p1.detach(), p2.detach()))

    def after_step(self, step: int) -> None:
        ema_update(self.target, (self.model, self.projector),
                   momentum_at(step, self.max_steps, self.momentum))
