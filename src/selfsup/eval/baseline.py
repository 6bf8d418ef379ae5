"""The `--baseline random` of `selfsup eval`: the run's objective with random weights, the floor a pretrained model's
figures are measured against."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import nn


def random_objective(cfg, tok: Tokenizer | None, device: torch.device) -> nn.Module:
    """A randomly initialised objective of the run's shape, seeded with the run's seed: the `--baseline random`."""
    from selfsup.objectives.build import build_objective
    from selfsup.seed import seed_everything

    seed_everything(cfg.seed)
    return build_objective(cfg, tok).to(device).eval()
