"""The one cache builder of images, audio, video and pairs: samples decoded in worker processes into memory-mapped
row arrays, split into train and validation, with their lengths, captions, labels and normalisation statistics.

    skipped = Counter()
    built = build_rows(folder, items(..., skipped), ImageRows(32, 3), val_fraction, workers, skipped)

`items` yields one `Item` per sample (data/cache/images.py, data/cache/media.py read their sources into them, counting what
they skip on the way); a row decoder (ImageRows, AudioRows, VideoRows) turns an item's payload into one row in a
worker. A sample that cannot be decoded is skipped and counted by reason, never a crash; what decoding did to a
kept one is counted as notes. Samples go to train or validation by a hash of their identity, stable under
reordering. The folder gets, per split: `<split>.npy` rows, `<split>_lengths.npy`, `<split>_labels.npy`,
`<split>_captions.json` (null when a sample has none) and `<split>_ids.jsonl` (each row's [file, key], a JSON line
a row, written as rows are, so memory stays bounded); and `skipped.jsonl`, [file, key, reason] per skipped sample
(data/skipped.py: names, never bytes). `selfsup embed` joins its rows back to their sources through them. The
caller writes meta.json.

A file payload reaches the decoder as its path, after a look at what it is: only a regular file is read ('not a
regular file': a device such as /dev/zero, a FIFO), and only up to the decoder's `max_bytes` ('file too large');
the decoder reads of it only what it needs (data/read/image.py, audio.py, video.py).

Labels are for evaluation only. The classes are the labels seen, sorted: integers numerically (as names: '2',
'10'), names alphabetically; when both are present integers are read as names ('3'). An integer outside
[0, MAX_CLASS_ID] is no class (a corrupt .cls of 10^20 would otherwise be one): the sample keeps no label and is
counted as 'bad label'. Missing labels are -1.
"""

from __future__ import annotations

import hashlib
import json
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from selfsup.data.cache.decoding import NpyWriter, Skip, decoded, digest
from selfsup.data.cache.encode import is_val
from selfsup.data.cache.stats import LogMelStats, PixelStats
from selfsup.data.skipped import Skipped, skip

SPLITS = ("train", "val")
MAX_CLASS_ID = 2**31 - 1  # an integer label above this is a corrupt one, not a class
NAMES = ("train_ids.jsonl", "val_ids.jsonl", "skipped.jsonl")  # what a cache built before they were lacks


class Item(NamedTuple):
    file: str  # the source file's path under the data path (relative())
    key: str | int | None  # inside it: a tar sample's key, a .jsonl line number, an npz or table row index; or None
    caption: str | None
    label: int | str | None
    payload: object  # what a worker decodes: a Path (the decoder opens it), a tar member's bytes, or an npz image

    @property
    def ident(self) -> str:
        """What the split hashes: the file, plus '#key' inside it."""
        return self.file if self.key is None else f"{self.file}#{self.key}"


@dataclass
class Built:
    rows: dict[str, int]  # per split
    skipped: Counter  # by reason
    notes: Counter  # by note
    classes: list[str]
    stats: PixelStats | LogMelStats  # of the training rows
    seconds: float

    @property
    def why(self) -> str:
        """The skips as 'reason: count, ...' for a message, or 'none'."""
        return ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items())) or "none"


def build_rows(out: Path, items: Iterable[Item], decoder, val_fraction: float, workers: int,
               skipped: Counter) -> Built:
    """Decode `items` with `decoder` into `out` (see the module docstring); `skipped` is the Counter the items
    count their own skips in, and gains the decoding's."""
    start = time.perf_counter()
    notes = Counter()
    writers = {split: NpyWriter(out / f"{split}.npy", decoder.shape, decoder.dtype) for split in SPLITS}
    ids = {split: open(out / f"{split}_ids.jsonl", "w", encoding="utf-8") for split in SPLITS}
    # what is kept of a decoded item: its caption and label, not its payload (a table's or a shard's image bytes
    # would hold the whole set in memory)
    kept: dict[str, list[tuple[str | None, int | str | None]]] = {"train": [], "val": []}
    lengths: dict[str, list[int]] = {"train": [], "val": []}
    stats = decoder.stats()
    try:
        for chunk, (rows, lens, reasons, item_notes) in decoded(items, _decode_chunk, (decoder,), workers,
                                                                "decoding"):
            for item, reason in zip(chunk, reasons):
                if reason is not None:
                    skip(skipped, reason, item.file, item.key)
            notes.update(n for ns in item_notes for n in ns)
            good = [item for item, r in zip(chunk, reasons) if r is None]
            val = np.array([is_val(item.ident, val_fraction) for item in good], dtype=bool)  # (k,)
            for split, sel in (("train", ~val), ("val", val)):
                writers[split].write(rows[sel])
                kept[split] += [(item.caption, item.label) for item, s in zip(good, sel) if s]
                ids[split].writelines(json.dumps([item.file, item.key]) + "\n" for item, s in zip(good, sel) if s)
                lengths[split] += lens[sel].tolist()
            stats.add(rows[~val], lens[~val])
    finally:
        for w in (*writers.values(), *ids.values()):
            w.close()
    n = {split: w.rows for split, w in writers.items()}
    classes, ids = class_ids([label for split in SPLITS for _, label in kept[split]], skipped)
    for split in SPLITS:
        np.save(out / f"{split}_lengths.npy", np.array(lengths[split], dtype=np.int32))
        np.save(out / f"{split}_labels.npy", ids[:n["train"]] if split == "train" else ids[n["train"]:])
        captions = [caption for caption, _ in kept[split]]
        (out / f"{split}_captions.json").write_text(json.dumps(captions if all(captions) else None))
    named = skipped.named if isinstance(skipped, Skipped) else []
    (out / "skipped.jsonl").write_text("".join(json.dumps(list(s)) + "\n" for s in named), encoding="utf-8")
    return Built(n, skipped, notes, classes, stats, time.perf_counter() - start)


def row_names(folder: Path, split: str = "train") -> Iterator[tuple[str, str | int | None]]:
    """(file, key) of each row of a split of a cache folder, in row order, read a line at a time."""
    with open(folder / f"{split}_ids.jsonl", encoding="utf-8") as f:
        for line in f:
            yield tuple(json.loads(line))


def skipped_names(folder: Path) -> list[tuple[str, str | int | None, str]]:
    """(file, key, reason) of each sample a cache folder's build skipped, in the order met."""
    lines = (folder / "skipped.jsonl").read_text(encoding="utf-8").splitlines()
    return [tuple(json.loads(line)) for line in lines]


def _decode_chunk(items: list[Item], decoder):
    """Runs in a worker: (rows that decoded (k, ...), their lengths (k,), a skip reason or None per item, the
    notes of each item)."""
    rows, lengths, reasons, notes = [], [], [], []
    for item in items:
        try:
            payload = item.payload
            row, length, note = decoder(_checked(payload, decoder.max_bytes) if isinstance(payload, Path) else payload)
            rows.append(row)
            lengths.append(length)
            reasons.append(None)
            notes.append(note)
        except Skip as e:
            reasons.append(e.reason)
            notes.append([])
    dtype = decoder.dtype
    stacked = np.stack(rows).astype(dtype, copy=False) if rows else np.empty((0, *decoder.shape), dtype)
    return stacked, np.array(lengths, dtype=np.int32), reasons, notes


def _checked(f: Path, max_bytes: int) -> Path:
    """`f`, when it is a regular, non-empty file of at most `max_bytes`; else Skip with the reason."""
    try:
        st = f.stat()
    except (OSError, ValueError):  # ValueError: a NUL in the path
        raise Skip("unreadable file") from None
    if not stat.S_ISREG(st.st_mode):
        raise Skip("not a regular file")
    if st.st_size > max_bytes:
        raise Skip("file too large")
    if not st.st_size:
        raise Skip("empty file")
    return f


def class_ids(labels: list[int | str | None], skipped: Counter) -> tuple[list[str], np.ndarray]:
    """Class names and each sample's index into them, -1 for none (see the module docstring); integers out of range
    are counted in `skipped` as 'bad label'."""
    if any(isinstance(label, str) for label in labels):
        labels = [str(label) if isinstance(label, int) else label for label in labels]
        classes = sorted({label for label in labels if label is not None})
    else:
        bad = [label is not None and not 0 <= label <= MAX_CLASS_ID for label in labels]
        if any(bad):
            skipped["bad label"] += sum(bad)
        labels = [None if b else label for label, b in zip(labels, bad)]
        classes = [str(i) for i in sorted({label for label in labels if label is not None})]
        labels = [None if label is None else str(label) for label in labels]
    index = {name: i for i, name in enumerate(classes)}
    return classes, np.array([index.get(label, -1) for label in labels], dtype=np.int64)


def cache_key(settings: dict, root: Path, files: list[Path],
              linked: Callable[[Path], Iterable[tuple[str, Path]]] = lambda f: ()) -> tuple[str, str]:
    """(key, content). content: a digest of every file's relative path and bytes, and of the files each one links
    to ((name, path) pairs: the media a .jsonl of pairs points at); what a run's identity compares. key: of the
    settings and the content, so a changed file is never served stale."""
    h = hashlib.sha256()
    for f in files:
        h.update(relative(root, f).encode() + b"\0" + digest(f))
        for name, target in linked(f):
            h.update(name.encode() + b"\0" + digest(target))
    content = h.hexdigest()[:24]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + content.encode()).hexdigest()[:24], content


def relative(root: Path, f: Path) -> str:
    """A source file's identity: its path under the data path, or its name when the data path is the file."""
    return f.name if root.is_file() else f.relative_to(root).as_posix()


def folder_label(rel: str) -> str | None:
    """A loose file's label: its first-level sub-folder under the data path (none directly in it)."""
    folder, sep, _ = rel.partition("/")
    return folder if sep else None
