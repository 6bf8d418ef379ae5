"""MoCo v3 (Chen, Xie & He 2021): no queue; each view's prediction is contrasted with the momentum encoder's
keys of the other view within the batch (loss × 2τ), with a 3-layer projector and a 2-layer predictor ending
in BatchNorm, and a momentum that follows a cosine schedule from `momentum` to 1."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.data.batch import ImageBatch
from selfsup.dist import gather, rank_and_world
from selfsup.models.heads import mlp
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import moco_v3_loss
from selfsup.objectives.output import LossOutput
from selfsup.objectives.teacher import ema_update, frozen_copy, momentum_at


class MoCoV3(nn.Module, Objective):
    unit = "image"

    def __init__(self, backbone: nn.Module, views: nn.Module, proj_hidden: int, proj_dim: int, pred_hidden: int,
                 temperature: float, momentum: float, max_steps: int):
        super().__init__()
        self.model = backbone
        self.views = views
        self.projector = mlp(backbone.out_dim, proj_hidden, proj_dim, layers=3, last_bn=True)
        self.predictor = mlp(proj_dim, pred_hidden, proj_dim, layers=2, last_bn=True)
        self.momentum_encoder = frozen_copy(nn.ModuleDict({"model": backbone, "projector": self.projector}))
        self.temperature, self.momentum, self.max_steps = temperature, momentum, max_steps

    def forward(self, batch: ImageBatch) -> LossOutput:
        with torch.no_grad():
            v1, v2 = self.views(batch["images"])[:2]  # (B, C, S, S) each
            k1, k2 = self.momentum_encoder.projector(self.momentum_encoder.model(torch.cat([v1, v2]))).chunk(2)
        h = self.model(torch.cat([v1, v2]))  # (2B, D)
        q1, q2 = self.predictor(self.projector(h)).chunk(2)  # (B, E) each
        rank, _ = rank_and_world()  # across processes: the keys of the global batch, gathered without gradient
        offset = rank * q1.shape[0]
        loss_12, count = moco_v3_loss(q1, gather(k2, False), self.temperature, offset)
        loss_21, _ = moco_v3_loss(q2, gather(k1, False), self.temperature, offset)
        return LossOutput(loss_12 + loss_21, count, units=v1.shape[0], embeddings=h.detach().chunk(2),
                          projections=(q1.detach(), q2.detach()))

    def after_step(self, step: int) -> None:
        ema_update(self.momentum_encoder, (self.model, self.projector),
                   momentum_at(step, self.max_steps, self.momentum))
