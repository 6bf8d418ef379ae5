"""Random numbers for masks (MLM, PLM, MAE, BEiT, HuBERT) that are the same on any number of processes.

Every process draws the numbers of the whole global batch from one generator, seeded alike everywhere
(`seed`, called with the run's seed), and keeps its own rows: one process with the global batch and N processes
with a share each mask every sample alike, so masked objectives train the same on any number of processes, and a
run resumed on another number continues the same stream. Only the (B, ...) uniform draws are made for the whole
batch, not the model's work. The unit is the global micro-batch (train.batch_size × processes): 1 process × 4 rows
× 2 accumulated draws what 2 processes × 2 rows × 2 accumulated do, not what 1 × 8 rows × 1 does. Augmentations keep each process's own generator (they differ per rank anyway, and a
DataLoader-style stream per process is what users expect of them).

The generator lives on the CPU (a mask is a few kB per batch to move); its state is part of every checkpoint.
Validation draws from it seeded for the occasion and puts its state back after (seed.fixed_draws), so the training
stream does not depend on how often a run validates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.dist import rank_and_world

generator = torch.Generator().manual_seed(0)


def seed(value: int) -> None:
    generator.manual_seed(value)


def get_state() -> Tensor:
    return generator.get_state()


def set_state(state: Tensor) -> None:
    generator.set_state(state)


def rows(local: int) -> tuple[int, slice]:
    """(global batch size, this process's rows of it) for a batch of `local` rows per process."""
    rank, world = rank_and_world()
    return local * world, slice(rank * local, (rank + 1) * local)


def rand(shape: tuple[int, ...], device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform [0, 1) numbers of `shape` (B, ...): this process's B rows of the global batch's draw."""
    total, mine = rows(shape[0])
    return torch.rand((total, *shape[1:]), generator=generator, dtype=dtype)[mine].to(device)


def randint(low: int, high: int, shape: tuple[int, ...], device=None) -> Tensor:
    """Integers in [low, high) of `shape` (B, ...), drawn as `rand`."""
    total, mine = rows(shape[0])
    return torch.randint(low, high, (total, *shape[1:]), generator=generator)[mine].to(device)
