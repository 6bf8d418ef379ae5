"""A labeled speech-like set made on the machine (no download): ten vowels, in h-vowel-d words, spoken by synthetic
speakers, the test speakers never heard in training, for measuring whether an audio encoder's features generalise
across voices.

    write_speech(DIR)   ->   DIR/train/<vowel>/<speaker>-<i>.wav, DIR/test/<vowel>/<speaker>-<i>.wav

A source-filter (Klatt-style cascade) formant synthesiser: a glottal pulse train at the speaker's pitch (the
KLGLOTT88 flow derivative, with jitter and shimmer, a falling or rising intonation, breathy aspiration in the open
phase) through a low-pass of the speaker's spectral tilt and five second-order resonators at the vowel's formants;
before it an /h/ (breath noise through the same resonators), after it the formants glide to /d/'s locus, voicing
stops, and a short burst releases the /d/.
The ten classes are the vowels of Peterson & Barney (1952) (heed, hid, head, had, hod, hawed, hood, who'd, hud,
heard), with their men's average formants. A speaker is a pitch, a vocal-tract length (the formants scaled by
0.9-1.35: men, women, children), a timbre (tilt, open quotient, breathiness, bandwidths, higher formants) and an
accent (each vowel's formants moved by a few percent, per speaker); each token moves them a little more and glides
in from a neutral vowel. So the classes overlap across speakers as real vowels do, and telling a vowel of an
unseen speaker needs what speaker normalisation needs: formant patterns relative to a voice, not pitch or timbre.

Each clip is 1 s at 16 kHz: a word of 0.32-0.71 s (a vowel of 0.25-0.55 s) at a random offset, over a faint
hiss of random level.
Speakers, tokens and noise are drawn from numpy Generators seeded by (seed, split, speaker), so the set is the same
on every machine and a split's files do not depend on the other split's size. The class folders give labels to
evaluation only; pretraining reads DIR/train as unlabeled clips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

CLIP_SECONDS = 1.0
BLOCK = 0.005  # seconds over which the formants are held (their glides are steps this long)

VOWELS = {  # folder name (the word it is the vowel of) -> F1, F2, F3 in Hz, Peterson & Barney's men's averages
    "heed": (270, 2290, 3010), "hid": (390, 1990, 2550), "head": (530, 1840, 2480), "had": (660, 1720, 2410),
    "hod": (730, 1090, 2440), "hawed": (570, 840, 2410), "hood": (440, 1020, 2240), "whod": (300, 870, 2240),
    "hud": (640, 1190, 2390), "heard": (490, 1350, 1690),
}
NEUTRAL = (500, 1500, 2500)  # the schwa a token glides in from
LOCUS = (250, 1700, 2600)  # where the formants of a vowel before /d/ head (its locus)
GROUPS = {  # voice -> (pitch range Hz, formant scale range): vocal-tract length is the scale's inverse
    "man": ((85, 155), (0.9, 1.05)), "woman": ((165, 255), (1.1, 1.22)), "child": ((230, 320), (1.22, 1.35)),
}


def write_speech(out: str | Path, train_speakers: int = 30, test_speakers: int = 10, per_vowel: int = 8,
                 sample_rate: int = 16000, seed: int = 0) -> dict[str, int]:
    """Write the WAV folders: every speaker says every vowel `per_vowel` times; returns the number of clips per
    split. Test speakers are other voices than training's (their own draws)."""
    if sample_rate < 12000:
        raise ValueError(f"sample_rate must be at least 12000 Hz (children's fifth formant nears 6 kHz), "
                         f"got {sample_rate}")
    out = Path(out)
    counts = {}
    for s, (split, speakers) in enumerate((("train", train_speakers), ("test", test_speakers))):
        tokens = []  # (vowel, file name, rng, speaker) for every clip of the split
        for k in range(speakers):
            rng = np.random.default_rng([seed, s, k])
            speaker = _speaker(rng, k)
            for name in VOWELS:
                for i in range(per_vowel):
                    tokens.append((name, f"{split[:2]}{k:02d}-{i}", rng, speaker))
        params = [_token(rng, speaker, vowel, sample_rate) for vowel, _, rng, speaker in tokens]
        waves = _synthesise(params, sample_rate) if tokens else []
        for (name, stem, *_), wave in zip(tokens, waves):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            soundfile.write(folder / f"{stem}.wav", wave, sample_rate, subtype="PCM_16")
        counts[split] = len(tokens)
    return counts


def _speaker(rng: np.random.Generator, k: int) -> dict:
    """A voice: pitch, vocal-tract scale, timbre and accent."""
    group = list(GROUPS)[k % len(GROUPS)]  # every split has all three kinds of voice
    (f0_lo, f0_hi), (sc_lo, sc_hi) = GROUPS[group]
    return dict(
        f0=rng.uniform(f0_lo, f0_hi), scale=rng.uniform(sc_lo, sc_hi),
        tilt=rng.uniform(0.3, 0.85),  # pole of the one-pole low-pass on the source: higher is a darker voice
        open_quotient=rng.uniform(0.4, 0.75), breath=rng.uniform(0.0, 0.25), bandwidth=rng.uniform(0.8, 1.5),
        high=(rng.uniform(3300, 3900), rng.uniform(4300, 4900)),  # F4, F5 of a man's length, scaled as the others
        accent={v: rng.normal(1.0, 0.05, 3) for v in VOWELS},  # this speaker's way of saying each vowel
    )


def _token(rng: np.random.Generator, speaker: dict, vowel: str, sample_rate: int) -> dict:
    """One word h-vowel-d: its formant track per block, pitch and gates per sample, offset, level and noise."""
    n = round(CLIP_SECONDS * sample_rate)
    h, v, closure, burst = (round(rng.uniform(lo, hi) * sample_rate)
                            for lo, hi in ((0.03, 0.08), (0.25, 0.55), (0.03, 0.06), (0.008, 0.015)))
    length = h + v + closure + burst
    scale = speaker["scale"]
    target = np.array([*(np.array(VOWELS[vowel]) * speaker["accent"][vowel] * rng.normal(1.0, 0.04, 3)),
                       *speaker["high"]]) * scale  # (5,) Hz
    neutral = np.array([*NEUTRAL, *speaker["high"]]) * scale
    locus = np.array([*LOCUS, *speaker["high"]]) * scale
    t_block = (np.arange(-(-length // round(BLOCK * sample_rate))) + 0.5) * BLOCK  # (blocks,) seconds
    t_in, t_out = t_block - h / sample_rate, (h + v) / sample_rate - t_block  # after voicing starts, before it ends
    glide_in = rng.uniform(0.0, 0.5) * np.exp(-np.maximum(t_in, 0) / rng.uniform(0.02, 0.05))  # from a schwa
    glide_out = np.clip(1 - t_out / rng.uniform(0.04, 0.07), 0, 1) ** 2  # towards /d/, closing at voicing's end
    formants = target + (neutral - target) * glide_in[:, None]
    formants = formants + (locus - formants) * glide_out[:, None]  # (blocks, 5)
    bandwidths = np.array([70, 100, 150, 220, 300]) * speaker["bandwidth"]
    t = np.arange(length) / sample_rate  # (L,)
    tv = np.clip(t - h / sample_rate, 0, None)  # seconds of voicing
    drift = rng.uniform(-0.25, 0.15)  # intonation: mostly falling, sometimes rising, over the word
    f0 = speaker["f0"] * rng.uniform(0.92, 1.08) * (1 + drift * tv / tv[-1])
    f0 = f0 * (1 + 0.01 * rng.standard_normal(length).cumsum() / np.sqrt(np.arange(1, length + 1)))  # jitter
    voiced = (t >= h / sample_rate) & (t < (h + v) / sample_rate)
    voice = voiced * np.minimum(1, np.minimum(tv / 0.02, ((h + v) / sample_rate - t) / 0.03)).clip(0)
    voice = voice * (1 + 0.05 * rng.standard_normal(length))  # shimmer
    noise = np.where(t < h / sample_rate, rng.uniform(0.2, 0.4), 0.0)  # /h/: breath through the vowel's tract
    noise[length - burst:] = rng.uniform(0.3, 0.6)  # /d/'s release
    return dict(n=n, length=length, formants=formants, bandwidths=bandwidths, f0=f0, voice=voice, noise=noise,
                offset=rng.integers(0, n - length + 1), amp=rng.uniform(0.2, 0.8), floor=rng.uniform(0.002, 0.01),
                tilt=speaker["tilt"], open_quotient=speaker["open_quotient"], breath=speaker["breath"],
                aspiration=rng.standard_normal(length), background=rng.standard_normal(n))


def _synthesise(tokens: list[dict], sample_rate: int) -> list[np.ndarray]:
    """The clips of a list of tokens, float32 (n,) each: the source and filters run over all tokens at once, one
    sample at a time (the resonators' coefficients change every block)."""
    N, L = len(tokens), max(tok["length"] for tok in tokens)
    per_block = round(BLOCK * sample_rate)
    f0, aspiration, voice, noise = (np.zeros((N, L)) for _ in range(4))
    formants = np.zeros((N, -(-L // per_block), 5))
    for j, tok in enumerate(tokens):
        for name, array in (("f0", f0), ("aspiration", aspiration), ("voice", voice), ("noise", noise)):
            array[j, :tok["length"]] = tok[name]
        formants[j, :len(tok["formants"])] = tok["formants"]
        formants[j, len(tok["formants"]):] = tok["formants"][-1]
    oq = np.array([tok["open_quotient"] for tok in tokens])[:, None]  # (N, 1)
    phase = np.cumsum(f0 / sample_rate, axis=1) % 1  # (N, L) position in the glottal cycle
    open_phase = phase < oq
    # KLGLOTT88: flow phase² (oq − phase) while the glottis is open; its derivative (the lip radiation folded in)
    pulses = np.where(open_phase, 2 * phase * oq - 3 * phase ** 2, 0.0) / oq ** 2  # (N, L)
    breath = np.array([tok["breath"] for tok in tokens])[:, None]
    source = (pulses + breath * aspiration * open_phase) * voice + noise * aspiration  # (N, L)
    bw = np.stack([tok["bandwidths"] for tok in tokens]).T[None]  # (1, 5, N)
    hz = formants.transpose(1, 2, 0)  # (blocks, 5, N): a block's coefficients for every token, contiguous
    c = -np.exp(-2 * np.pi * bw / sample_rate) * np.ones_like(hz)
    b = 2 * np.exp(-np.pi * bw / sample_rate) * np.cos(2 * np.pi * hz / sample_rate)
    a = 1 - b - c
    tilt = np.array([tok["tilt"] for tok in tokens])  # (N,)
    source = np.ascontiguousarray(source.T)  # (L, N)
    y1, y2 = np.zeros((5, N)), np.zeros((5, N))
    low = np.zeros(N)
    out = np.empty((L, N))
    for i in range(L):
        k = i // per_block
        low = (1 - tilt) * source[i] + tilt * low  # the voice's spectral tilt
        x = low
        for f in range(5):  # the cascade: each resonator filters the one before
            y = a[k, f] * x + b[k, f] * y1[f] + c[k, f] * y2[f]
            y2[f] = y1[f]
            y1[f] = y
            x = y
        out[i] = x
    out = out.T  # (N, L)
    waves = []
    for j, tok in enumerate(tokens):
        voice = out[j, :tok["length"]]
        wave = tok["floor"] * tok["background"]  # (n,) the background
        wave[tok["offset"]:tok["offset"] + tok["length"]] += tok["amp"] * voice / (np.abs(voice).max() + 1e-9)
        waves.append(np.clip(wave, -1, 1).astype(np.float32))
    return waves
