"""One seed for every generator a run draws from: Python's, NumPy's, torch's and the masks' (batch_random.py)."""

from __future__ import annotations

import random

import numpy as np
import torch

from selfsup import batch_random


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    batch_random.seed(seed)
