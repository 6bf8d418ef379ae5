"""Decoding images once into a memory-mapped uint8 cache, and a seeded, resumable loader over it.

Sources: image files (one file, or a folder read recursively), webdataset `.tar` shards and `.npz` arrays. Every
image is decoded with Pillow (EXIF orientation applied, palette expanded, alpha composited on white, 16-bit
scaled to 8), converted to L or RGB, resized so its shorter side is `size` (bicubic, which widens its kernel
when shrinking, so it is antialiased) and center-cropped, giving uint8 (C, size, size). Decoding runs once, in
worker processes; the cache key covers every source file's bytes and path and the settings, so a second run
starts at once and a changed file is never served stale. Images go to train or validation by a hash of their
identity (relative path, plus the tar key or npz index), stable under reordering. An image that cannot be
decoded is skipped and counted by reason, never a crash.

Labels are for evaluation only. Loose image files take the name of their first-level sub-folder under the root
(files directly in the root, or a single-file path, have none). Tar samples take an int from a `.cls` member or a
class name from `.label` / `.txt`; npz files an optional `labels` (N,) int array. Names become indices into the
sorted class names; integer labels keep their value (classes '0'..'max'), unless names are present too, when
they are read as names ('3'). Negative or missing labels are -1.

An npz `images` array is (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1/3/4 (channels last wins when both
ends could be channels). Values become 8 bits by dtype: uint8 as is, uint16 divided by 257, floats taken as
[0, 1] when their max is at most 1 and divided by the array's max otherwise, other ints (and bool) divided by
the array's max; then clipped to [0, 255] (NaN → 0).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from selfsup.data.decoding import NpyWriter, Skip, build_cache, decoded, digest, tar_samples
from selfsup.data.shards import default_cache, is_val
from selfsup.data.text import DataError

FORMAT = 1  # bump when the cache layout or the decoding changes
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SOURCE_SUFFIXES = IMAGE_SUFFIXES + (".tar", ".npz")
LABEL_EXTS = ("cls", "label", "txt")  # tar members that carry a sample's label


@dataclass
class ImageSet:
    dir: Path
    train: np.ndarray  # (N, C, S, S) uint8, memory-mapped
    val: np.ndarray  # (M, C, S, S) uint8, memory-mapped
    train_labels: np.ndarray  # (N,) int64 indices into classes, -1 = none
    val_labels: np.ndarray  # (M,) int64
    classes: list[str]
    meta: dict  # files, images per split, skipped by reason, classes, mean, std, size, channels

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the training images, in [0, 1] units."""
        return tuple(self.meta["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation of the training images, in [0, 1] units."""
        return tuple(self.meta["std"])


class _Item(NamedTuple):
    ident: str  # what the split hashes: the relative path, plus '#key' in a tar or '#index' in an npz
    label: int | str | None
    kind: str  # how a worker gets the pixels: 'file' (a path to read), 'bytes' (a tar member), 'array' (npz entry)
    payload: object


def image_files(path: str) -> list[Path]:
    """The image files, .tar shards and .npz files behind a data path, sorted so every run reads them in the
    same order."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() not in SOURCE_SUFFIXES:
            raise DataError(f"data.path '{path}': expected an image ({' '.join(IMAGE_SUFFIXES)}), a .tar shard, "
                            f"an .npz or a folder of them, got a '{p.suffix or 'no suffix'}' file")
        return [p]
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.suffix.lower() in SOURCE_SUFFIXES and f.is_file()),
                       key=lambda f: f.parts)  # by parts, not by string: the same order on every Python version
        if not files:
            raise DataError(f"data.path '{path}': the folder holds no images ({' '.join(IMAGE_SUFFIXES)}), "
                            ".tar shards or .npz files")
        return files
    raise DataError(f"data.path '{path}' does not exist; expected an image file, a folder of images, "
                    "webdataset .tar shards or an .npz file")


def prepare_images(path: str, size: int, channels: int, val_fraction: float, cache_dir: str | None = None,
                   workers: int | None = None, log=print) -> ImageSet:
    """Decode every image under `path` once into `cache_dir/images/<key>` and open it memory-mapped."""
    if channels not in (1, 3):
        raise DataError(f"channels={channels}: expected 1 (grayscale) or 3 (RGB)")
    if size < 1:
        raise DataError(f"size={size}: expected a positive image side in pixels")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction}: expected a share in [0, 1)")
    files = image_files(path)
    root = Path(path).expanduser()
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache()
    key = _cache_key(root, files, size, channels, val_fraction)
    out = cache / "images" / key
    build_cache(out, "image", len(files), workers,
                lambda tmp, n: _build(path, root, files, tmp, size, channels, val_fraction, n, log), log)
    return _open(out)


def _cache_key(root: Path, files: list[Path], size: int, channels: int, val_fraction: float) -> str:
    h = hashlib.sha256(json.dumps(dict(format=FORMAT, size=size, channels=channels, val_fraction=val_fraction),
                                  sort_keys=True).encode())
    for f in files:
        h.update(_relative(root, f).encode() + b"\0" + digest(f))
    return h.hexdigest()[:24]


def _relative(root: Path, f: Path) -> str:
    return f.name if root.is_file() else f.relative_to(root).as_posix()


def _build(path: str, root: Path, files: list[Path], out: Path, size: int, channels: int, val_fraction: float,
           workers: int, log) -> None:
    start = time.perf_counter()
    skipped: Counter = Counter()
    writers = {split: NpyWriter(out / f"{split}.npy", (channels, size, size), np.uint8) for split in ("train", "val")}
    labels: dict[str, list] = {"train": [], "val": []}
    hist = np.zeros((channels, 256), np.int64)  # training pixel values per channel, for an exact mean and std
    try:
        for chunk, (images, reasons) in decoded(_items(root, files, skipped), _decode_chunk, (size, channels), workers):
            skipped.update(r for r in reasons if r is not None)
            kept = [item for item, r in zip(chunk, reasons) if r is None]
            val = np.array([is_val(item.ident, val_fraction) for item in kept], dtype=bool)  # (k,)
            for split, rows in (("train", ~val), ("val", val)):
                writers[split].write(images[rows])
                labels[split] += [item.label for item, r in zip(kept, rows) if r]
            for c in range(channels):
                hist[c] += np.bincount(images[~val, c].ravel(), minlength=256)
    finally:
        for w in writers.values():
            w.close()
    n = {split: w.rows for split, w in writers.items()}
    why = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items())) or "none"
    if n["train"] == 0:
        raise DataError(f"data.path '{path}': no image decoded into the training split ({n['val']} in validation, "
                        f"{sum(skipped.values())} skipped: {why}); expected readable images")
    classes, ids = _classes(labels["train"] + labels["val"])
    np.save(out / "train_labels.npy", ids[:n["train"]])
    np.save(out / "val_labels.npy", ids[n["train"]:])
    mean, std = _mean_std(hist)
    meta = dict(format=FORMAT, path=path, files=len(files), size=size, channels=channels, val_fraction=val_fraction,
                images=n, skipped=dict(sorted(skipped.items())), classes=classes, mean=mean, std=std)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    seconds = time.perf_counter() - start
    log(f"decoded {n['train']} train + {n['val']} val images in {seconds:.1f}s "
        f"({(n['train'] + n['val']) / seconds:.0f}/s); skipped {why}")


def _items(root: Path, files: list[Path], skipped: Counter) -> Iterator[_Item]:
    for f in files:
        rel = _relative(root, f)
        suffix = f.suffix.lower()
        if suffix == ".tar":
            yield from _tar_items(f, rel, skipped)
        elif suffix == ".npz":
            yield from _npz_items(f, rel, skipped)
        else:
            folder, sep, _ = rel.partition("/")
            yield _Item(rel, folder if sep else None, "file", f)


def _tar_items(f: Path, rel: str, skipped: Counter) -> Iterator[_Item]:
    wanted = tuple(suffix[1:] for suffix in IMAGE_SUFFIXES) + LABEL_EXTS  # other members (json, ...) are not read
    for key, sample in tar_samples(f, wanted, skipped):
        yield from _tar_sample(rel, key, sample, skipped)


def _tar_sample(rel: str, key: str, sample: dict[str, bytes], skipped: Counter) -> Iterator[_Item]:
    image = next((ext for ext in sample if f".{ext}" in IMAGE_SUFFIXES), None)  # the first, if a sample has several
    if image is None:
        skipped["no image in tar sample"] += 1
        return
    label = None
    try:
        if "cls" in sample:
            label = int(sample["cls"].decode().strip())
            label = label if label >= 0 else None
        elif "label" in sample or "txt" in sample:
            label = sample.get("label", sample.get("txt")).decode().strip() or None
    except ValueError:  # UnicodeDecodeError included; the image is kept without a label
        skipped["bad label"] += 1
    yield _Item(f"{rel}#{key}", label, "bytes", sample[image])


def _npz_items(f: Path, rel: str, skipped: Counter) -> Iterator[_Item]:
    try:
        with np.load(f, allow_pickle=False) as z:
            if "images" not in z.files:
                skipped["no images array in npz"] += 1
                return
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
    except Exception:  # zipfile, zlib and numpy raise many kinds of exception on a damaged archive
        skipped["corrupt npz"] += 1
        return
    hwc = _hwc(images)  # (N, H, W, C)
    if hwc is None:
        skipped["bad array shape"] += len(images) if images.ndim else 1
        return
    if labels is not None and (labels.shape != (len(hwc),) or labels.dtype.kind not in "iu"):
        skipped["bad labels array"] += 1  # the images are kept without labels
        labels = None
    peak = _peak(images)
    for i in range(len(hwc)):
        label = int(labels[i]) if labels is not None and labels[i] >= 0 else None
        yield _Item(f"{rel}#{i}", label, "array", (hwc[i], peak))


def _hwc(a: np.ndarray) -> np.ndarray | None:
    """An npz `images` array as (N, H, W, C), or None when its shape is none of the accepted ones."""
    if a.ndim == 3:
        a = a[..., None]
    elif a.ndim != 4:
        return None
    elif a.shape[-1] not in (1, 3, 4):
        if a.shape[1] not in (1, 3, 4):
            return None
        a = a.transpose(0, 2, 3, 1)
    return a if a.shape[1] and a.shape[2] else None


def _peak(a: np.ndarray) -> float:
    """The value that maps to 255 (see the module docstring)."""
    if a.dtype == np.uint8:
        return 255.0
    if a.dtype == np.uint16:
        return 65535.0
    top = float(np.nanmax(a)) if a.size else 0.0
    if a.dtype.kind == "f" and top <= 1:
        return 1.0
    return top if top > 0 else 1.0


def _to_uint8(a: np.ndarray, peak: float) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return np.clip(np.nan_to_num(a.astype(np.float32) * (255 / peak)).round(), 0, 255).astype(np.uint8)


def _decode_chunk(items: list[_Item], size: int, channels: int) -> tuple[np.ndarray, list[str | None]]:
    """Runs in a worker: the images that decoded, stacked, and for each item None or why it was skipped."""
    images, reasons = [], []
    for item in items:
        try:
            images.append(_decode(item.kind, item.payload, size, channels))
            reasons.append(None)
        except Skip as e:
            reasons.append(e.reason)
    return (np.stack(images) if images else np.empty((0, channels, size, size), np.uint8)), reasons


def _decode(kind: str, payload, size: int, channels: int) -> np.ndarray:
    """One image as uint8 (C, size, size)."""
    if kind == "array":
        a = _to_uint8(*payload)  # (H, W, C)
        img = Image.fromarray(np.ascontiguousarray(a[..., 0] if a.shape[-1] == 1 else a))
    else:
        img = _open_image(payload if kind == "bytes" else _read(payload), size)
    try:
        img = _to_mode(img, channels)
    except Exception:  # a mode Pillow cannot convert is a property of the file, not a bug here
        raise Skip("unsupported image mode") from None
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)  # the center square, in source pixels
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)  # = shorter side to size, then center crop
    a = np.asarray(img)  # (S, S) or (S, S, 3)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _read(f: Path) -> bytes:
    try:
        return f.read_bytes()
    except OSError:
        raise Skip("unreadable file") from None


def _open_image(data: bytes, size: int) -> Image.Image:
    if not data:
        raise Skip("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if min(w, h) > size:  # JPEG: decode at 1/2, 1/4 or 1/8 scale straight away, never below `size`
            img.draft(None, (-(-w * size // min(w, h)), -(-h * size // min(w, h))))
        img.load()  # Pillow decodes lazily: truncated data shows only here
        return ImageOps.exif_transpose(img)
    except Image.DecompressionBombError:
        raise Skip("image too large") from None
    except Exception as e:  # Pillow's plugins raise many kinds of exception on malformed data
        raise Skip("truncated image" if "truncated" in str(e) else "corrupt image") from None


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode as L (channels 1) or RGB (channels 3)."""
    if img.mode.startswith("I") or img.mode == "F":  # 16-bit (or 32-bit int, or float) samples
        a = np.asarray(img)
        img = Image.fromarray(_to_uint8(a, 65535.0 if img.mode.startswith("I") else _peak(a)))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    if img.mode not in ("L", "RGB"):  # 1-bit, CMYK, YCbCr, the composited RGBA, ...
        img = img.convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _classes(labels: list[int | str | None]) -> tuple[list[str], np.ndarray]:
    """Class names and each image's index into them, -1 for none (see the module docstring)."""
    if any(isinstance(label, str) for label in labels):
        labels = [str(label) if isinstance(label, int) else label for label in labels]
        classes = sorted({label for label in labels if label is not None})
        index = {name: i for i, name in enumerate(classes)}
        return classes, np.array([index.get(label, -1) for label in labels], dtype=np.int64)
    top = max((label for label in labels if label is not None), default=-1)
    return [str(i) for i in range(top + 1)], np.array([-1 if label is None else label for label in labels],
                                                      dtype=np.int64)


def _mean_std(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units from (C, 256) value counts: exact, in two passes over 256 bins."""
    values = np.arange(256) / 255
    n = hist.sum(1)  # (C,)
    mean = hist @ values / n
    std = np.sqrt((hist * (values[None] - mean[:, None]) ** 2).sum(1) / n)
    return mean.tolist(), std.tolist()


def _open(out: Path) -> ImageSet:
    meta = json.loads((out / "meta.json").read_text())
    return ImageSet(out, np.load(out / "train.npy", mmap_mode="r"), np.load(out / "val.npy", mmap_mode="r"),
                    np.load(out / "train_labels.npy"), np.load(out / "val_labels.npy"), meta["classes"], meta)
