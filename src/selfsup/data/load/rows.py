"""Batches of whole rows of memory-mapped arrays (images, log-mel clips, video frames, token ids) in a seeded order
with an exact position, like PackedWindows for text: each epoch visits every row once in a permutation drawn
from (seed, epoch); (epoch, rows consumed) is all a checkpoint needs."""

from __future__ import annotations

import numpy as np
import torch

from selfsup.data.errors import DataError
from selfsup.data.load.order import EpochOrder, OrderedLoader


class RowLoader(OrderedLoader):
    def __init__(self, arrays: dict[str, np.ndarray], seed: int = 0, shuffle: bool = True):
        """arrays: name -> (N, ...) with the same N, row i of each belonging to the same sample."""
        sizes = {len(a) for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"arrays of different lengths: { {k: len(a) for k, a in arrays.items()} }")
        self.n = sizes.pop()
        if self.n == 0:
            raise DataError("a data split holds no samples; expected at least one (more data, or another "
                            "val_fraction)")
        self.arrays = arrays
        self.order = EpochOrder(self.n, seed, shuffle)

    def next_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """{name: (B, ...) rows, 'index': (B,) int64 row numbers}; epochs roll over seamlessly."""
        index = self.order.take(batch_size)  # (B,)
        batch = {k: torch.from_numpy(np.asarray(a[index])) for k, a in self.arrays.items()}
        return {**batch, "index": torch.from_numpy(index)}
