"""A streaming run's data (data.streaming=true): webdataset .tar shards of images or of pairs, indexed from their
tar headers (cached per shard), split into training and held-out shards, with the normalisation statistics and
the caption tokenizer measured on a bounded head of the training shards; nothing is decoded up front beyond that.

- Validation: whole shards are held out, by a hash of their path relative to data.path (the rule documents
  follow in the text cache, with data.val_fraction as the share), so adding shards never moves an old one.
- Statistics: image mean/std (or log-mel mean/std) are measured on the first STATS_SAMPLES training samples in
  sorted shard order, unless the config sets them; an objective that fits on its data (BEiT's codebook) gets
  those decoded samples.
- Pairs: the caption tokenizer is trained on the captions of the first CAPTION_SAMPLES training samples (only
  their .txt members are read), unless data.tokenizer names one or the run directory holds one (a resumed run).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from selfsup.config import RunConfig
from selfsup.data.cache import images as image_data
from selfsup.data.cache import media as media_data
from selfsup.data.cache.decoding import CHUNK, Skip, decoded, default_workers
from selfsup.data.cache.encode import is_val
from selfsup.data.cache.stats import LogMelStats, PixelStats
from selfsup.data.errors import DataError
from selfsup.data.read.captions import caption_tokenizer
from selfsup.data.stream.index import shard_index
from selfsup.data.stream.loader import ImageDecoder, PairDecoder, Reader, ShardTable, StreamLoader
from selfsup.data.stream.order import ShardOrder, StridedOrder

STATS_SAMPLES = 1000  # decoded once at start for normalisation statistics
CAPTION_SAMPLES = 20_000  # captions the pair tokenizer is trained on
CAPTION_BYTES = 1 << 20  # a larger .txt member is no caption to train the tokenizer on
OTHER_SOURCES = image_data.SOURCE_SUFFIXES + media_data.SUFFIXES["audio"] + media_data.SUFFIXES["video"] + (".jsonl",)


@dataclass
class StreamSet:
    loader: StreamLoader
    val_loader: StreamLoader | None
    tokenizer: Tokenizer | None  # pairs: the caption tokenizer
    sample: np.ndarray | None  # for an objective that fits on its data: the decoded head of the training shards
    norm: tuple | None  # (mean, std) measured on that head, when the config leaves them unset
    window: tuple[str, int]
    summary: dict
    fingerprint: str  # the shards' paths and sizes (hashing every shard's bytes at each start would cost too much)


def prepare_stream(cfg: RunConfig, path: str, cache: Path, run_dir: Path, log, fits_on_data: bool, streams: bool) -> StreamSet:
    """fits_on_data: keep the decoded head of the training shards for the objective to fit on; streams: whether
    the objective can train from shards at all (one that clusters every training row cannot)."""
    _check_objective(cfg, streams)
    d, pairs = cfg.data, cfg.pairs
    files, rels = shard_files(path)
    workers = default_workers(d.workers)
    counts, counted = np.zeros(len(files), np.int64), Counter()
    for chunk, results in decoded(list(range(len(files))), _count_chunk, (files, cache), workers,
                                  "indexing shards"):
        for i, (count, corrupt) in zip(chunk, results):
            counts[i] = count
            counted["corrupt tar"] += corrupt
    held = np.array([is_val(rel, d.val_fraction) for rel in rels], dtype=bool)  # (S,)
    train, val = (_table(files, rels, counts, cache, sel) for sel in (~held, held))
    if not train.counts.sum():
        raise DataError(f"data.path '{path}': none of its {len(files)} shard(s) holds a training sample "
                        f"({int(held.sum())} held out for validation by data.val_fraction={d.val_fraction}); "
                        "expected non-empty .tar shards")
    decoder = (PairDecoder(cfg.modality, tuple(sorted(media_data.settings(cfg.modality, cfg).items()))) if pairs
               else ImageDecoder(cfg.image.size, cfg.image.channels))
    section = cfg.normalisation
    sample, measured, norm = None, 0, None
    if section.mean is None or section.std is None or fits_on_data:
        sample, lengths, measured = _head(train, decoder, workers)
        if section.mean is None or section.std is None:
            stats = LogMelStats() if cfg.modality == "audio" else PixelStats(cfg.image.channels)
            stats.add(sample, lengths)
            norm = stats.result()
            section = cfg.with_measured(*norm).normalisation
    tokenizer = _tokenizer(cfg, train, run_dir) if pairs else None
    text = (tokenizer, cfg.text.context) if pairs else None
    loader = StreamLoader(train, ShardOrder(train.counts, cfg.seed, d.shuffle_buffer), decoder, workers, text,
                          counted)
    val_loader = StreamLoader(val, StridedOrder(val.counts), decoder, workers, text) if val.counts.sum() else None
    n_train, n_val = int(train.counts.sum()), int(val.counts.sum())
    what = f"{cfg.modality}-text pairs" if pairs else "images"
    log(f"streaming {n_train:,} training {what} from {len(train.paths)} shard(s); {n_val:,} in "
        f"{len(val.paths)} held-out shard(s)" + (f"; statistics measured on the first {measured}" if measured else ""))
    summary = dict(path=d.path, streaming=True, files=len(files), shards={"train": len(train.paths),
                   "val": len(val.paths)}, skipped=loader.skipped_all,
                   notes=loader.notes, stats_samples=measured, mean=section.mean, std=section.std)
    summary["samples" if pairs else "images"] = {"train": n_train, "val": n_val}  # the keys the cache's summary uses
    fingerprint = hashlib.sha256(json.dumps([[r, f.stat().st_size] for r, f in zip(rels, files)]).encode())
    return StreamSet(loader, val_loader, tokenizer, sample if fits_on_data else None, norm,
                     (f"{n_train:,} training {what} streamed from {len(train.paths)} shard(s)", 1), summary,
                     fingerprint.hexdigest()[:24])


def _check_objective(cfg: RunConfig, streams: bool) -> None:
    if cfg.modality == "text":
        raise DataError(f"data.streaming=true: {cfg.objective} is a text objective, and text already streams from "
                        "memory-mapped token shards; expected data.streaming=false")
    if not streams:
        raise DataError(f"data.streaming=true: {cfg.objective} clusters every training sample it holds in memory; "
                        "expected data.streaming=false")


def shard_files(path: str) -> tuple[list[Path], list[str]]:
    """The .tar shards behind a data path, sorted by path parts, and their paths relative to it."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix.lower() == ".tar":
        return [p], [p.name]
    if not p.is_dir():
        raise DataError(f"data.path '{path}': data.streaming=true reads webdataset .tar shards; expected a .tar file "
                        "or a folder of them")
    found = sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.parts)
    files = [f for f in found if f.suffix.lower() == ".tar"]
    others = [f for f in found if f.suffix.lower() in OTHER_SOURCES and f.suffix.lower() != ".tar"]
    if others or not files:
        raise DataError(f"data.path '{path}': data.streaming=true reads webdataset .tar shards only, but the folder "
                        f"holds {len(files)} .tar and {len(others)} other data file(s)"
                        + (f" (e.g. {others[0].relative_to(p)})" if others else "")
                        + "; expected .tar shards only, or data.streaming=false")
    return files, [f.relative_to(p).as_posix() for f in files]


def _count_chunk(indices: list[int], files: list[Path], cache: Path) -> list[tuple[int, bool]]:
    """Runs in a worker: (samples, corrupt) of each shard, indexing those not indexed yet."""
    out = []
    for i in indices:
        samples, corrupt = shard_index(files[i], cache)
        out.append((len(samples), corrupt))
    return out


def _table(files: list[Path], rels: list[str], counts: np.ndarray, cache: Path, sel: np.ndarray) -> ShardTable:
    pick = np.flatnonzero(sel)
    return ShardTable(tuple(files[i] for i in pick), tuple(rels[i] for i in pick), counts[pick], cache)


def _decode_ids(ids: list[int], table: ShardTable, decoder):
    return Reader(table, decoder).decode(ids)


def _head(table: ShardTable, decoder, workers: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The first STATS_SAMPLES training samples that decode: (rows (n, ...), lengths (n,), n)."""
    ids = range(min(STATS_SAMPLES, int(table.counts.sum())))
    rows, lengths = [], []
    for _, results in decoded(ids, _decode_ids, (table, decoder), min(workers, -(-len(ids) // CHUNK)),
                              "decoding the statistics' samples"):
        for f, _, _ in results:
            if f is not None:
                rows.append(f["images"] if "images" in f else f["media"])
                lengths.append(f.get("lengths", 1))
    if not rows:
        raise DataError(f"none of the first {len(ids)} training samples of {len(table.paths)} shard(s) decoded; "
                        "expected readable samples")
    return np.stack(rows), np.array(lengths, dtype=np.int32), len(rows)


def _tokenizer(cfg: RunConfig, train: ShardTable, run_dir: Path) -> Tokenizer:
    saved = run_dir / "tokenizer.json"  # a resumed run keeps the tokenizer it started with
    given = str(saved) if saved.is_file() else cfg.data.tokenizer
    captions = []
    if not given:
        reader = Reader(train, None)
        shards, within = train.locate(np.arange(min(CAPTION_SAMPLES, int(train.counts.sum()))))
        for shard, index in zip(shards.tolist(), within.tolist()):
            try:
                sample = reader.raw(shard, index, ("txt",), CAPTION_BYTES)[1]
            except Skip:  # a caption too large to be one; decoding counts the sample
                continue
            text = sample.get("txt", b"").decode(errors="replace").strip()
            if text:
                captions.append(text)
        if not captions:
            raise DataError(f"the first {len(shards)} training samples carry no .txt caption; {cfg.objective} trains "
                            "on pairs: expected .tar shards whose samples hold a .txt caption")
    return caption_tokenizer(captions, cfg.text.vocab_size, given, closed=cfg.text.pooling == "last")
