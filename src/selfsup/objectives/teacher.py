"""Momentum encoders (MoCo, BYOL, DINO): a frozen copy of the online network, moved toward it after each step,
and the schedules of their momentum and temperatures (pure functions of the step)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that the optimizer never sees (requires_grad=False); it changes only through `ema_update`."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: tuple[nn.Module, ...], momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student, parameter by parameter; `student` lists the online
    modules in the order the teacher copied them. BatchNorm statistics are not averaged: each network keeps the
    running statistics of the batches it saw."""
    t = list(teacher.parameters())
    s = [p for module in student for p in module.parameters()]
    assert len(t) == len(s), "the teacher copies exactly the listed student modules"
    torch._foreach_lerp_(t, s, 1.0 - momentum)


def momentum_at(step: int, max_steps: int, base: float) -> float:
    """EMA momentum on BYOL's cosine schedule: `base` at step 0, rising to 1 at max_steps."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step / max(max_steps, 1), 1.0)) + 1) / 2


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """From `start` to `end` linearly over `warmup_steps`, then `end` (DINO's teacher temperature)."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
