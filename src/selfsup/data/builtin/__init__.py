"""Data sets made on the machine, for recipes' defaults, demos and tests: nothing is downloaded.

    builtin:digits         scikit-learn's handwritten digits, the training images (data/builtin/digits.py)
    builtin:digit-pairs    the same images with generated captions, a .jsonl of pairs
    builtin:tones          synthetic labeled sounds, the training clips (data/builtin/tones.py)
    builtin:tone-pairs     the same clips with generated captions
    builtin:speech         synthetic spoken vowels of many voices, the training clips (data/builtin/speech.py)
    builtin:moving-digits  digits moving across a frame, clips with captions (data/builtin/moving_digits.py)

Each set is written once into the cache, atomically, and its training part returned as a data path.
"""

from __future__ import annotations

from pathlib import Path

from selfsup.data.builtin.digits import write_digits
from selfsup.data.builtin.moving_digits import write_moving_digits
from selfsup.data.builtin.speech import write_speech
from selfsup.data.builtin.tones import write_tones
from selfsup.data.cache.decoding import build_once

SETS = {  # name: (cache folder, writer, the training part's path inside it)
    "builtin:digits": ("digits", write_digits, "train"),
    "builtin:digit-pairs": ("digits", write_digits, "train.jsonl"),
    "builtin:tones": ("tones", write_tones, "train"),
    "builtin:tone-pairs": ("tones", write_tones, "train.jsonl"),
    "builtin:speech": ("speech", write_speech, "train"),
    "builtin:moving-digits": ("moving-digits", write_moving_digits, "train.jsonl"),
}


def resolve(path: str, cache: Path) -> str:
    """A data path with a built-in name replaced by the path of its training part (written on first use)."""
    if path not in SETS:
        return path
    folder, write, part = SETS[path]
    root = cache / "builtin" / folder
    if not root.is_dir():
        build_once(root, write)  # atomic: a folder there is a whole set, a killed run leaves none
    return str(root / part)
