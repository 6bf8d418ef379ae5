"""A small labeled, captioned audio set made on the machine (no download): six kinds of synthetic tone, written
as 16-bit WAV folders plus caption files, for the audio demos and tests.

    write_tones(DIR)   ->   DIR/train/<class>/<i>.wav, DIR/test/<class>/<i>.wav, DIR/train.jsonl, DIR/test.jsonl

Each clip is 1 s at 16 kHz: a sound of 0.6-1.0 s at a random offset, with 10 ms fades (no clicks), over faint
white noise. Frequencies, amplitudes, durations and offsets are random but drawn from numpy Generators seeded by
(seed, split, class), so the set is the same on every machine, and a split's files do not depend on the size of
the other split. The jsonl files hold one `{"audio": "train/<class>/<i>.wav", "text": caption, "label": class}`
per clip (paths relative to the jsonl file). Captions vary, from several templates per class, and their words
match the signal: "loud"/"quiet" from the amplitude, "short"/"long" from the duration, "rapid"/"slow" from the
beep rate, "muffled" only for low-passed noise. The class folders give labels to evaluation only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile

CLIP_SECONDS = 1.0
FADE_SECONDS = 0.01

TONE_CLASSES = {  # folder name -> what the clips sound like
    "hum": "a low sine tone, 100-200 Hz, with a weak second harmonic",
    "whistle": "a high sine tone, 2-4 kHz, with a slight vibrato",
    "rising": "a linear chirp sweeping up, from 300-500 Hz to 2.5-3.5 kHz",
    "falling": "a linear chirp sweeping down, from 2.5-3.5 kHz to 300-500 Hz",
    "beeps": "1 kHz beeps switching on and off 4-8 times a second",
    "noise": "white noise, low-passed below 1-2 kHz in a third of the clips",
}

TEMPLATES = {  # {loud}, {length}, {rate}, {tone} are filled with words that describe the clip
    "hum": ["a {loud} low hum", "a {length} low-pitched hum", "a deep {loud} drone", "a low hum",
            "a {loud} {length} humming tone", "low-pitched humming", "a {length} deep hum"],
    "whistle": ["a high whistle", "a {loud} high-pitched whistle", "a {length} shrill tone", "a {loud} high tone",
                "whistling at a high pitch", "a {length} high whistle"],
    "rising": ["a tone sweeping upward", "a {loud} rising tone", "a {length} upward sweep",
               "pitch rising from low to high", "a {loud} rising chirp", "a tone gliding up"],
    "falling": ["a tone sweeping downward", "a {loud} falling tone", "a {length} downward sweep",
                "pitch falling from high to low", "a {loud} falling chirp", "a tone gliding down"],
    "beeps": ["repeated short beeps", "{loud} beeping", "a {length} series of beeps", "{rate} beeps",
              "a {rate} repeating beep", "{loud} {rate} beeping"],
    "noise": ["hiss of static noise", "a {loud} {tone} hiss", "a {length} burst of {tone} noise", "static",
              "{loud} white noise", "a {length} {tone} rush of noise"],
}

WORDS = {  # attribute -> value -> synonyms
    "loud": {True: ["loud", "strong"], False: ["quiet", "soft", "faint"]},
    "length": {True: ["long", "sustained"], False: ["short", "brief"]},
    "rate": {True: ["rapid", "fast"], False: ["slow", "steady"]},
    "tone": {True: ["muffled", "dull"], False: ["bright", "harsh"]},
}


def write_tones(out: str | Path, per_class_train: int = 150, per_class_test: int = 30, sample_rate: int = 16000,
                seed: int = 0) -> dict[str, int]:
    """Write the WAV folders and the jsonl caption files; returns the number of clips per split."""
    if sample_rate < 9000:
        raise ValueError(f"sample_rate must be at least 9000 Hz (whistles reach 4 kHz), got {sample_rate}")
    out = Path(out)
    counts = {}
    for s, (split, per_class) in enumerate((("train", per_class_train), ("test", per_class_test))):
        lines = []
        for c, name in enumerate(TONE_CLASSES):
            rng = np.random.default_rng([seed, s, c])
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                wave, caption = _clip(name, rng, sample_rate)
                rel = f"{split}/{name}/{i:04d}.wav"
                soundfile.write(out / rel, wave, sample_rate, subtype="PCM_16")
                lines.append(json.dumps({"audio": rel, "text": caption, "label": name}) + "\n")
        (out / f"{split}.jsonl").write_text("".join(lines))
        counts[split] = len(lines)
    return counts


def _clip(name: str, rng: np.random.Generator, sample_rate: int) -> tuple[np.ndarray, str]:
    """One clip: float32 (sample_rate * CLIP_SECONDS,) in [-1, 1] and its caption."""
    n = round(CLIP_SECONDS * sample_rate)
    duration = rng.uniform(0.6, 1.0)
    length = round(duration * sample_rate)
    t = np.arange(length) / sample_rate  # (L,) seconds
    amp = rng.uniform(0.1, 0.8)
    attrs = {"loud": amp > 0.45, "length": duration > 0.8}

    if name == "hum":
        f = rng.uniform(100, 200)
        sound = np.sin(2 * np.pi * f * t) + 0.2 * np.sin(4 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    elif name == "whistle":
        f, depth, speed = rng.uniform(2000, 4000), rng.uniform(0, 40), rng.uniform(3, 7)  # vibrato in Hz, Hz
        sound = np.sin(2 * np.pi * f * t + depth / speed * np.sin(2 * np.pi * speed * t))
    elif name in ("rising", "falling"):
        low, high = rng.uniform(300, 500), rng.uniform(2500, 3500)
        f0, f1 = (low, high) if name == "rising" else (high, low)
        sound = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * duration)))  # instantaneous f0 -> f1
    elif name == "beeps":
        f, rate = rng.uniform(950, 1050), rng.uniform(4, 8)
        gate = (t * rate) % 1 < 0.5  # on for the first half of every period
        sound = np.sin(2 * np.pi * f * t) * gate
        attrs["rate"] = rate > 6
    elif name == "noise":
        sound = rng.standard_normal(length)
        muffled = rng.random() < 1 / 3
        if muffled:  # low-pass by zeroing the spectrum above the cutoff
            spectrum = np.fft.rfft(sound)
            spectrum[np.fft.rfftfreq(length, 1 / sample_rate) > rng.uniform(1000, 2000)] = 0
            sound = np.fft.irfft(spectrum, length)
        sound = sound / (3 * np.std(sound))  # peaks at about ±1, like the tones
        attrs["tone"] = muffled
    else:
        raise ValueError(f"unknown tone class {name!r}; expected one of {list(TONE_CLASSES)}")

    fade = np.minimum(1, np.minimum(np.arange(length), np.arange(length)[::-1]) / (FADE_SECONDS * sample_rate))
    wave = rng.normal(0, rng.uniform(0.002, 0.01), n)  # (N,) the background
    start = rng.integers(0, n - length + 1)
    wave[start:start + length] += amp * fade * sound
    template = TEMPLATES[name][rng.integers(len(TEMPLATES[name]))]
    words = {key: WORDS[key][value][rng.integers(len(WORDS[key][value]))] for key, value in attrs.items()}
    return np.clip(wave, -1, 1).astype(np.float32), template.format(**words)
