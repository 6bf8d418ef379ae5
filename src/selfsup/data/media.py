"""Audio, video and media-text pairs, decoded once into a memory-mapped cache (images alone: data/images.py).

Sources under a data path:
  - `.jsonl` pair files: one object per line with the media path under the modality's key (`image`, `audio` or
    `video`; or `path`), relative to the .jsonl file, and its caption under `text`, optionally a `label`;
  - webdataset `.tar` shards: a sample is the members sharing a key, the media member by its extension, the
    caption in `.txt`, a label in `.cls` (int) or `.label` (name);
  - media files (a file, or a folder read recursively), labeled by their first-level sub-folder: for the audio
    objectives and for evaluation sets; they carry no caption.
A folder holding any .jsonl or .tar is read through those alone (the media files they point at are not read
twice); otherwise its media files are.

Rows: images uint8 (C, S, S) as data/images.py decodes them; audio float16 log-mel (n_mels, frames) with the
number of frames that hold real audio (data/audio.py); video uint8 (F, C, S, S), F frames at segment centres
(data/video.py). A sample whose media is missing or corrupt is skipped and counted by reason, and so is a
pair without a caption when captions are asked for (alignment); what decoding did to a kept clip (resampled,
mixed to mono, clipped, padded, cropped, repeated frames) is counted as notes. Samples go to train or validation
by a hash of their identity, as images do.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from selfsup.data import images as image_data
from selfsup.data.audio import AUDIO_SUFFIXES, clip_frames, decode_audio
from selfsup.data.decoding import NpyWriter, Skip, build_cache, decoded, digest, tar_samples
from selfsup.data.shards import default_cache, is_val
from selfsup.data.text import DataError
from selfsup.data.video import VIDEO_SUFFIXES, decode_video

FORMAT = 1  # bump when the cache layout or the decoding changes
SUFFIXES = {"image": image_data.IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES, "video": VIDEO_SUFFIXES}


@dataclass
class Split:
    rows: np.ndarray  # (N, ...) memory-mapped: uint8 images or frames, float16 log-mel
    lengths: np.ndarray  # (N,) int32: log-mel frames holding real audio; the full row otherwise
    captions: list[str] | None  # one per row, or None when the source has none
    labels: np.ndarray  # (N,) int64 indices into MediaSet.classes, -1 = none


@dataclass
class MediaSet:
    dir: Path
    modality: str
    train: Split
    val: Split
    classes: list[str]
    meta: dict  # files, samples per split, skipped and notes by reason, mean, std, settings


class _Item(NamedTuple):
    ident: str  # what the split hashes: relative path plus '#line' (jsonl) or '#key' (tar)
    caption: str | None
    label: int | str | None
    kind: str  # 'file' (a path to read) or 'bytes' (a tar member)
    payload: object


def settings(modality: str, cfg) -> dict:
    """The decoding settings of a run's config for one modality (they key the cache)."""
    if modality == "audio":
        a = cfg.audio
        return dict(sample_rate=a.sample_rate, seconds=a.seconds, n_mels=a.n_mels, n_fft=a.n_fft, hop=a.hop,
                    min_seconds=a.min_seconds)
    if modality == "video":
        return dict(size=cfg.image.size, channels=cfg.image.channels, frames=cfg.video.cache_frames)
    return dict(size=cfg.image.size, channels=cfg.image.channels)


def row_shape(modality: str, s: dict) -> tuple[tuple[int, ...], np.dtype]:
    if modality == "audio":
        return (s["n_mels"], clip_frames(s["sample_rate"], s["seconds"], s["hop"])), np.dtype(np.float16)
    if modality == "video":
        return (s["frames"], s["channels"], s["size"], s["size"]), np.dtype(np.uint8)
    return (s["channels"], s["size"], s["size"]), np.dtype(np.uint8)


def source_files(path: str, modality: str) -> list[Path]:
    """The .jsonl/.tar files behind a data path, or else its media files; sorted, so every run reads them in the
    same order."""
    media = SUFFIXES[modality]
    p = Path(path).expanduser()
    expected = f"a .jsonl of pairs, webdataset .tar shards, or {modality} files ({' '.join(media)})"
    if p.is_file():
        if p.suffix.lower() not in (".jsonl", ".tar") + media:
            raise DataError(f"data.path '{path}': expected {expected}, got a '{p.suffix or 'no suffix'}' file")
        return [p]
    if not p.is_dir():
        raise DataError(f"data.path '{path}' does not exist; expected {expected}, or a folder of them")
    files = sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.parts)
    pairs = [f for f in files if f.suffix.lower() in (".jsonl", ".tar")]
    found = pairs or [f for f in files if f.suffix.lower() in media]
    if not found:
        raise DataError(f"data.path '{path}': the folder holds no .jsonl, .tar or {modality} files "
                        f"({' '.join(media)})")
    return found


def prepare_media(path: str, modality: str, decode: dict, val_fraction: float, cache_dir: str | None = None,
                  workers: int | None = None, log=print, captions: bool = False) -> MediaSet:
    """Decode every sample under `path` once into `cache_dir/media/<key>` and open it memory-mapped. With
    `captions` (pairs for alignment) a .jsonl line without a caption is skipped and counted; without, it is kept."""
    files = source_files(path, modality)
    root = Path(path).expanduser()
    key = _cache_key(root, files, modality, dict(decode, captions=captions), val_fraction)
    out = (Path(cache_dir).expanduser() if cache_dir else default_cache()) / "media" / key
    build_cache(out, modality, len(files), workers,
                lambda tmp, n: _build(path, root, files, tmp, modality, decode, val_fraction, n, log, captions), log)
    return _open(out)


def _cache_key(root: Path, files: list[Path], modality: str, decode: dict, val_fraction: float) -> str:
    h = hashlib.sha256(json.dumps(dict(format=FORMAT, modality=modality, decode=decode, val_fraction=val_fraction),
                                  sort_keys=True).encode())
    for f in files:
        h.update(_relative(root, f).encode() + b"\0" + digest(f))
        if f.suffix.lower() == ".jsonl":  # the media a pair file points at are part of the data too
            for line in f.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    member = record.get(modality, record.get("path"))  # as _jsonl_items reads it
                except (ValueError, AttributeError):
                    continue
                if isinstance(member, str):
                    h.update(member.encode() + b"\0" + digest(f.parent / member))
    return h.hexdigest()[:24]


def _relative(root: Path, f: Path) -> str:
    return f.name if root.is_file() else f.relative_to(root).as_posix()


def _build(path: str, root: Path, files: list[Path], out: Path, modality: str, decode: dict, val_fraction: float,
           workers: int, log, captions: bool) -> None:
    start = time.perf_counter()
    skipped, notes = Counter(), Counter()
    shape, dtype = row_shape(modality, decode)
    writers = {split: NpyWriter(out / f"{split}.npy", shape, dtype) for split in ("train", "val")}
    kept: dict[str, list[_Item]] = {"train": [], "val": []}
    lengths: dict[str, list[int]] = {"train": [], "val": []}
    stats = _Stats(modality, decode)
    try:
        for chunk, (rows, lens, reasons, item_notes) in decoded(_items(root, files, modality, skipped, captions),
                                                                _decode_chunk, (modality, decode), workers):
            skipped.update(r for r in reasons if r is not None)
            notes.update(n for ns in item_notes for n in ns)
            good = [item for item, r in zip(chunk, reasons) if r is None]
            val = np.array([is_val(item.ident, val_fraction) for item in good], dtype=bool)  # (k,)
            for split, sel in (("train", ~val), ("val", val)):
                writers[split].write(rows[sel])
                kept[split] += [item for item, s in zip(good, sel) if s]
                lengths[split] += lens[sel].tolist()
            stats.add(rows[~val], lens[~val])
    finally:
        for w in writers.values():
            w.close()
    n = {split: w.rows for split, w in writers.items()}
    why = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items())) or "none"
    if n["train"] == 0:
        raise DataError(f"data.path '{path}': no {modality} sample decoded into the training split ({n['val']} in "
                        f"validation, {sum(skipped.values())} skipped: {why}); expected readable {modality} files")
    classes, ids = image_data._classes([item.label for split in ("train", "val") for item in kept[split]])
    for split in ("train", "val"):
        np.save(out / f"{split}_lengths.npy", np.array(lengths[split], dtype=np.int32))
        np.save(out / f"{split}_labels.npy", ids[:n["train"]] if split == "train" else ids[n["train"]:])
        captions = [item.caption for item in kept[split]]
        (out / f"{split}_captions.json").write_text(json.dumps(captions if all(captions) else None))
    mean, std = stats.result()
    meta = dict(format=FORMAT, path=path, modality=modality, files=len(files), decode=decode,
                val_fraction=val_fraction, samples=n, skipped=dict(sorted(skipped.items())),
                notes=dict(sorted(notes.items())), classes=classes, mean=mean, std=std)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    seconds = time.perf_counter() - start
    noted = ", ".join(f"{note}: {count}" for note, count in sorted(notes.items())) or "none"
    log(f"decoded {n['train']} train + {n['val']} val {modality} samples in {seconds:.1f}s "
        f"({(n['train'] + n['val']) / seconds:.0f}/s); skipped {why}; kept with notes: {noted}")


class _Stats:
    """Normalisation statistics of the training rows: per-channel mean/std of pixels (exact, from value counts),
    or one mean/std over the log-mel values of real (unpadded) frames."""

    def __init__(self, modality: str, decode: dict):
        self.audio = modality == "audio"
        self.hist = None if self.audio else np.zeros((decode["channels"], 256), np.int64)
        self.sums = np.zeros(3)  # count, Σx, Σx²

    def add(self, rows: np.ndarray, lengths: np.ndarray) -> None:
        if not self.audio:
            pixels = rows.reshape(-1, *rows.shape[-3:])  # (k·F, C, S, S): video frames count like images
            for c in range(self.hist.shape[0]):
                self.hist[c] += np.bincount(pixels[:, c].ravel(), minlength=256)
            return
        for row, n in zip(rows, lengths):
            x = row[:, :n].astype(np.float64)
            self.sums += (x.size, x.sum(), (x * x).sum())

    def result(self) -> tuple:
        if not self.audio:
            return image_data._mean_std(self.hist)
        n, s, ss = self.sums
        mean = s / max(n, 1)
        return float(mean), float(np.sqrt(max(ss / max(n, 1) - mean * mean, 1e-12)))


def _items(root: Path, files: list[Path], modality: str, skipped: Counter, captions: bool) -> Iterator[_Item]:
    for f in files:
        rel = _relative(root, f)
        suffix = f.suffix.lower()
        if suffix == ".jsonl":
            yield from _jsonl_items(f, rel, modality, skipped, captions)
        elif suffix == ".tar":
            yield from _tar_items(f, rel, modality, skipped, captions)
        else:
            folder, sep, _ = rel.partition("/")
            yield _Item(rel, None, folder if sep else None, "file", f)


def _jsonl_items(f: Path, rel: str, modality: str, skipped: Counter, captions: bool) -> Iterator[_Item]:
    try:
        lines = f.read_bytes().splitlines()
    except OSError:
        skipped["unreadable file"] += 1
        return
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:  # UnicodeDecodeError included
            skipped["bad json line"] += 1
            continue
        if not isinstance(record, dict):
            skipped["bad json line"] += 1
            continue
        member, caption = record.get(modality, record.get("path")), record.get("text")
        if not isinstance(member, str) or not member:
            skipped[f"no '{modality}' in pair"] += 1
            continue
        caption = caption.strip() if isinstance(caption, str) and caption.strip() else None
        if captions and caption is None:
            skipped["no caption"] += 1
            continue
        label = record.get("label")
        label = label if isinstance(label, (int, str)) and not isinstance(label, bool) else None
        yield _Item(f"{rel}#{number}", caption, label, "file", f.parent / member)


def _tar_items(f: Path, rel: str, modality: str, skipped: Counter, captions: bool) -> Iterator[_Item]:
    for key, sample in tar_samples(f, tar_members(modality), skipped):
        item = tar_item(rel, key, sample, modality, skipped, captions)
        if item is not None:
            yield item


def tar_members(modality: str) -> tuple[str, ...]:
    """The tar member extensions a sample of this modality is read from (others are never read)."""
    return tuple(suffix[1:] for suffix in SUFFIXES[modality]) + ("txt", "cls", "label")


def tar_item(rel: str, key: str, sample: dict[str, bytes], modality: str, skipped: Counter,
             captions: bool) -> _Item | None:
    """One webdataset sample as an item, or None when it is skipped (counted in `skipped`)."""
    media = SUFFIXES[modality]
    ext = next((e for e in sample if f".{e}" in media), None)
    if ext is None:
        skipped[f"no {modality} in tar sample"] += 1
        return None
    try:
        caption = sample["txt"].decode().strip() if "txt" in sample else None
        label = int(sample["cls"].decode()) if "cls" in sample else None
        label = sample["label"].decode().strip() if "label" in sample else label
    except ValueError:  # UnicodeDecodeError included
        skipped["bad caption or label"] += 1
        return None
    if captions and not caption:
        skipped["no caption"] += 1
        return None
    return _Item(f"{rel}#{key}", caption or None, label, "bytes", sample[ext])


def _decode_chunk(items: list[_Item], modality: str, decode: dict):
    """Runs in a worker: (rows that decoded (k, ...), their lengths (k,), a skip reason or None per item, the
    notes of each item)."""
    shape, dtype = row_shape(modality, decode)
    rows, lengths, reasons, notes = [], [], [], []
    for item in items:
        try:
            data = item.payload if item.kind == "bytes" else image_data._read(item.payload)
            row, length, note = decode_one(modality, data, decode)
            rows.append(row)
            lengths.append(length)
            reasons.append(None)
            notes.append(note)
        except Skip as e:
            reasons.append(e.reason)
            notes.append([])
    stacked = np.stack(rows).astype(dtype, copy=False) if rows else np.empty((0, *shape), dtype)
    return stacked, np.array(lengths, dtype=np.int32), reasons, notes


def decode_one(modality: str, data: bytes, s: dict) -> tuple[np.ndarray, int, list[str]]:
    if modality == "audio":
        return decode_audio(data, s["sample_rate"], s["seconds"], s["n_mels"], s["n_fft"], s["hop"],
                            s["min_seconds"])
    if modality == "video":
        frames, notes = decode_video(data, s["size"], s["channels"], s["frames"])
        return frames, s["frames"], notes
    return image_data._decode("bytes", data, s["size"], s["channels"]), 1, []


def _open(out: Path) -> MediaSet:
    meta = json.loads((out / "meta.json").read_text())

    def split(name: str) -> Split:
        return Split(np.load(out / f"{name}.npy", mmap_mode="r"), np.load(out / f"{name}_lengths.npy"),
                     json.loads((out / f"{name}_captions.json").read_text()), np.load(out / f"{name}_labels.npy"))

    return MediaSet(out, meta["modality"], split("train"), split("val"), meta["classes"], meta)
