"""Images under a data path, decoded once into a memory-mapped uint8 cache: the image modality of the media cache
(data/cache/rows.py builds it; data/read/image.py decodes each image to uint8 (C, size, size)).

Sources: image files (one file, or a folder read recursively), webdataset `.tar` shards, `.npz` arrays, and
tables: `.parquet` files and a `datasets` save_to_disk folder (a DatasetDict's train split), an image per row in
the column data.image_field names (data/read/table_media.py: bytes, or a path under a pairs .jsonl's rules); a
folder holding .parquet files is read through them alone (the images their rows name are not read twice).
Decoding runs once, in worker processes; the cache key covers every source file's bytes and path, the files a
table's rows name, and the settings (with data.image_field when a table is read), so a second run starts at once
and a changed file is never served stale. Images go to train or validation by a hash of their identity (relative
path, plus the tar key, npz index or table row), stable under reordering. An image that cannot be decoded is
skipped and counted by reason, never a crash; the cache names each row's and each skipped image's source
(data/cache/rows.py), for `selfsup embed`.

Labels are for evaluation only. Loose image files take the name of their first-level sub-folder under the root
(files directly in the root, or a single-file path, have none). Tar samples take an int from a `.cls` member or a
class name from `.label` / `.txt`; npz files an optional `labels` (N,) int array; tables an optional `label`
column (integers or names). They become class indices as data/cache/rows.py says; negative labels are none (-1).

An npz `images` array is (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1/3/4 (channels last wins when both
ends could be channels); its values become 8 bits by its dtype (data/read/image.py's array_peak).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfsup.data.cache.decoding import build_cache, tar_samples
from selfsup.data.cache.media import OUTSIDE, Links
from selfsup.data.cache.rows import NAMES, Item, build_rows, cache_key, folder_label, relative
from selfsup.data.cache.tokens import cache_root
from selfsup.data.errors import DataError
from selfsup.data.skipped import Skipped, skip
from selfsup.data.read.hf_datasets import dataset_files, is_datasets_folder
from selfsup.data.read.image import IMAGE_SUFFIXES, ArrayImage, ImageRows, array_peak
from selfsup.data.read.table_media import check_tables, is_table, table_items, table_links

FORMAT = 2  # bump when the cache layout or the decoding changes
SOURCE_SUFFIXES = IMAGE_SUFFIXES + (".tar", ".npz", ".parquet")
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
    content: str  # a digest of the source files alone (cache_key), without the settings they are decoded with

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the training images, in [0, 1] units."""
        return tuple(self.meta["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation of the training images, in [0, 1] units."""
        return tuple(self.meta["std"])


def image_files(path: str) -> list[Path]:
    """The image files, .tar shards and .npz files behind a data path, or its .parquet files, or a datasets folder's
    .arrow files, sorted so every run reads them in the same order."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() not in SOURCE_SUFFIXES:
            raise DataError(f"data.path '{path}': expected an image ({' '.join(IMAGE_SUFFIXES)}), a .tar shard, "
                            f"an .npz, a .parquet or a folder of them, got a '{p.suffix or 'no suffix'}' file")
        return [p]
    if is_datasets_folder(p):
        return dataset_files(p, f"data.path '{path}'")[1]
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.suffix.lower() in SOURCE_SUFFIXES and f.is_file()),
                       key=lambda f: f.parts)  # by parts, not by string: the same order on every Python version
        if not files:
            raise DataError(f"data.path '{path}': the folder holds no images ({' '.join(IMAGE_SUFFIXES)}), "
                            ".tar shards, .npz or .parquet files")
        return [f for f in files if is_table(f)] or files
    raise DataError(f"data.path '{path}' does not exist; expected an image file, a folder of images, "
                    "webdataset .tar shards, an .npz file, .parquet files or a datasets folder")


def prepare_images(path: str, size: int, channels: int, val_fraction: float, cache_dir: str | None = None,
                   workers: int | None = None, log=print, image_field: str = "image",
                   allow_outside: bool = False, names: bool = False) -> ImageSet:
    """Decode every image under `path` once into `cache_dir/images/<key>` and open it memory-mapped. A table's
    images are in its column `image_field` (data.image_field); `allow_outside` as data.allow_outside. `names`: the
    rows' and the skipped images' names are needed (a cache built before they were written is built again)."""
    if channels not in (1, 3):
        raise DataError(f"channels={channels}: expected 1 (grayscale) or 3 (RGB)")
    if size < 1:
        raise DataError(f"size={size}: expected a positive image side in pixels")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction}: expected a share in [0, 1)")
    files = image_files(path)
    check_tables(files, image_field, None)
    root = Path(path).expanduser()
    links = Links(root if root.is_dir() else root.parent, allow_outside, ImageRows.max_bytes)
    cache = cache_root(cache_dir)
    keyed = dict(format=FORMAT, size=size, channels=channels, val_fraction=val_fraction)
    if any(is_table(f) for f in files):  # only a table reads them: a folder of images keeps its key
        keyed.update(image_field=image_field, allow_outside=allow_outside)
    key, content = cache_key(keyed, root, files, lambda f: table_links(f, image_field, links.target) if is_table(f)
                             else ())
    out = cache / "images" / key
    build_cache(out, "image", len(files), workers,
                lambda tmp, n: _build(path, root, files, tmp, size, channels, val_fraction, n, log, image_field,
                                      links), log, NAMES if names else ())
    return _open(out, content)


def _build(path: str, root: Path, files: list[Path], out: Path, size: int, channels: int, val_fraction: float,
           workers: int, log, image_field: str, links: Links) -> None:
    skipped = Skipped()
    built = build_rows(out, _items(root, files, skipped, image_field, links), ImageRows(size, channels),
                       val_fraction, workers, skipped)
    n = built.rows
    if n["train"] == 0:
        outside = " (data.allow_outside=true reads images outside the data folder)" if skipped[OUTSIDE] else ""
        raise DataError(f"data.path '{path}': no image decoded into the training split ({n['val']} in validation, "
                        f"{sum(skipped.values())} skipped: {built.why}){outside}; expected readable images")
    mean, std = built.stats.result()
    meta = dict(format=FORMAT, path=path, files=len(files), size=size, channels=channels, val_fraction=val_fraction,
                images=n, skipped=dict(sorted(skipped.items())), classes=built.classes, mean=mean, std=std)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"decoded {n['train']} train + {n['val']} val images in {built.seconds:.1f}s "
        f"({(n['train'] + n['val']) / built.seconds:.0f}/s); skipped {built.why}")


def _items(root: Path, files: list[Path], skipped: Counter, image_field: str, links: Links) -> Iterator[Item]:
    for f in files:
        rel = relative(root, f)
        suffix = f.suffix.lower()
        if is_table(f):
            yield from table_items(f, rel, image_field, None, skipped, links.target, ImageRows.max_bytes)
        elif suffix == ".tar":
            yield from _tar_items(f, rel, skipped)
        elif suffix == ".npz":
            yield from _npz_items(f, rel, skipped)
        else:
            yield Item(rel, None, None, folder_label(rel), f)


def _tar_items(f: Path, rel: str, skipped: Counter) -> Iterator[Item]:
    wanted = tuple(suffix[1:] for suffix in IMAGE_SUFFIXES) + LABEL_EXTS  # other members (json, ...) are not read
    for key, sample in tar_samples(f, rel, wanted, skipped, ImageRows.max_bytes):
        yield from _tar_sample(rel, key, sample, skipped)


def _tar_sample(rel: str, key: str, sample: dict[str, bytes], skipped: Counter) -> Iterator[Item]:
    image = next((ext for ext in sample if f".{ext}" in IMAGE_SUFFIXES), None)  # the first, if a sample has several
    if image is None:
        skip(skipped, "no image in tar sample", rel, key)
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
    yield Item(rel, key, None, label, sample[image])


def _npz_items(f: Path, rel: str, skipped: Counter) -> Iterator[Item]:
    try:
        with np.load(f, allow_pickle=False) as z:
            if "images" not in z.files:
                skip(skipped, "no images array in npz", rel)
                return
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
    except Exception:  # zipfile, zlib and numpy raise many kinds of exception on a damaged archive
        skip(skipped, "corrupt npz", rel)
        return
    hwc = _hwc(images)  # (N, H, W, C)
    if hwc is None:
        skip(skipped, "bad array shape", rel)  # named once, as the whole file; counted once per image
        skipped["bad array shape"] += len(images) - 1 if images.ndim else 0
        return
    if labels is not None and (labels.shape != (len(hwc),) or labels.dtype.kind not in "iu"):
        skipped["bad labels array"] += 1  # the images are kept without labels
        labels = None
    peak = array_peak(images)
    for i in range(len(hwc)):
        label = int(labels[i]) if labels is not None and labels[i] >= 0 else None
        yield Item(rel, i, None, label, ArrayImage(hwc[i], peak))


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


def _open(out: Path, content: str) -> ImageSet:
    meta = json.loads((out / "meta.json").read_text())
    return ImageSet(out, np.load(out / "train.npy", mmap_mode="r"), np.load(out / "val.npy", mmap_mode="r"),
                    np.load(out / "train_labels.npy"), np.load(out / "val_labels.npy"), meta["classes"], meta,
                    content)
