"""Learning-rate schedules as pure functions of the step: nothing to checkpoint but the step itself."""

from __future__ import annotations

import math

from selfsup.config import SchedConfig


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


def momentum_at(step: int, max_steps: int, base: float) -> float:
    """EMA momentum on BYOL's cosine schedule: `base` at step 0, rising to 1 at max_steps."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step / max(max_steps, 1), 1.0)) + 1) / 2


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """From `start` to `end` linearly over `warmup_steps`, then `end` (DINO's teacher temperature)."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
