"""Learning-rate schedules as pure functions of the step: nothing to checkpoint but the step itself."""

from __future__ import annotations

import math

from selfsup.config import RunConfig, SchedConfig


def lr_at(step: int, max_steps: int, peak: float, cfg: SchedConfig) -> float:
    """Linear warmup over `warmup_steps`, then:
    cosine   - cosine decay from peak to min_lr_ratio · peak at max_steps;
    wsd      - warmup-stable-decay: flat at peak, then linear decay to min_lr_ratio · peak over the last
               decay_fraction of the steps;
    constant - flat at peak."""
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    floor = peak * cfg.min_lr_ratio
    if cfg.name == "constant":
        return peak
    if cfg.name == "cosine":
        span = max(max_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = max(cfg.warmup_steps, int(max_steps * (1 - cfg.decay_fraction)))
    if step < decay_start:
        return peak
    progress = min((step - decay_start) / max(max_steps - decay_start, 1), 1.0)
    return peak + (floor - peak) * progress


def lr_scale(cfg: RunConfig, global_batch: int) -> float:
    """The factor the dist.lr_scaling rule applies to optim.lr for this global batch."""
    base = cfg.dist.base_batch or cfg.train.batch_size * cfg.train.grad_accum
    if cfg.dist.lr_scaling == "linear":
        return global_batch / base
    if cfg.dist.lr_scaling == "sqrt":
        return (global_batch / base) ** 0.5
    return 1.0
