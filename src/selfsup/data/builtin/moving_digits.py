"""A small labeled video set made on the machine, no download: scikit-learn's bundled handwritten digits moving
across a black canvas, with captions, for the video and video-text demos and tests.

    write_moving_digits(DIR)  ->  DIR/train/<motion>/0000.mp4 ...,  DIR/test/<motion>/0000.mp4 ...,
                                  DIR/train.jsonl, DIR/test.jsonl   ({"video": "train/left/0000.mp4", "text": ...,
                                                                     "label": the digit})

Each clip is 8 frames of 32×32 RGB (grey content): one 8×8 digit (values 0..16 scaled to 0..255, white on black)
upscaled to 12×12 with bicubic, moving in one of four directions, the class of the folders: "left", "right", "up",
"down" (telling them apart needs the order of the frames); the .jsonl files label each clip by its digit instead
(appearance). Its speed is 2..20/7 px/frame (at most 20 px in 7 steps, the room a 12 px digit has in 32 px, so it
never leaves the frame), its start is random within the room left over, and its position across the motion is
random. Test clips use the digit images `digits.py` puts in test (every fourth per class), so test handwriting is
never seen in training. Captions name the digit and the motion in varied words ("a handwritten seven drifting
upward").

Everything is drawn from one seeded numpy Generator, so the frames are identical on every machine. The files are
MPEG-4 part 2 in .mp4 at a fixed quantiser 2 (decoded pixels within about 8 of 255 levels of the drawn ones), encoded
single-threaded with FFmpeg's bit-exact flags (no version string in the stream or the container), so one seed
gives byte-identical files for a given FFmpeg build; another FFmpeg version or CPU may encode differently and
decode to slightly different pixels, never to different content.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

MOTIONS = ("left", "right", "up", "down")
CANVAS, DIGIT, FRAMES = 32, 12, 8
ROOM = CANVAS - DIGIT  # 20 px a digit can move without leaving the frame

_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SUBJECTS = ("the digit {word}", "{a} {n}", "a handwritten {word}", "number {n}", "the number {word}", "{a} {word}")
_PHRASES = {
    "left": ("moving left", "sliding to the left", "drifting leftward", "going left", "travelling to the left"),
    "right": ("moving right", "sliding to the right", "drifting rightward", "going right", "travelling to the right"),
    "up": ("moving up", "sliding upward", "drifting upward", "going up", "rising"),
    "down": ("moving down", "sliding downward", "drifting down", "going down", "falling"),
}


def write_moving_digits(out: str | Path, per_class_train: int = 250, per_class_test: int = 50, fps: int = 8,
                        seed: int = 0) -> dict[str, int]:
    """Write the clips and the two jsonl files; returns the number of clips per split."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (N, 8, 8)
    big = np.stack([np.asarray(Image.fromarray(p, mode="L").resize((DIGIT, DIGIT), Image.Resampling.BICUBIC))
                    for p in pixels])  # (N, 12, 12)
    rank = np.zeros(len(pixels), dtype=int)  # each image's position within its class, as digits.py splits them
    seen = np.zeros(10, dtype=int)
    for i, label in enumerate(digits.target):
        rank[i], seen[label] = seen[label], seen[label] + 1
    pools = {"train": np.flatnonzero(rank % 4 != 3), "test": np.flatnonzero(rank % 4 == 3)}

    rng = np.random.default_rng(seed)
    out = Path(out)
    counts = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        lines = []
        for motion in MOTIONS:
            folder = out / split / motion
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                k = int(rng.choice(pools[split]))
                clip = _clip(big[k], motion, rng)  # (8, 32, 32)
                _write_mp4(folder / f"{i:04d}.mp4", clip, fps)
                lines.append({"video": f"{split}/{motion}/{i:04d}.mp4",
                              "text": _caption(int(digits.target[k]), motion, rng), "label": str(digits.target[k])})
        (out / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        counts[split] = len(lines)
    return counts


def _clip(digit: np.ndarray, motion: str, rng: np.random.Generator) -> np.ndarray:
    """uint8 (FRAMES, CANVAS, CANVAS): `digit` (DIGIT, DIGIT) moving in `motion` on black."""
    speed = rng.uniform(2.0, ROOM / (FRAMES - 1))  # px/frame
    travel = speed * (FRAMES - 1)
    start = rng.uniform(0.0, ROOM - travel)
    across = int(rng.integers(0, ROOM + 1))  # position on the other axis, fixed through the clip
    sign = 1 if motion in ("right", "down") else -1
    clip = np.zeros((FRAMES, CANVAS, CANVAS), np.uint8)
    for t in range(FRAMES):
        along = start + speed * t
        along = int(round(along if sign > 0 else ROOM - along))  # moving left/up: start near the far edge
        y, x = (along, across) if motion in ("up", "down") else (across, along)
        clip[t, y:y + DIGIT, x:x + DIGIT] = digit
    return clip


def _caption(label: int, motion: str, rng: np.random.Generator) -> str:
    a = "an" if label == 8 else "a"  # "an 8", "an eight": the only digit said with a vowel first
    subject = _SUBJECTS[rng.integers(len(_SUBJECTS))].format(word=_WORDS[label], n=label, a=a)
    return f"{subject} {_PHRASES[motion][rng.integers(len(_PHRASES[motion]))]}"


def _write_mp4(path: Path, clip: np.ndarray, fps: int) -> None:
    """Grey frames (T, H, W) as MPEG-4 part 2, quantiser 2, yuv420p, written deterministically."""
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        ctx = stream.codec_context
        ctx.thread_count = 1  # threads split the picture into slices: output would depend on the core count
        ctx.flags |= av.codec.context.Flags.bitexact  # no "Lavc..." version string in the bitstream
        ctx.qmin = ctx.qmax = 2  # a fixed quantiser (1 best .. 31): at 2, pixels within ~8 levels of the drawn ones
        for frame in clip:
            rgb = np.repeat(frame[:, :, None], 3, axis=2)  # (H, W, 3)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())  # flush
