"""Pure loss functions. Each returns a *sum* over its units and the number of units, so the trainer can divide
by the count of the whole accumulated batch (not by each micro-batch's count)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # label of positions that carry no loss (padding, unmasked tokens)


def token_cross_entropy(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """logits: (..., V) in any precision; labels: (...) with IGNORE where there is no target.
    Returns (summed cross-entropy in fp32, number of valid labels)."""
    loss = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, (labels != IGNORE).sum()
