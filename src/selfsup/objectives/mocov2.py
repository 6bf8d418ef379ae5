"""MoCo v2 (Chen et al. 2020): a query encoder trained by InfoNCE against keys from a momentum encoder, with a
queue of keys from earlier batches as negatives; MLP head, SimCLR-style augmentation.

The loss is symmetrised (each view is the query once, as in MoCo v3 and solo-learn's MoCo v2+): twice the
signal per image for the same forward passes. The head's hidden layer has BatchNorm, as SimCLR's: MoCo v2's head
has none, which is fine on a ResNet (BatchNorm throughout) but with a ViT, which has none anywhere, every
projection starts on one common direction and the loss sits at ln(1 + queue) (measured on the digits demo:
chance-level kNN after 300 steps without it). The momentum is constant (0.999 in the paper), the queue a FIFO
ring buffer of normalised keys that is part of the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.batch import ImageBatch
from selfsup.dist import gather
from selfsup.models.heads import mlp
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import moco_v2_loss
from selfsup.objectives.output import LossOutput
from selfsup.objectives.teacher import ema_update, frozen_copy


class MoCoV2(nn.Module, Objective):
    unit = "image"

    def __init__(self, backbone: nn.Module, views: nn.Module, proj_hidden: int, proj_dim: int, temperature: float,
                 momentum: float, queue_size: int):
        super().__init__()
        self.model = backbone
        self.views = views
        self.projector = mlp(backbone.out_dim, proj_hidden, proj_dim, layers=2)
        self.key_encoder = frozen_copy(nn.ModuleDict({"model": backbone, "projector": self.projector}))
        self.temperature, self.momentum = temperature, momentum
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))  # (K, E)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, batch: ImageBatch) -> LossOutput:
        with torch.no_grad():
            v1, v2 = self.views(batch["images"])[:2]  # (B, C, S, S) each
            keys = self.key_encoder.projector(self.key_encoder.model(torch.cat([v2, v1])))  # (2B, E): keys swapped
        h = self.model(torch.cat([v1, v2]))  # (2B, D)
        q = self.projector(h)  # (2B, E)
        loss, count = moco_v2_loss(q, keys, self.queue.clone(), self.temperature)  # the queue changes below
        if self.training:
            # every rank enqueues the keys of the global batch, in the order one process would: one queue
            k2, k1 = F.normalize(keys.to(self.queue.dtype), dim=1).chunk(2)
            self._enqueue(torch.cat([gather(k2, False), gather(k1, False)]))
        return LossOutput(loss, count, units=v1.shape[0], embeddings=h.detach().chunk(2),
                          projections=q.detach().chunk(2))

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:  # keys: (N, E) replace the oldest N entries of the ring
        K = self.queue.shape[0]
        keys = keys[-K:]  # more keys than the queue holds: the newest K
        n = keys.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % K
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + n) % K)

    def after_step(self, step: int) -> None:
        ema_update(self.key_encoder, (self.model, self.projector), self.momentum)
