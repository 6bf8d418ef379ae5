"""A small real image set present on every machine: scikit-learn's bundled handwritten digits (1,797 grayscale
8×8 images, 10 classes), written as PNG folders for the vision demo and tests.

    selfsup data digits --out DIR   ->   DIR/train/<digit>/*.png, DIR/test/<digit>/*.png, and the same images
                                         paired with generated captions in DIR/train.jsonl, DIR/test.jsonl
    data.path=builtin:digits        ->   the train folder, written once into the cache (the vision recipes' default)
    data.path=builtin:digit-pairs   ->   DIR/train.jsonl (the image-text recipes' default)

The split is stratified and fixed: within each class, every fourth image (by its index in the data set) goes to
test (≈ 25%). Pixel values 0..16 are scaled to 0..255 and inverted nowhere: white strokes on black. The class
folders give labels to evaluation only; pretraining on DIR/train ignores them.

Captions name the digit (as a numeral or a word) in varied phrasings and describe the stroke (bold or thin, from
the image's ink against its class's median), so captions of one class differ and zero-shot prompts such as
"a photo of the digit {label}" are not training captions verbatim.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten {word}", "the digit {numeral}", "a {stroke} handwritten {numeral}", "the number {word}",
             "{numeral}, written by hand", "a {stroke} {word}", "a scanned digit: {word}",
             "handwriting of the number {numeral}")


def write_digits(out: str | Path) -> dict[str, int]:
    """Write the PNG folders; returns the number of images per split."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (N, 8, 8)
    out = Path(out)
    counts = {"train": 0, "test": 0}
    pairs: dict[str, list[str]] = {"train": [], "test": []}
    seen = np.zeros(10, dtype=int)
    ink = pixels.reshape(len(pixels), -1).sum(axis=1)  # (N,)
    median = {label: np.median(ink[digits.target == label]) for label in range(10)}
    rng = np.random.default_rng(0)
    for i, (image, label) in enumerate(zip(pixels, digits.target)):
        split = "test" if seen[label] % 4 == 3 else "train"
        seen[label] += 1
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
        counts[split] += 1
        stroke = "bold" if ink[i] > median[label] else "thin"
        caption = TEMPLATES[rng.integers(len(TEMPLATES))].format(word=WORDS[label], numeral=label, stroke=stroke)
        pairs[split].append(json.dumps({"image": f"{split}/{label}/{i:04d}.png", "text": caption,
                                        "label": str(label)}))
    for split, lines in pairs.items():
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return counts
