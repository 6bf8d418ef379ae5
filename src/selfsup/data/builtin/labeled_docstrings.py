"""A small real labeled text set present on every machine: docstrings of Python's standard library labeled by
the top-level package they come from (asyncio, email, logging, tkinter, xml, ...), for transfer-evaluation demos.

    selfsup data labeled-docstrings --out DIR   ->   DIR/train.jsonl, DIR/test.jsonl  ({"text", "label"})

Construction, deterministic for a given Python installation:
  * docstrings of at least `min_chars` characters from the packages (folders) of the stdlib, as read by
    `stdlib_docs` (tests excluded); private packages (`_...`) and idlelib (an application built on tkinter,
    whose docstrings describe the same widgets) are left out;
  * a text found in more than one package is dropped (its label would be ambiguous), duplicates inside a
    package count once;
  * the `classes` packages with the most docstrings are kept, each capped at the count of the smallest of them
    (or `per_class`), keeping the texts whose salted SHA-1 comes first, so every class has the same size;
  * a text goes to test when its (differently salted) SHA-1 falls in the first `test_fraction` of the hash space, else to train.

Note: the built-in pretraining corpus is the same docstrings, unlabeled; a run pretrained on it has seen these
texts (never their labels), as a transductive setting. Use your own labeled set for a clean transfer number.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from selfsup.data.builtin import stdlib_docs
from selfsup.data.errors import DataError

EXCLUDED = {"idlelib"}


def text_hash(text: str, salt: str = "split") -> int:
    """64 bits of SHA-1(salt + text); the cap and the split use different salts, so they are independent."""
    return int.from_bytes(hashlib.sha1(f"{salt}:{text}".encode("utf-8")).digest()[:8], "big")


@lru_cache(maxsize=2)
def _package_docstrings(min_chars: int) -> dict[str, frozenset[str]]:
    """package -> its docstrings of at least min_chars characters (parsing the stdlib takes a few seconds)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in stdlib_docs.source_files():
        parts = path.relative_to(_root()).parts
        if len(parts) < 2 or parts[0].startswith("_") or parts[0] in EXCLUDED:
            continue  # a single-file module, or a package left out
        found[parts[0]].update(d for d in stdlib_docs.docstrings(path) if len(d) >= min_chars)
    return {pkg: frozenset(texts) for pkg, texts in found.items()}


def _root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def labeled_docstrings(classes: int = 8, per_class: int | None = None, min_chars: int = 30) -> dict[str, list[str]]:
    """label -> texts, `classes` labels, balanced."""
    found = _package_docstrings(min_chars)
    return balanced(found, classes, per_class, 0, lambda kept: DataError(
        f"the standard library at '{_root()}' has docstrings in {kept} package(s); need at least 2 classes"))


def balanced(found: dict, classes: int, per_class: int | None, min_per_class: int, too_few) -> dict[str, list[str]]:
    """label -> texts: texts under one label only, the `classes` labels with the most (each at least
    `min_per_class`), each cut to the smallest kept label's size (at most `per_class`) in a hash order; `too_few(n)`:
    the error when fewer than 2 labels are kept."""
    owners: dict[str, int] = defaultdict(int)
    for texts in found.values():
        for t in texts:
            owners[t] += 1
    unique = {label: sorted((t for t in texts if owners[t] == 1), key=lambda t: text_hash(t, "cap"))
              for label, texts in found.items()}
    ranked = sorted((label for label in unique if len(unique[label]) >= min_per_class),
                    key=lambda label: (-len(unique[label]), label))[:classes]
    if len(ranked) < 2:
        raise too_few(len(ranked))
    cap = min(len(unique[label]) for label in ranked)
    if per_class is not None:
        cap = min(cap, per_class)
    return {label: unique[label][:cap] for label in sorted(ranked)}


def build(out_dir: str | Path, classes: int = 8, per_class: int | None = None, test_fraction: float = 0.2) -> dict:
    """Write out_dir/train.jsonl and out_dir/test.jsonl; return counts per split and class."""
    if classes < 2:
        raise DataError(f"--classes {classes}: expected at least 2")
    return write_splits(out_dir, labeled_docstrings(classes, per_class), test_fraction)


def write_splits(out_dir: str | Path, data: dict[str, list[str]], test_fraction: float = 0.2) -> dict:
    """label -> texts as out_dir/train.jsonl and out_dir/test.jsonl ({"text", "label"}), split by a hash of the
    text and ordered by it; return counts per split and class (every labeled set of data/builtin writes this way)."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction={test_fraction}: expected a fraction between 0 and 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cut = int(test_fraction * 2 ** 64)
    splits = {"train": [], "test": []}
    for label, texts in data.items():
        for t in texts:
            splits["test" if text_hash(t) < cut else "train"].append((text_hash(t), label, t))
    counts = {}
    for name, rows in splits.items():
        rows.sort()  # by hash: classes interleaved, order fixed
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for _, label, text in rows:
                f.write(json.dumps({"text": text, "label": label}) + "\n")
        per = defaultdict(int)
        for _, label, _ in rows:
            per[label] += 1
        counts[name] = dict(path=str(out / f"{name}.jsonl"), examples=len(rows), per_class=dict(sorted(per.items())))
    return dict(classes=sorted(data), per_class=len(next(iter(data.values()))), **counts)
