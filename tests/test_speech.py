"""The synthetic speech set: its folders, determinism, held-out voices, and vowels whose formants sit where
Peterson & Barney put them, whatever the voice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from selfsup.data.builtin.speech import VOWELS, write_speech

SR = 16000


def _spectrum(path) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, smoothed magnitude spectrum) of a clip's loudest 100 ms (inside the vowel)."""
    wave, sr = soundfile.read(path)
    energy = np.convolve(wave ** 2, np.ones(1600), "valid")
    start = int(energy.argmax())
    seg = wave[start:start + 1600] * np.hanning(1600)
    mag = np.abs(np.fft.rfft(seg, 8192))
    return np.fft.rfftfreq(8192, 1 / sr), np.convolve(mag, np.ones(40) / 40, "same")


def _band(freqs, mag, lo, hi) -> float:
    return float(mag[(freqs >= lo) & (freqs < hi)].mean())


def test_write_speech_folders_and_determinism(tmp_path):
    counts = write_speech(tmp_path / "a", train_speakers=3, test_speakers=2, per_vowel=1, seed=3)
    assert counts == {"train": 3 * len(VOWELS), "test": 2 * len(VOWELS)}
    for split, n in counts.items():
        files = sorted((tmp_path / "a" / split).rglob("*.wav"))
        assert len(files) == n and {f.parent.name for f in files} == set(VOWELS)
        for f in files:
            wave, sr = soundfile.read(f, dtype="float32")
            assert sr == SR and wave.shape == (SR,) and np.isfinite(wave).all() and 0.15 < np.abs(wave).max() <= 1
    train = {f.stem.split("-")[0] for f in (tmp_path / "a" / "train").rglob("*.wav")}
    test = {f.stem.split("-")[0] for f in (tmp_path / "a" / "test").rglob("*.wav")}
    assert len(train) == 3 and len(test) == 2 and not train & test  # test voices are never training's

    write_speech(tmp_path / "b", train_speakers=3, test_speakers=2, per_vowel=1, seed=3)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.wav"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    # a split does not depend on the other's size
    write_speech(tmp_path / "c", train_speakers=1, test_speakers=2, per_vowel=1, seed=3)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "c" / f).read_bytes()
               for f in files if f.parts[0] == "test")
    write_speech(tmp_path / "d", train_speakers=3, test_speakers=2, per_vowel=1, seed=4)
    assert (tmp_path / "d" / files[0]).read_bytes() != (tmp_path / "a" / files[0]).read_bytes()


def test_vowels_have_their_formants_in_every_voice(tmp_path):
    """heed (F2 2290 Hz in a man) has more energy at 1.8-3.4 kHz, relative to 150-1500 Hz, than who'd (F2 870)
    and hod (F1 730, F2 1090); and a child's voice puts the same vowel's formants higher than a man's."""
    write_speech(tmp_path, train_speakers=3, test_speakers=0, per_vowel=1)
    for k in range(3):  # a man, a woman, a child (speakers cycle through the three)
        spectra = {v: _spectrum(tmp_path / "train" / v / f"tr{k:02d}-0.wav") for v in ("heed", "whod", "hod")}
        high = {v: _band(*s, 1800, 3400) / _band(*s, 150, 1500) for v, s in spectra.items()}
        assert high["heed"] > 3 * high["whod"] and high["heed"] > 1.8 * high["hod"], high
    freqs, man = _spectrum(tmp_path / "train" / "hod" / "tr00-0.wav")
    _, child = _spectrum(tmp_path / "train" / "hod" / "tr02-0.wav")
    low = freqs < 1600  # F1 and F2 of hod: the child's centroid is higher (a shorter vocal tract)
    assert (freqs[low] * child[low]).sum() / child[low].sum() > (freqs[low] * man[low]).sum() / man[low].sum()


def test_builtin_speech_is_written_once_into_the_cache(tmp_path, monkeypatch):
    """data.path=builtin:speech: the set is written on first use (a set with no .jsonl: its folder marks it whole)
    and its training split is the data path."""
    import selfsup.data.builtin as builtin

    calls = []

    def small(out):
        calls.append(out)
        write_speech(out, train_speakers=1, test_speakers=1, per_vowel=1)

    monkeypatch.setitem(builtin.SETS, "builtin:speech", ("speech", small, "train"))
    path = builtin.resolve("builtin:speech", tmp_path)
    assert path == str(tmp_path / "builtin" / "speech" / "train") and len(list(Path(path).rglob("*.wav"))) == 10
    assert builtin.resolve("builtin:speech", tmp_path) == path and len(calls) == 1
