"""The order a loader visits its items in: every item once per epoch, in a permutation drawn from (seed, epoch),
epochs rolling over seamlessly. The position (epoch, items consumed) is all a checkpoint needs to continue
exactly, with no item repeated or skipped.

Across processes every rank walks the same global order: a step's global batch is the next `count × world` items
and rank r keeps rows [r·count, (r+1)·count) of it. The ranks see disjoint items, always the same number of
batches (epochs roll over for all at once), and the position counts global items, so a run resumed with another
number of processes continues at the very next item.

OrderedLoader is what every loader over one EpochOrder shares (RowLoader, PackedWindows): sharding, the position
and the length; a subclass only says how the item ids of a batch become tensors."""

from __future__ import annotations

import numpy as np
import torch

from selfsup.data.errors import DataError


class EpochOrder:
    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch = 0
        self.index = 0  # items consumed in this epoch
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).numpy()

    def take(self, count: int) -> np.ndarray:
        """This rank's `count` item ids (int64) of the next global batch, continuing into the next epoch when this
        one runs out."""
        ids = self._take_global(count * self.world)
        return ids[self.rank * count:(self.rank + 1) * count]

    def _take_global(self, count: int) -> np.ndarray:
        parts = []
        while count:
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            part = self._order[self.index:self.index + count]
            parts.append(part)
            self.index += len(part)
            count -= len(part)
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        if "streaming" in state:
            raise DataError("the checkpoint's data position is from a run with data.streaming=true; expected the "
                            "same data.streaming setting as the run started with")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)


class OrderedLoader:
    """A loader whose batches are the next items of `self.order`; subclasses set it and define next_batch."""

    order: EpochOrder

    def shard(self, rank: int, world: int) -> None:
        """Read rank `rank`'s rows of each global batch of `world` processes (see the module docstring)."""
        self.order.rank, self.order.world = rank, world

    def state(self) -> dict:
        return self.order.state()

    def load_state(self, state: dict) -> None:
        self.order.load_state(state)

    def __len__(self) -> int:
        return self.order.n
