"""What every objective's forward returns to the trainer (objectives/contract.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class LossOutput:
    loss: Tensor  # summed over `count` terms (fp32 scalar)
    count: Tensor | int  # number of terms the loss is summed over (valid target tokens, anchors, masked patches)
    units: int  # what throughput counts, in the objective's `unit`: tokens, images, pairs or clips
    metrics: dict[str, float | Tensor] = field(default_factory=dict)  # logged with the step (tensors read then)
    # for the collapse monitor, detached, one or two views of the same B samples: backbone features (B, D) and,
    # where the loss compares embeddings, the projections (B, E) it compares
    embeddings: tuple[Tensor, ...] = ()
    projections: tuple[Tensor, ...] = ()
