"""SwAV (Caron et al. 2020): swapped assignments between views. Each crop's projection is scored against
L2-normalised prototypes; Sinkhorn-Knopp turns the global crops' scores into codes that spread the batch evenly
over the prototypes, and every crop predicts the codes of the other global crops. Multi-crop as in the paper.

Prototypes are re-normalised after every step and frozen for `freeze_prototypes_steps` steps (the paper's first
epoch). Not done: the feature queue the paper adds for batches smaller than 256.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.batch import ImageBatch
from selfsup.models.heads import mlp
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import sinkhorn, swav_loss
from selfsup.objectives.output import LossOutput


class SwAV(nn.Module, Objective):
    unit = "image"

    def __init__(self, backbone: nn.Module, views: nn.Module, proj_hidden: int, proj_dim: int, prototypes: int,
                 temperature: float, epsilon: float, sinkhorn_iters: int, freeze_prototypes_steps: int,
                 n_global: int = 2):
        super().__init__()
        self.model = backbone
        self.views = views
        self.projector = mlp(backbone.out_dim, proj_hidden, proj_dim, layers=2)
        self.prototypes = nn.Linear(proj_dim, prototypes, bias=False)
        self._normalize_prototypes()
        self.n_global = n_global
        self.temperature, self.epsilon, self.sinkhorn_iters = temperature, epsilon, sinkhorn_iters
        self.freeze_prototypes_steps = freeze_prototypes_steps

    def scores(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, C, S, S) -> backbone features (N, D), normalised projections (N, E), prototype scores (N, K)."""
        h = self.model(images)
        z = F.normalize(self.projector(h), dim=-1)
        return h, z, self.prototypes(z)

    def forward(self, batch: ImageBatch) -> LossOutput:
        with torch.no_grad():
            crops = self.views(batch["images"])  # G global (B, C, S, S), then N local (B, C, s, s)
        g = self.n_global
        h, z, global_scores = self.scores(torch.cat(crops[:g]))  # (G·B, D), (G·B, E), (G·B, K)
        scores = list(global_scores.chunk(g))
        if len(crops) > g:
            scores += self.scores(torch.cat(crops[g:]))[2].chunk(len(crops) - g)
        codes = [sinkhorn(s.detach(), self.epsilon, self.sinkhorn_iters) for s in scores[:g]]  # G × (B, K)
        loss, count = swav_loss(scores, codes, self.temperature)
        return LossOutput(loss, count, units=crops[0].shape[0], embeddings=h.detach().chunk(g)[:2],
                          projections=z.detach().chunk(g)[:2])

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def before_step(self, step: int) -> None:
        if step <= self.freeze_prototypes_steps:
            self.prototypes.weight.grad = None

    def after_step(self, step: int) -> None:
        self._normalize_prototypes()
