"""Batches that mix two streams by a fixed share of rows: continual pretraining's new data with replay rows from
the data the parent run trained on.

After n rows in all, exactly round(replay · n) of them came from the replay stream (halves rounded up), so every
batch holds the new rows first and then its share of replay rows (3 or 4 of 16 at replay 0.2), and the share is
exact over the run to a row. Both streams keep their own seeded order; the position of each and the two counts
are all a checkpoint needs (the trainer saves state() as the data position).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from selfsup.data.load.rows import RowLoader
from selfsup.data.load.windows import PackedWindows


class Mixture:
    def __init__(self, new: PackedWindows | RowLoader, replay: PackedWindows | RowLoader, share: float):
        if not 0 <= share < 1:
            raise ValueError(f"replay share {share}: expected 0 <= share < 1")
        self.new, self.replay = new, replay
        self.share = Fraction(str(share))  # 0.2 is exactly 1/5, so the counts never drift by float rounding
        self.rows = 0  # rows served so far (this process's)
        self.replayed = 0  # of them from the replay stream

    def _replay_rows(self, batch_size: int) -> int:
        """Replay rows in the next batch: what keeps the running share at round(share · rows)."""
        due = math.floor(self.share * (self.rows + batch_size) + Fraction(1, 2))
        return due - self.replayed

    def next_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """{name: (B, ...)}: B − k new rows, then k replay rows."""
        k = self._replay_rows(batch_size)
        parts = [self.new.next_batch(batch_size - k)] + ([self.replay.next_batch(k)] if k else [])
        self.rows += batch_size
        self.replayed += k
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    def shard(self, rank: int, world: int) -> None:
        """Every process takes its rows of each stream's global batch (data/load/order.py); all processes draw the same
        number of replay rows per batch, as they count the same batches."""
        self.new.shard(rank, world)
        self.replay.shard(rank, world)

    def state(self) -> dict:
        return {"new": self.new.state(), "replay": self.replay.state(), "rows": self.rows, "replayed": self.replayed}

    def load_state(self, state: dict) -> None:
        self.new.load_state(state["new"])
        self.replay.load_state(state["replay"])
        self.rows, self.replayed = int(state["rows"]), int(state["replayed"])

    def __len__(self) -> int:
        return len(self.new)
