"""Labeled data for evaluation and for the trainer's online probes, read in a run's modality.

Images: a folder whose first-level sub-folders name the classes (or webdataset shards with `.cls`, an .npz with
`labels`, or `.parquet` files or one split's `datasets` folder with an image column (data.image_field) and a
`label` column), decoded as for training; unlabeled images are skipped as 'no_label', and test images of a class
the training set lacks as 'unknown_label' (classes are matched by name).

Audio and video: a folder with one sub-folder per class, a .jsonl of pairs with a `label`, or webdataset shards
with `.cls`/`.label`, decoded as for training (data/cache/media.py).

Text: a `.jsonl` file (or a folder of them) with a `text` and a `label` (a string or an integer) per
line, or `.parquet` files or a `datasets` folder saved with save_to_disk (one split's) with `text` and `label`
columns (data/read/parquet.py, data/read/hf_datasets.py). Bad lines are skipped and
counted by reason, never a crash: invalid UTF-8 or JSON (with data/read/jsonl.py's
too deep nesting and lone surrogates), no `text` string, an empty or too long text, no usable `label`, and, in a
test set, a label the training set does not have.
Class ids follow the sorted training labels (numerically when every label is an integer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selfsup.data.errors import DataError
from selfsup.data.read.jsonl import json_line
from selfsup.data.read.hf_datasets import SPLITS, arrow_rows, dataset_files, is_datasets_folder
from selfsup.data.read.parquet import parquet_rows
from selfsup.data.read.text import read_lines


LABELED_SUFFIXES = (".jsonl", ".parquet")


class Clips:
    """Cached audio or video rows (N, ...) and their real lengths (N,): the items of a labeled audio or video set."""

    def __init__(self, rows: np.ndarray, lengths: np.ndarray):
        self.rows, self.lengths = rows, lengths

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> Clips:
        return Clips(self.rows[index], self.lengths[index])


@dataclass
class LabeledSet:
    path: str
    items: list[str] | np.ndarray | Clips  # texts, images (N, C, H, W) uint8, or audio/video clips
    labels: Tensor  # (N,) long class ids
    classes: list[str]  # class id -> label as written
    skipped: dict = field(default_factory=dict)

    def counts(self) -> dict:
        per_class = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(path=self.path, examples=len(self.items), skipped=self.skipped,
                    per_class=dict(zip(self.classes, per_class)))


def _label(record: dict) -> str | None:
    label = record.get("label")
    if isinstance(label, bool):  # JSON true/false: almost always a mistake, not a class
        return None
    if isinstance(label, int):
        return str(label)
    if isinstance(label, str) and label.strip():
        return label.strip()
    return None


def _sort_key(label: str):
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)


def labeled_files(path: str | Path) -> list[Path]:
    p = Path(path).expanduser()
    if is_datasets_folder(p):  # a saved Dataset, or one split's folder of a saved DatasetDict
        one_split(path)
        return dataset_files(p, f"labeled data '{path}'")[1]
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in LABELED_SUFFIXES) \
        if p.is_dir() else []
    if not files or any(f.suffix not in LABELED_SUFFIXES for f in files):
        what = ("does not exist" if not p.exists() else "is a folder without .jsonl or .parquet files" if p.is_dir()
                else f"is a '{p.suffix or 'no suffix'}' file")
        raise DataError(f"labeled data '{path}' {what}; expected a .jsonl file (or a folder of them) with a "
                        "'text' and a 'label' per line, or .parquet with 'text' and 'label' columns")
    return files


def read_labeled(path: str, classes: list[str] | None = None, max_chars: int = 200_000) -> LabeledSet:
    """Read a labeled set. Without `classes` (a training set) the sorted labels found become the classes and at
    least two are required; with them (a test set) other labels are skipped as 'unknown_label'."""
    files = labeled_files(path)
    skipped: Counter = Counter()
    texts, labels = [], []
    for f in files:
        for record in _records(f, path, skipped):
            if record is None:
                skipped["bad_json"] += 1
                continue
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                skipped["no_text_field"] += 1
                continue
            text = record["text"].strip()
            if not text:
                skipped["empty"] += 1
                continue
            if len(text) > max_chars:
                skipped["too_long"] += 1
                continue
            label = _label(record)
            if label is None:
                skipped["no_label"] += 1
                continue
            if classes is not None and label not in classes:
                skipped["unknown_label"] += 1
                continue
            texts.append(text)
            labels.append(label)
    skipped = dict(sorted(skipped.items()))
    if not texts:
        raise DataError(f"labeled data '{path}' holds no usable examples with a 'text' and a 'label' "
                        f"(skipped: {skipped or 'none'})")
    classes = _check_classes(path, classes, labels)
    ids = {c: i for i, c in enumerate(classes)}
    return LabeledSet(str(path), texts, torch.tensor([ids[lab] for lab in labels], dtype=torch.long),
                      list(classes), skipped)


def _records(f: Path, path, skipped: Counter) -> Iterator[dict | None]:
    """A file's records: .parquet or datasets .arrow rows of `text` and `label`, or .jsonl lines parsed (None: bad
    JSON)."""
    if f.suffix in (".parquet", ".arrow"):
        rows = parquet_rows if f.suffix == ".parquet" else arrow_rows
        yield from rows(f, ["text", "label"], skipped, f"labeled data '{path}'", "a 'text' and a 'label' column")
    else:
        yield from (json_line(line) for _, line in read_lines(f, skipped))


def _check_classes(path, classes: list[str] | None, labels: list[str]) -> list[str]:
    if classes is None:
        classes = sorted(set(labels), key=_sort_key)
        if len(classes) < 2:
            raise DataError(f"labeled data '{path}' has {len(classes)} class ({classes[0]!r}); "
                            "classification needs at least 2")
    return classes


def one_split(path: str | Path) -> None:
    """A datasets DatasetDict is refused as a labeled set: which split is the train or test set is the user's to
    say."""
    p = Path(path).expanduser()
    if is_datasets_folder(p) and (p / SPLITS).is_file():
        splits = sorted(d.name for d in p.iterdir() if is_datasets_folder(d))
        raise DataError(f"labeled data '{path}' is a datasets DatasetDict (splits {', '.join(splits)}); "
                        f"expected one split's folder, e.g. '{p / (splits or ['train'])[0]}'")


def read_labeled_images(path: str, size: int, channels: int, classes: list[str] | None = None,
                        cache_dir: str | None = None, log=None, image_field: str = "image",
                        allow_outside: bool = False) -> LabeledSet:
    """Decode a labeled image set (cached like training data). Without `classes` (a training set) its class
    names become the classes; with them (a test set) images are mapped to them by name. `image_field` and
    `allow_outside` as data.image_field and data.allow_outside."""
    from selfsup.data.cache.images import prepare_images

    one_split(path)
    data = prepare_images(path, size, channels, val_fraction=0.0, cache_dir=cache_dir, log=log or (lambda s: None),
                          image_field=image_field, allow_outside=allow_outside)
    return _labeled(path, data.train, data.train_labels, data.classes, data.meta["skipped"], classes,
                    "images", "cat/1.png")


def read_labeled_media(path: str, modality: str, decode: dict, classes: list[str] | None = None,
                       cache_dir: str | None = None, log=None, allow_outside: bool = False) -> LabeledSet:
    """Decode a labeled audio or video set (cached like training data), classes as read_labeled_images;
    `allow_outside` as data.allow_outside."""
    from selfsup.data.cache.media import prepare_media

    data = prepare_media(path, modality, decode, 0.0, cache_dir, log=log or (lambda s: None),
                         allow_outside=allow_outside)
    clips = Clips(data.train.rows, data.train.lengths)
    example = "dog/1.wav" if modality == "audio" else "running/1.mp4"
    return _labeled(path, clips, data.train.labels, data.classes, data.meta["skipped"], classes, modality, example)


def _labeled(path, items, label_ids: np.ndarray, names_of: list[str], skipped: dict, classes: list[str] | None,
             what: str, example: str) -> LabeledSet:
    skipped = Counter(skipped)
    names = [names_of[i] if i >= 0 else None for i in label_ids.tolist()]
    skipped["no_label"] += sum(n is None for n in names)
    found = [n for n in names if n is not None]
    if not found:
        raise DataError(f"labeled {what} '{path}' carry no labels; expected class sub-folders (e.g. "
                        f"{path}/{example}), `.cls` members in .tar shards, a `label` per .jsonl line, a "
                        "`labels` array in an .npz or a `label` column in .parquet or datasets rows")
    classes = _check_classes(path, classes, found)
    ids = {c: i for i, c in enumerate(classes)}
    skipped["unknown_label"] += sum(n is not None and n not in ids for n in names)
    keep = [i for i, n in enumerate(names) if n in ids]
    labels = torch.tensor([ids[names[i]] for i in keep], dtype=torch.long)
    return LabeledSet(str(path), items[keep], labels, list(classes), {k: v for k, v in sorted(skipped.items()) if v})


def read_for_run(cfg, path: str, classes: list[str] | None = None) -> LabeledSet:
    """A labeled set in the modality of the run `cfg` (a RunConfig) describes, decoded as its training data."""
    from selfsup.data.cache.media import settings

    if cfg.modality == "image":
        return read_labeled_images(path, cfg.image.size, cfg.image.channels, classes, cfg.data.cache_dir,
                                   image_field=cfg.data.image_field, allow_outside=cfg.data.allow_outside)
    if cfg.modality in ("audio", "video"):
        return read_labeled_media(path, cfg.modality, settings(cfg.modality, cfg), classes, cfg.data.cache_dir,
                                  allow_outside=cfg.data.allow_outside)
    return read_labeled(path, classes, cfg.data.max_doc_chars)
