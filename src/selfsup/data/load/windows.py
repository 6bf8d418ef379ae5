"""Packed fixed-length windows over memory-mapped token shards, in a seeded order with an exact position.

Window i of a shard holds tokens [i·T, i·T + T + overlap): with overlap 1 (causal LM) inputs and shifted targets
share a token and every token is a target once per epoch; with overlap 0 (masked LM) windows tile the shard.
Each epoch visits all windows in a permutation drawn from (seed, epoch) (data/load/order.py); the position (epoch,
windows consumed) is all a checkpoint needs to continue exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from selfsup.data.errors import DataError
from selfsup.data.load.order import EpochOrder, OrderedLoader


class PackedWindows(OrderedLoader):
    def __init__(self, shards: list[Path], dtype: np.dtype, context: int, overlap: int = 1, seed: int = 0,
                 shuffle: bool = True):
        self.context, self.overlap = context, overlap
        self.maps = [np.memmap(s, dtype=dtype, mode="r") for s in shards]
        per_shard = [max((len(m) - overlap) // context, 0) for m in self.maps]
        self.offsets = np.cumsum([0] + per_shard)  # window index where each shard starts
        self.n = int(self.offsets[-1])
        if self.n == 0:
            total = sum(len(m) for m in self.maps)
            raise DataError(f"{total} tokens make no window of {context + overlap} tokens (model.context={context}); "
                            "expected more data or a smaller model.context")
        self.order = EpochOrder(self.n, seed, shuffle)

    def window(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.offsets, i, side="right") - 1)
        start = (i - int(self.offsets[shard])) * self.context
        return self.maps[shard][start:start + self.context + self.overlap]

    def next_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The next `batch_size` windows as {'tokens': (B, T + overlap) int64}; epochs roll over seamlessly."""
        rows = [self.window(int(i)) for i in self.order.take(batch_size)]
        return {"tokens": torch.from_numpy(np.stack(rows).astype(np.int64))}
