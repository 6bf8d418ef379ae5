"""Batches decoded on the fly from webdataset .tar shards, in the order data/stream/order.py gives: the streaming
counterpart of RowLoader (data/load/rows.py), with the same interface, for data too large to decode up front.

    loader = StreamLoader(table, ShardOrder(table.counts, seed), ImageDecoder(32, 3), workers=4)
    loader.shard(rank, world); batch = loader.next_batch(64)       # {'images': (64, 3, 32, 32), 'index': (64,)}

Each decoding worker process reads the samples of its own shards (disjoint, see order.py) by seeking to
the offsets the shard index holds, and decodes them as the cache does (data/read/image.py, data/cache/media.py's
row decoders): a corrupt sample is skipped, counted by reason, and the batch filled from the next positions.
Decoding runs a few chunks ahead of training; results are used in position order, so the batches do not depend
on the number of workers or on timing.

The position is per process, (epoch, positions consumed): processes skip different corrupt samples, so their
positions may differ by those. `state()` therefore gathers every process's position (a collective: every
process calls it, as the trainer's checkpoint does) and `load_state` gives each its own back. Resuming is exact
(no sample repeated or skipped) with the same number of processes; with another number it is exact from an
epoch boundary, and mid-epoch it fails with one line, because the epoch's shards were dealt for the old number.
"""

from __future__ import annotations

from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from selfsup.data.cache import media as media_data
from selfsup.data.cache.decoding import CHUNK, Skip
from selfsup.data.errors import DataError
from selfsup.data.read.captions import caption_arrays
from selfsup.data.read.image import IMAGE_SUFFIXES, MAX_BYTES, decode_image
from selfsup.data.stream.index import read_sample, shard_index
from selfsup.data.stream.order import ShardOrder, StridedOrder

OPEN_FILES = 16  # shard files a reader keeps open


@dataclass(frozen=True)
class ShardTable:
    """The shards a loader streams from, with their sample counts from the index."""
    paths: tuple[Path, ...]
    rels: tuple[str, ...]  # path relative to data.path: the sample identity, as the cache uses it
    counts: np.ndarray  # (S,) int64
    cache: Path  # where the shard indexes are

    @property
    def first(self) -> np.ndarray:
        return np.cumsum(self.counts) - self.counts  # (S,) global id of each shard's first sample

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard (n,), index within it (n,)) of global sample ids (n,)."""
        first = self.first
        shard = np.searchsorted(first, ids, side="right") - 1  # an empty shard shares its first id with the next
        return shard, ids - first[shard]                       # one: 'right' lands on the last, non-empty one


@dataclass(frozen=True)
class ImageDecoder:
    size: int
    channels: int

    max_bytes = MAX_BYTES

    @property
    def wanted(self) -> tuple[str, ...]:
        return tuple(suffix[1:] for suffix in IMAGE_SUFFIXES)  # labels are not read: training needs none

    def __call__(self, rel: str, key: str, sample: dict[str, bytes], skipped: Counter, notes: Counter) -> dict | None:
        item = media_data.tar_item(rel, key, sample, "image", skipped, captions=False)
        if item is None:
            return None
        return {"images": decode_image(item.payload, self.size, self.channels)}


@dataclass(frozen=True)
class PairDecoder:
    """Media and caption of an image-, audio- or video-text pair (data/cache/media.py's decoding)."""
    modality: str
    settings: tuple  # media.settings(...) as sorted (key, value) pairs, hashable

    @property
    def wanted(self) -> tuple[str, ...]:
        return media_data.tar_members(self.modality)

    @property
    def max_bytes(self) -> int:
        return media_data.MAX_BYTES[self.modality]

    def __call__(self, rel: str, key: str, sample: dict[str, bytes], skipped: Counter, notes: Counter) -> dict | None:
        item = media_data.tar_item(rel, key, sample, self.modality, skipped, captions=True)
        if item is None:
            return None
        row, length, note = media_data.row_decoder(self.modality, dict(self.settings))(item.payload)
        notes.update(note)
        return {"media": row, "lengths": np.int32(length), "caption": item.caption}


class Reader:
    """Reads and decodes samples by global id, keeping a few shard files and their indexes open."""

    def __init__(self, table: ShardTable, decoder):
        self.table, self.decoder = table, decoder
        self._open: dict[int, tuple] = {}  # shard -> (file, samples), in least recently used order

    def raw(self, shard: int, index: int, wanted: tuple[str, ...], max_bytes: int) -> tuple[str, dict[str, bytes]]:
        """(key, {ext: bytes}) of a sample's wanted members; Skip('file too large') for one over `max_bytes`."""
        if shard not in self._open:
            if len(self._open) >= OPEN_FILES:
                old = next(iter(self._open))
                self._open.pop(old)[0].close()
            samples, _ = shard_index(self.table.paths[shard], self.table.cache)
            self._open[shard] = (open(self.table.paths[shard], "rb"), samples)
        fh, samples = self._open[shard] = self._open.pop(shard)  # now the most recently used
        key, members = samples[index]
        return key, read_sample(fh, members, wanted, max_bytes)

    def decode(self, ids: list[int]) -> list[tuple[dict | None, Counter, Counter]]:
        """Per id: (its fields, or None when skipped; why it was skipped; notes on what decoding did)."""
        out = []
        shards, within = self.table.locate(np.asarray(ids, dtype=np.int64))
        for shard, index in zip(shards.tolist(), within.tolist()):
            skipped, notes, fields = Counter(), Counter(), None
            try:
                key, sample = self.raw(shard, index, self.decoder.wanted, self.decoder.max_bytes)
                fields = self.decoder(self.table.rels[shard], key, sample, skipped, notes)
            except OSError:
                skipped["unreadable shard"] += 1
            except Skip as e:
                skipped[e.reason] += 1
            out.append((fields, skipped, notes))
        return out


_WORKER_READER: Reader | None = None  # a decoding worker process's own reader


def _start_worker(table: ShardTable, decoder) -> None:
    global _WORKER_READER
    _WORKER_READER = Reader(table, decoder)


def _decode_in_worker(ids: list[int]):
    return _WORKER_READER.decode(ids)


class StreamLoader:
    def __init__(self, table: ShardTable, order: ShardOrder | StridedOrder, decoder, workers: int = 0,
                 text: tuple | None = None, counted: Counter | None = None):
        """workers: decoding processes (0: decode in this process); text: (tokenizer, context) to turn pairs'
        captions into 'text' (B, context) ids and 'text_mask'; counted: skips counted before streaming (corrupt
        archives found by the index), part of `skipped_all`."""
        self.table, self.order, self.decoder, self.workers, self.text = table, order, decoder, workers, text
        self.skipped, self.notes = Counter(), Counter()  # what this process's decoding skipped or noted
        self.counted = counted or Counter()
        self.skipped_all: dict[str, int] = dict(self.counted)  # over every process, as of the last state()
        self._reader = Reader(table, decoder) if workers == 0 else None
        self._pools: list[ProcessPoolExecutor] = []
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # the orders planned from, by epoch
        self.shard(order.rank, order.world)

    def close(self) -> None:
        """Stop the decoding processes: a worker of a multi-process run ends without the interpreter's clean-up
        (train/launch.end_worker), which would otherwise stop them."""
        for pool in self._pools:
            pool.shutdown(cancel_futures=True)
        self._pools = []

    def shard(self, rank: int, world: int) -> None:
        """Stream process `rank`'s part of the shards for `world` processes (see data/stream/order.py)."""
        self.order.rank, self.order.world = rank, world
        self._epochs.clear()
        if not self.order.length(0):
            raise DataError(f"{len(self.table.paths)} shard(s) holding {int(self.table.counts.sum())} samples leave "
                            f"no sample for some of the {world} processes; expected at least one non-empty shard per "
                            "process (more, smaller shards) or fewer processes")
        self.load_state({"epoch": 0, "index": 0})

    def __len__(self) -> int:
        """Samples in the current epoch, over all processes."""
        return self.order.length(self._pos[0]) * self.order.world

    # ------------------------------------------------------------------------------------------ batches

    def next_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """{field: (B, ...), 'index': (B,) int64 global sample ids}; epochs roll over seamlessly."""
        rows = [self._next_sample() for _ in range(batch_size)]
        batch = {}
        for name in rows[0][1]:
            if name != "caption":
                batch[name] = torch.from_numpy(np.stack([fields[name] for _, fields in rows]))
        if self.text is not None:
            ids, mask = caption_arrays(self.text[0], [fields["caption"] for _, fields in rows], self.text[1])
            batch["text"], batch["text_mask"] = torch.from_numpy(ids), torch.from_numpy(mask)
        batch["index"] = torch.tensor([sample_id for sample_id, _ in rows], dtype=torch.int64)
        return batch

    def _next_sample(self) -> tuple[int, dict]:
        skipped_in_a_row = 0
        while True:
            while not self._ready:
                self._fill()
            position, sample_id, (fields, skipped, notes) = self._ready.popleft()
            self._pos = position
            self.skipped.update(skipped)  # counted when consumed: a resumed run counts each position once
            self.notes.update(notes)
            if fields is not None:
                return sample_id, fields
            skipped_in_a_row += 1
            if skipped_in_a_row > 2 * self.order.length(position[0]) + CHUNK:
                raise DataError(f"no sample of {len(self.table.paths)} shard(s) decoded in a whole epoch (skipped: "
                                f"{dict(self.skipped)}); expected readable samples")

    def _fill(self) -> None:
        """Plan chunks of positions ahead and move the oldest decoded chunk to the ready queue."""
        while len(self._pending) < max(2 * self.workers, 1):
            self._pending.append(self._submit(self._plan(CHUNK)))
        positions, parts = self._pending.popleft()
        results: dict[int, tuple] = {}
        for part, result in parts:
            results.update(zip(part, result.result() if isinstance(result, Future) else result))
        for n, (position, sample_id) in enumerate(positions):
            self._ready.append((position, sample_id, results[n]))

    def _plan(self, count: int) -> list[tuple[tuple[int, int], int]]:
        """The next `count` (position after the sample, global id) pairs, continuing into the next epoch."""
        out = []
        epoch, index = self._planned
        while len(out) < count:
            ids, _ = self._epoch(epoch)
            if index == len(ids):
                epoch, index = epoch + 1, 0
                continue
            take = ids[index:index + count - len(out)]
            out += [((epoch, index + 1 + i), int(sample_id)) for i, sample_id in enumerate(take)]
            index += len(take)
        self._planned = (epoch, index)
        return out

    def _submit(self, positions: list) -> tuple[list, list]:
        """Each worker decodes the chunk's samples of its own shards; parts: (chunk offsets, result or future)."""
        ids = np.array([sample_id for _, sample_id in positions], dtype=np.int64)
        if self.workers == 0:
            return positions, [(list(range(len(ids))), self._reader.decode(ids.tolist()))]
        if not self._pools:
            self._pools = [ProcessPoolExecutor(1, initializer=_start_worker, initargs=(self.table, self.decoder))
                           for _ in range(self.workers)]
        shards, _ = self.table.locate(ids)
        epochs = [epoch for (epoch, _), _ in positions]
        worker = np.array([self._epoch(e)[1][s] for e, s in zip(epochs, shards.tolist())]) % self.workers  # (n,)
        parts = []
        for w in np.unique(worker).tolist():
            offsets = np.flatnonzero(worker == w).tolist()
            parts.append((offsets, self._pools[w].submit(_decode_in_worker, ids[offsets].tolist())))
        return positions, parts

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch not in self._epochs:
            for old in [e for e in self._epochs if e < epoch - 1]:
                del self._epochs[old]
            self._epochs[epoch] = self.order.epoch(epoch)
        return self._epochs[epoch]

    # ------------------------------------------------------------------------------------------ position

    def state(self) -> dict:
        """Every process's position, {'streaming': 1, 'world': W, 'ranks': [[epoch, index], ...]}: collective
        under a process group; without one (a single process, or tests) only this rank's entry is filled."""
        mine = (list(self._pos), dict(self.skipped))
        rank, world = self.order.rank, self.order.world
        everyone = [(None, {})] * world
        everyone[rank] = mine
        if world > 1 and dist.is_initialized():
            dist.all_gather_object(everyone, mine)
        self.skipped_all.clear()
        self.skipped_all.update(sum((Counter(s) for _, s in everyone), Counter(self.counted)))
        return {"streaming": 1, "world": world, "ranks": [position for position, _ in everyone]}

    def load_state(self, state: dict) -> None:
        world = self.order.world
        if "ranks" not in state:  # one position for every process: the start of an epoch (validation restarts)
            if state["index"]:
                raise DataError("the checkpoint's data position is from a run without data.streaming; expected "
                                "the same data.streaming setting as the run started with")
            position = (int(state["epoch"]), 0)
        elif state["world"] == world:
            if state["ranks"][self.order.rank] is None:
                raise DataError(f"the streaming data position holds no entry for process {self.order.rank}; expected "
                                "a state() taken on every process together")
            position = tuple(int(v) for v in state["ranks"][self.order.rank])
        else:
            epochs = {e for e, _ in state["ranks"]}
            if len(epochs) > 1 or any(index for _, index in state["ranks"]):
                raise DataError(f"the checkpoint's streaming data position is mid-epoch for {state['world']} "
                                f"process(es) but this run has {world}: a streaming run resumes mid-epoch only with "
                                f"the processes it was started with; expected {state['world']} process(es)")
            position = (epochs.pop(), 0)
        self._pos = self._planned = position
        self._pending, self._ready = deque(), deque()  # decoded ahead for the old position: dropped
