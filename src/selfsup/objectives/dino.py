"""DINO (Caron et al. 2021): self-distillation with no labels. The student sees every crop (2 global + N local),
the teacher (an EMA of the student, momentum on a cosine schedule to 1) only the global ones; the student
matches the teacher's centred and sharpened distribution over `out_dim` prototypes for every pair of different
crops.

Numerics from the paper's code: the center is an EMA (0.9) of the teacher's batch mean, updated after the loss;
the teacher temperature warms up linearly; the last layer gets no update for the first
`freeze_last_layer_steps` steps (its gradient is dropped before the optimizer step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.data.batch import ImageBatch
from selfsup.dist import all_reduce
from selfsup.models.blocks import wide
from selfsup.models.heads import DINOHead
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import dino_loss
from selfsup.objectives.output import LossOutput
from selfsup.objectives.teacher import ema_update, frozen_copy, linear_warmup, momentum_at


class DINO(nn.Module, Objective):
    unit = "image"

    def __init__(self, backbone: nn.Module, views: nn.Module, out_dim: int, hidden: int, bottleneck: int,
                 student_temp: float, teacher_temp: float, warmup_teacher_temp: float, teacher_temp_warmup_steps: int,
                 center_momentum: float, momentum: float, freeze_last_layer_steps: int, max_steps: int,
                 head_bn: bool = False, n_global: int = 2):
        super().__init__()
        self.model = backbone
        self.views = views
        self.head = DINOHead(backbone.out_dim, out_dim, hidden, bottleneck, bn=head_bn)
        self.teacher = frozen_copy(nn.ModuleDict({"model": backbone, "head": self.head}))
        self.register_buffer("center", torch.zeros(out_dim))  # (K,)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.n_global = n_global
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.teacher_temp = (warmup_teacher_temp, teacher_temp, teacher_temp_warmup_steps)
        self.momentum, self.max_steps, self.freeze_last_layer_steps = momentum, max_steps, freeze_last_layer_steps

    def forward(self, batch: ImageBatch) -> LossOutput:
        with torch.no_grad():
            crops = self.views(batch["images"])  # G global (B, C, S, S), then N local (B, C, s, s)
        g = self.n_global
        global_crops, local_crops = torch.cat(crops[:g]), crops[g:]
        with torch.no_grad():
            teacher = self.teacher.head(self.teacher.model(global_crops))  # (G·B, K)
        h = self.model(global_crops)  # (G·B, D)
        z = self.head.bottleneck(h)  # (G·B, bottleneck)
        student = list(self.head.logits(z).chunk(g))  # G × (B, K)
        if local_crops:
            student += self.head(self.model(torch.cat(local_crops))).chunk(len(local_crops))  # N × (B, K)
        start, end, warmup = self.teacher_temp
        temp = linear_warmup(int(self.steps_done), warmup, start, end)
        loss, count = dino_loss(student, list(teacher.chunk(g)), self.center, self.student_temp, temp)
        with torch.no_grad():  # the paper's collapse indicators: uniform collapse drives the teacher's entropy to
            probs = torch.softmax((wide(teacher) - self.center) / temp, dim=-1)  # ln K, one-hot collapse to 0
            entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=-1).mean()  # read at logging steps only
        if self.training:
            self._update_center(teacher)
        return LossOutput(loss, count, units=crops[0].shape[0], embeddings=h.detach().chunk(g)[:2],
                          projections=z.detach().chunk(g)[:2],
                          metrics={"teacher_temp": temp, "teacher_entropy": entropy})

    @torch.no_grad()
    def _update_center(self, teacher: Tensor) -> None:  # teacher: (G·B, K); the global batch's mean
        self.center.lerp_(all_reduce(wide(teacher).mean(dim=0), "mean"), 1 - self.center_momentum)

    def before_step(self, step: int) -> None:
        if step <= self.freeze_last_layer_steps:
            self.head.last.weight.grad = None  # the optimizer skips a parameter without gradient

    def after_step(self, step: int) -> None:
        ema_update(self.teacher, (self.model, self.head), momentum_at(step, self.max_steps, self.momentum))
        self.steps_done.fill_(step)
