"""Audio, video and media-text pairs, decoded once into a memory-mapped cache: their sources and decoding settings.
data/cache/rows.py builds the cache, for images alone too (a folder, shards or .npz of images: data/cache/images.py).

Sources under a data path:
  - `.jsonl` pair files: one object per line with the media path under the modality's key (data.image_field,
    default `image`; `audio` or `video`; or `path`), relative to the .jsonl file, and its caption under
    data.caption_field (default `text`), optionally a `label`. A path
    is read only when it names a regular file (not a device, a FIFO or a folder) of at most the modality's
    MAX_BYTES, inside the data folder (the data path, or the folder of a .jsonl data path) after following links,
    unless data.allow_outside=true; other lines are skipped and counted as 'not a regular file', 'file too large'
    or 'outside the data folder';
  - webdataset `.tar` shards: a sample is the members sharing a key, the media member by its extension, the
    caption in `.txt`, a label in `.cls` (int) or `.label` (name);
  - images only: tables, `.parquet` files or a `datasets` save_to_disk folder (a DatasetDict's train split), the
    image and the caption in two columns of a row (data.image_field, data.caption_field), optionally a `label`
    (data/read/table_media.py; an image path in a row is read under the rules of a .jsonl's);
  - media files (a file, or a folder read recursively), labeled by their first-level sub-folder: for the audio
    objectives and for evaluation sets; they carry no caption.
A folder holding any .jsonl, .tar (or, for images, .parquet) is read through those alone (the media files they
point at are not read twice); otherwise its media files are.

Rows: images uint8 (C, S, S) as data/read/image.py decodes them; audio float16 log-mel (n_mels, frames) with the
number of frames that hold real audio, or (audio.input=waveform) float32 samples (1, n) with the real
samples (data/read/audio.py); video uint8 (F, C, S, S), F frames at segment centres
(data/read/video.py). A sample whose media is missing or corrupt is skipped and counted by reason, and so is a
pair without a caption when captions are asked for (alignment); what decoding did to a kept clip (resampled,
mixed to mono, clipped, padded, cropped, repeated frames) is counted as notes. Samples go to train or validation
by a hash of their identity, as images do. The cache names each row's and each skipped sample's source
(data/cache/rows.py), for `selfsup embed`.
"""

from __future__ import annotations

import json
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from selfsup.data.cache.decoding import Skip, build_cache, tar_samples
from selfsup.data.cache.rows import NAMES, Item, build_rows, cache_key, folder_label, relative
from selfsup.data.cache.tokens import cache_root
from selfsup.data.errors import DataError
from selfsup.data.skipped import Skipped, skip
from selfsup.data.read.audio import AUDIO_SUFFIXES, AudioRows
from selfsup.data.read.hf_datasets import dataset_files, is_datasets_folder
from selfsup.data.read.image import IMAGE_SUFFIXES, ImageRows
from selfsup.data.read.jsonl import json_line
from selfsup.data.read.table_media import check_tables, is_table, table_items, table_links
from selfsup.data.read.video import VIDEO_SUFFIXES, VideoRows

FORMAT = 2  # bump when the cache layout or the decoding changes
SUFFIXES = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES, "video": VIDEO_SUFFIXES}
MAX_BYTES = {"image": ImageRows.max_bytes, "audio": AudioRows.max_bytes, "video": VideoRows.max_bytes}
OUTSIDE = "outside the data folder"


@dataclass
class Split:
    rows: np.ndarray  # (N, ...) memory-mapped: uint8 images or frames, float16 log-mel, float32 samples
    lengths: np.ndarray  # (N,) int32: log-mel frames (or samples) holding real audio; the full row otherwise
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
    content: str  # a digest of the source files and the media they name (cache_key), without the settings


def settings(modality: str, cfg) -> dict:
    """The decoding settings of a run's config for one modality (they key the cache)."""
    if modality == "audio":
        a = cfg.audio
        logmel = dict(sample_rate=a.sample_rate, seconds=a.seconds, n_mels=a.n_mels, n_fft=a.n_fft, hop=a.hop,
                      min_seconds=a.min_seconds)
        return logmel if a.input == "logmel" else logmel | {"input": a.input}  # log-mel caches keep their key
    if modality == "video":
        return dict(size=cfg.image.size, channels=cfg.image.channels, frames=cfg.video.cache_frames)
    return dict(size=cfg.image.size, channels=cfg.image.channels)


def row_decoder(modality: str, decode: dict) -> ImageRows | AudioRows | VideoRows:
    """What turns one sample's bytes into a cache row, for `settings(modality, ...)`."""
    if modality == "audio":
        return AudioRows(**decode)
    if modality == "video":
        return VideoRows(**decode)
    return ImageRows(**decode)


def source_files(path: str, modality: str) -> list[Path]:
    """The .jsonl/.tar files (and, for images, .parquet files) behind a data path, or a datasets folder's .arrow
    files (images), or else its media files; sorted, so every run reads them in the same order."""
    media = SUFFIXES[modality]
    pairs = pair_suffixes(modality)
    p = Path(path).expanduser()
    tables = ", .parquet files, a datasets folder" if modality == "image" else ""
    expected = f"a .jsonl of pairs, webdataset .tar shards{tables}, or {modality} files ({' '.join(media)})"
    if p.is_file():
        if p.suffix.lower() not in pairs + media:
            raise DataError(f"data.path '{path}': expected {expected}, got a '{p.suffix or 'no suffix'}' file")
        return [p]
    if modality == "image" and is_datasets_folder(p):
        return dataset_files(p, f"data.path '{path}'")[1]
    if not p.is_dir():
        raise DataError(f"data.path '{path}' does not exist; expected {expected}, or a folder of them")
    files = sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.parts)
    found = [f for f in files if f.suffix.lower() in pairs] or [f for f in files if f.suffix.lower() in media]
    if not found:
        raise DataError(f"data.path '{path}': the folder holds no {', '.join(pairs)} or {modality} files "
                        f"({' '.join(media)})")
    return found


def pair_suffixes(modality: str) -> tuple[str, ...]:
    """The files that hold pairs of this modality (tables: images only)."""
    return (".jsonl", ".tar", ".parquet") if modality == "image" else (".jsonl", ".tar")


def prepare_media(path: str, modality: str, decode: dict, val_fraction: float, cache_dir: str | None = None,
                  workers: int | None = None, log=print, captions: bool = False,
                  allow_outside: bool = False, image_field: str = "image", caption_field: str = "text",
                  names: bool = False) -> MediaSet:
    """Decode every sample under `path` once into `cache_dir/media/<key>` and open it memory-mapped. With
    `captions` (pairs for alignment) a .jsonl line or table row without a caption is skipped and counted; without,
    a .jsonl line is kept (and a table's captions are not read). `allow_outside`: read media a .jsonl or a table
    names outside the data folder (data.allow_outside). `image_field`, `caption_field`: data.image_field and
    data.caption_field. `names`: the rows' and the skipped samples' names are needed (a cache built before they
    were written is built again)."""
    files = source_files(path, modality)
    fields = Fields(image_field if modality == "image" else modality, caption_field)
    check_tables(files, fields.media, caption_field if captions else None)
    root = Path(path).expanduser()
    links = Links(root if root.is_dir() else root.parent, allow_outside, MAX_BYTES[modality])
    keyed = dict(format=FORMAT, modality=modality, decode=dict(decode, captions=captions), val_fraction=val_fraction,
                 allow_outside=allow_outside)
    if fields != Fields(modality, "text"):  # the defaults keep the key a cache had before the fields could change
        keyed.update(media_field=fields.media, caption_field=fields.caption)
    key, content = cache_key(keyed, root, files, lambda f: _linked(f, fields.media, links))
    out = cache_root(cache_dir) / "media" / key
    build_cache(out, modality, len(files), workers,
                lambda tmp, n: _build(path, root, files, tmp, modality, decode, val_fraction, n, log, captions,
                                      links, fields), log, NAMES if names else ())
    return _open(out, content)


class Fields(NamedTuple):
    """Where a pair's media path (or, in a table, its image) and caption are: the key of a .jsonl line, the column
    of a table."""
    media: str  # data.image_field for images; the modality's name (`audio`, `video`) otherwise
    caption: str  # data.caption_field


@dataclass(frozen=True)
class Links:
    """Which media files a pair .jsonl or a table may name (see the module docstring)."""
    folder: Path  # the data folder
    allow_outside: bool
    max_bytes: int

    def target(self, jsonl: Path, member: str) -> Path:
        """The file `member` names, relative to `jsonl` (a pair .jsonl or a table; or absolute); Skip when it may
        not be read. A missing file is returned: decoding counts it as 'unreadable file'."""
        path = jsonl.parent / member
        try:
            if not self.allow_outside and not path.resolve().is_relative_to(self.folder.resolve()):
                raise Skip(OUTSIDE)
            st = path.stat()
        except FileNotFoundError:
            return path
        except (OSError, ValueError, RuntimeError):  # ValueError: a NUL in the path; RuntimeError: a link loop
            raise Skip("unreadable file") from None
        if not stat.S_ISREG(st.st_mode):  # /dev/zero would be hashed, and read, forever
            raise Skip("not a regular file")
        if st.st_size > self.max_bytes:
            raise Skip("file too large")
        return path


def _pair_lines(f: Path) -> Iterator[tuple[int, object]]:
    """(line number, its JSON value or None when unusable) of the non-blank lines of a pair file."""
    for number, raw in enumerate(f.read_bytes().splitlines(), 1):
        if raw.strip():
            yield number, json_line(raw)


def pair_member(record: object, field: str) -> str | None:
    """The media path a pair line names under `field` (or `path`), or None."""
    member = record.get(field, record.get("path")) if isinstance(record, dict) else None
    return member if isinstance(member, str) and member else None


def _linked(f: Path, field: str, links: Links) -> Iterator[tuple[str, Path]]:
    """The media a pair file or a table points at and may read, (as written, path): part of the data too, for the
    cache key."""
    if is_table(f):
        yield from table_links(f, field, links.target)
        return
    if f.suffix.lower() != ".jsonl":
        return
    try:
        lines = list(_pair_lines(f))
    except OSError:  # counted when the items are read
        return
    for _, record in lines:
        member = pair_member(record, field)
        if member is not None:
            try:
                yield member, links.target(f, member)
            except Skip:  # counted when the items are read
                continue


def _build(path: str, root: Path, files: list[Path], out: Path, modality: str, decode: dict, val_fraction: float,
           workers: int, log, captions: bool, links: Links, fields: Fields) -> None:
    skipped = Skipped()
    built = build_rows(out, _items(root, files, modality, skipped, captions, links, fields),
                       row_decoder(modality, decode), val_fraction, workers, skipped)
    n = built.rows
    if n["train"] == 0:
        outside = " (data.allow_outside=true reads media outside the data folder)" if skipped[OUTSIDE] else ""
        raise DataError(f"data.path '{path}': no {modality} sample decoded into the training split ({n['val']} in "
                        f"validation, {sum(skipped.values())} skipped: {built.why}){outside}; expected readable "
                        f"{modality} files")
    mean, std = built.stats.result()
    meta = dict(format=FORMAT, path=path, modality=modality, files=len(files), decode=decode,
                val_fraction=val_fraction, samples=n, skipped=dict(sorted(skipped.items())),
                notes=dict(sorted(built.notes.items())), classes=built.classes, mean=mean, std=std)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    noted = ", ".join(f"{note}: {count}" for note, count in sorted(built.notes.items())) or "none"
    log(f"decoded {n['train']} train + {n['val']} val {modality} samples in {built.seconds:.1f}s "
        f"({(n['train'] + n['val']) / built.seconds:.0f}/s); skipped {built.why}; kept with notes: {noted}")


def _items(root: Path, files: list[Path], modality: str, skipped: Counter, captions: bool, links: Links,
           fields: Fields) -> Iterator[Item]:
    for f in files:
        rel = relative(root, f)
        suffix = f.suffix.lower()
        if suffix == ".jsonl":
            yield from _jsonl_items(f, rel, skipped, captions, links, fields)
        elif is_table(f):
            yield from table_items(f, rel, fields.media, fields.caption if captions else None, skipped,
                                   links.target, links.max_bytes)
        elif suffix == ".tar":
            yield from _tar_items(f, rel, modality, skipped, captions)
        else:
            yield Item(rel, None, None, folder_label(rel), f)


def _jsonl_items(f: Path, rel: str, skipped: Counter, captions: bool, links: Links,
                 fields: Fields) -> Iterator[Item]:
    try:
        lines = list(_pair_lines(f))
    except OSError:
        skip(skipped, "unreadable file", rel)
        return
    for number, record in lines:
        if not isinstance(record, dict):  # None: not JSON, nested too deeply, or a lone surrogate
            skip(skipped, "bad json line", rel, number)
            continue
        member, caption = pair_member(record, fields.media), record.get(fields.caption)
        if member is None:
            skip(skipped, f"no '{fields.media}' in pair", rel, number)
            continue
        caption = caption.strip() if isinstance(caption, str) and caption.strip() else None
        if captions and caption is None:
            skip(skipped, "no caption", rel, number)
            continue
        try:
            target = links.target(f, member)
        except Skip as e:
            skip(skipped, e.reason, rel, number)
            continue
        label = record.get("label")
        label = label if isinstance(label, (int, str)) and not isinstance(label, bool) else None
        yield Item(rel, number, caption, label, target)


def _tar_items(f: Path, rel: str, modality: str, skipped: Counter, captions: bool) -> Iterator[Item]:
    for key, sample in tar_samples(f, rel, tar_members(modality), skipped, MAX_BYTES[modality]):
        item = tar_item(rel, key, sample, modality, skipped, captions)
        if item is not None:
            yield item


def tar_members(modality: str) -> tuple[str, ...]:
    """The tar member extensions a sample of this modality is read from (others are never read)."""
    return tuple(suffix[1:] for suffix in SUFFIXES[modality]) + ("txt", "cls", "label")


def tar_item(rel: str, key: str, sample: dict[str, bytes], modality: str, skipped: Counter,
             captions: bool) -> Item | None:
    """One webdataset sample as an item, or None when it is skipped (counted in `skipped`)."""
    media = SUFFIXES[modality]
    ext = next((e for e in sample if f".{e}" in media), None)
    if ext is None:
        skip(skipped, f"no {modality} in tar sample", rel, key)
        return None
    try:
        caption = sample["txt"].decode().strip() if "txt" in sample else None
        label = int(sample["cls"].decode()) if "cls" in sample else None
        label = sample["label"].decode().strip() if "label" in sample else label
    except ValueError:  # UnicodeDecodeError included
        skip(skipped, "bad caption or label", rel, key)
        return None
    if captions and not caption:
        skip(skipped, "no caption", rel, key)
        return None
    return Item(rel, key, caption or None, label, sample[ext])


def _open(out: Path, content: str) -> MediaSet:
    meta = json.loads((out / "meta.json").read_text())

    def split(name: str) -> Split:
        return Split(np.load(out / f"{name}.npy", mmap_mode="r"), np.load(out / f"{name}_lengths.npy"),
                     json.loads((out / f"{name}_captions.json").read_text()), np.load(out / f"{name}_labels.npy"))

    return MediaSet(out, meta["modality"], split("train"), split("val"), meta["classes"], meta, content)
