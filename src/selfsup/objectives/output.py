"""What every objective returns to the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class LossOutput:
    loss: Tensor  # summed over `count` units (fp32 scalar)
    count: Tensor  # number of units the loss is summed over (here: valid target tokens)
    tokens: int  # tokens processed, for throughput
    metrics: dict[str, float] = field(default_factory=dict)
