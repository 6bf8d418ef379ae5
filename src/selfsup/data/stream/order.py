"""Which samples of a set of shards a process streams in an epoch, and in what order: index arithmetic on the
per-shard sample counts (data/stream/index.py), so a position (epoch, samples consumed) is all a resumed run needs,
and no sample is decoded to find it.

Training (ShardOrder): each epoch the shards are permuted with a generator seeded by (seed, epoch) and dealt to
the processes greedily, each shard to the process holding the fewest samples so far (ties: the lower rank), so
the processes read disjoint shards and hold about as many samples. A process reads its shards INTERLEAVE at a
time, round-robin (sample i of each before sample i+1 of any), and permutes each window of `buffer` consecutive
samples (a shuffle buffer, seeded by (seed, epoch, rank)). Every process's epoch is then cut to L, the fewest
samples any process was dealt: every process gets the same number of samples, hence of batches, per epoch;
the few samples past L on the others are left out of that epoch only (the next deals the shards anew).

Validation (StridedOrder): the held-out samples in shard order; process r takes samples r, r + world, ...,
cut to the same length on every process (wrapping round when there are fewer samples than
processes). Small, and read from its start at every evaluation.

`slot` gives each shard its place among the shards this process reads in the epoch (-1: not read here); the
loader's decoding worker k reads the shards whose slot is k modulo the workers, disjoint ones.
"""

from __future__ import annotations

import numpy as np
import torch

INTERLEAVE = 8  # shards a process reads at once: a batch mixes samples of several shards


class ShardOrder:
    def __init__(self, counts: np.ndarray, seed: int = 0, buffer: int = 1000, rank: int = 0, world: int = 1):
        self.counts = np.asarray(counts, dtype=np.int64)  # (S,) samples per shard
        self.first = np.cumsum(self.counts) - self.counts  # (S,) global id of each shard's first sample
        self.seed, self.buffer, self.rank, self.world = seed, buffer, rank, world

    def deal(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shards in the epoch's order (S,), the process each is dealt to (S,) indexed by shard)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.counts), generator=g).numpy()
        loads, owner = np.zeros(self.world, np.int64), np.zeros(len(self.counts), np.int64)
        for s in perm:
            r = int(np.argmin(loads))
            owner[s] = r
            loads[r] += self.counts[s]
        return perm, owner

    def length(self, epoch: int) -> int:
        """L: samples every process streams in this epoch."""
        _, owner = self.deal(epoch)
        return int(min(self.counts[owner == r].sum() for r in range(self.world)))

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(this process's global sample ids in order (L,) int64, slot of each shard (S,) int64)."""
        perm, owner = self.deal(epoch)
        length = int(min(self.counts[owner == r].sum() for r in range(self.world)))
        mine = perm[owner[perm] == self.rank]  # (m,) this process's shards, in the epoch's order
        slot = np.full(len(self.counts), -1, np.int64)
        slot[mine] = np.arange(len(mine))
        sizes = self.counts[mine]  # (m,)
        which = np.repeat(np.arange(len(mine)), sizes)  # (n,) position of each sample's shard in `mine`
        within = np.arange(len(which)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # (n,) index in its shard
        ids = self.first[mine][which] + within  # (n,) in shard-after-shard order
        ids = ids[np.lexsort((which % INTERLEAVE, within, which // INTERLEAVE))]  # interleaved, INTERLEAVE at a time
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        window = np.arange(len(ids)) // self.buffer
        ids = ids[np.lexsort((rng.random(len(ids)), window))]  # each window of `buffer` samples permuted
        return ids[:length], slot


class StridedOrder:
    def __init__(self, counts: np.ndarray, rank: int = 0, world: int = 1):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.rank, self.world = rank, world

    def length(self, epoch: int) -> int:
        return max(int(self.counts.sum()) // self.world, 1)

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        total = self.length(epoch) * self.world
        ids = (np.arange(total, dtype=np.int64) % int(self.counts.sum()))[self.rank::self.world]
        return ids, np.arange(len(self.counts), dtype=np.int64)
