"""One seed for every generator a run draws from: Python's, NumPy's, torch's and the masks' (batch_random.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from selfsup import batch_random


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    batch_random.seed(seed)


@contextmanager
def fixed_draws(seed: int) -> Iterator[None]:
    """Every generator seed_everything seeds, seeded `seed` inside and put back as it was after: validation scores the
    same masks and views at every evaluation, and training draws the same numbers however often it validates."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # not initialised: nothing drew from it
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state(), batch_random.get_state(),
             torch.cuda.get_rng_state_all() if cuda else None)
    seed_everything(seed)
    try:
        yield
    finally:
        python, numpy, cpu, masks, gpus = saved
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
        batch_random.set_state(masks)
        if cuda:
            torch.cuda.set_rng_state_all(gpus)
