"""A small real image set present on every machine: scikit-learn's bundled handwritten digits (1,797 grayscale
8×8 images, 10 classes), written as PNG folders for the vision demo and tests.

    selfsup data digits --out DIR   ->   DIR/train/<digit>/*.png, DIR/test/<digit>/*.png
    data.path=builtin:digits        ->   the train split, written once into the cache (the vision recipes' default)

The split is stratified and fixed: within each class, every fourth image (by its index in the data set) goes to
test (≈ 25%). Pixel values 0..16 are scaled to 0..255 and inverted nowhere: white strokes on black. The class
folders give labels to evaluation only; pretraining on DIR/train ignores them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

BUILTIN_DIGITS = "builtin:digits"


def resolve(path: str, cache: Path) -> str:
    """A data path with `builtin:digits` replaced by the folder of its training split (written on first use)."""
    if path != BUILTIN_DIGITS:
        return path
    root = cache / "digits"
    if not (root / "train").is_dir():
        tmp = cache / f".digits.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        write_digits(tmp)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)  # atomic: a killed run leaves no half-written set
    return str(root / "train")


def write_digits(out: str | Path) -> dict[str, int]:
    """Write the PNG folders; returns the number of images per split."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (N, 8, 8)
    out = Path(out)
    counts = {"train": 0, "test": 0}
    seen = np.zeros(10, dtype=int)
    for i, (image, label) in enumerate(zip(pixels, digits.target)):
        split = "test" if seen[label] % 4 == 3 else "train"
        seen[label] += 1
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
        counts[split] += 1
    return counts
