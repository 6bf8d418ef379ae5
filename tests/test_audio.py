"""Audio decoding into log-mel (shapes, pitch, padding, every skip reason and note) and the synthetic tone set,
on signals made here."""

from __future__ import annotations

import io
import json

import librosa
import numpy as np
import pytest
import soundfile

from selfsup.data.builtin.tones import TONE_CLASSES, write_tones
from selfsup.data.cache.decoding import Skip
from selfsup.data.read.audio import AUDIO_SUFFIXES, clip_frames, decode_audio, log_mel

SR, N_MELS, N_FFT, HOP = 16000, 64, 400, 160
SETTINGS = dict(sample_rate=SR, seconds=1.0, n_mels=N_MELS, n_fft=N_FFT, hop=HOP, min_seconds=0.2)


def _sine(freq=1000.0, seconds=1.0, rate=SR, amp=0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def _encoded(x: np.ndarray, rate=SR, fmt="WAV", subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _decode(data: bytes, **kw):
    return decode_audio(data, **{**SETTINGS, **kw})


def _peak_hz(mel: np.ndarray) -> tuple[int, int]:
    """(mel bin with the most energy over the valid frames, the bin whose centre is nearest 1 kHz)."""
    centres = librosa.mel_frequencies(N_MELS + 2, fmin=0, fmax=SR / 2)[1:-1]  # (n_mels,) Hz
    return int(mel.astype(np.float32).mean(axis=1).argmax()), int(np.abs(centres - 1000).argmin())


def test_sine_decodes_to_its_pitch():
    mel, valid, notes = _decode(_encoded(_sine()))
    frames = clip_frames(SR, 1.0, HOP)
    assert frames == 101 and mel.shape == (N_MELS, frames) and mel.dtype == np.float16
    assert valid == frames and notes == []
    peak, expected = _peak_hz(mel)
    assert abs(peak - expected) <= 1
    assert np.isfinite(mel).all()


def test_matches_librosa_with_zero_padding():
    x = np.random.default_rng(0).standard_normal(SR // 2).astype(np.float32) * 0.1
    ours = log_mel(x, SR, N_MELS, N_FFT, HOP)
    ref = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, center=True,
                                         pad_mode="constant", power=2.0, window="hann", htk=False, norm="slaney")
    assert ours.shape == ref.shape == (N_MELS, 1 + len(x) // HOP)
    np.testing.assert_allclose(ours, np.log(np.maximum(ref, 1e-10)), atol=1e-3)


def test_short_file_is_padded_with_silence():
    mel, valid, notes = _decode(_encoded(_sine(seconds=0.5)))
    assert notes == ["padded"] and mel.shape == (N_MELS, 101)
    assert valid == 1 + 8000 // HOP == 51
    # frame t covers samples t*HOP ± N_FFT/2: from frame 52 on, nothing but the zero padding
    assert (mel[:, 52:] == np.float16(np.log(1e-10))).all()
    assert (mel[:, :valid].astype(np.float32).max(axis=0) > 0).all()


def test_long_file_keeps_its_centre():
    x = np.concatenate([np.zeros(SR, np.float32), _sine(seconds=1.0), np.zeros(SR, np.float32)])
    mel, valid, notes = _decode(_encoded(x))
    assert notes == ["cropped"] and valid == 101
    assert (mel[:, 5:-5].astype(np.float32).max(axis=0) > 0).all()  # the tone, not the silence around it


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"RIFF\x00\x00\x00\x00WAVEgarbage" * 10, "corrupt audio"),
    (bytes(range(256)) * 40, "corrupt audio"),
    (_encoded(np.zeros(0, np.float32)), "corrupt audio"),
    (_encoded(np.array([0.1, np.nan] * 4000, np.float32), subtype="FLOAT"), "corrupt audio"),
    (_encoded(_sine(seconds=0.1)), "too short"),
    (_encoded(np.zeros(SR, np.float32)), "silent"),
    (_encoded(_sine(amp=5e-5)), "silent"),
])
def test_skip_reasons(data, reason):
    with pytest.raises(Skip) as e:
        _decode(data)
    assert e.value.reason == reason


def test_stereo_is_mixed_to_mono():
    left = _sine()
    mel, _, notes = _decode(_encoded(np.stack([left, 0.5 * left], axis=1)))  # (T, 2)
    assert notes == ["mixed to mono"]
    mono, _, _ = _decode(_encoded(0.75 * left))
    loud = mono > mono.max() - 10  # the tone's bins; below, the two 16-bit quantisations' noise floors differ
    np.testing.assert_allclose(mel[loud].astype(np.float32), mono[loud].astype(np.float32), atol=2e-2)


def test_other_rate_is_resampled_and_keeps_its_pitch():
    mel, valid, notes = _decode(_encoded(_sine(rate=8000), rate=8000))
    assert notes == ["resampled"] and mel.shape == (N_MELS, 101) and valid == 101
    peak, expected = _peak_hz(mel)
    assert abs(peak - expected) <= 1


def test_too_short_is_judged_after_resampling():
    data = _encoded(_sine(seconds=0.25, rate=44100), rate=44100)  # 11025 samples: long enough at SR too
    _, valid, notes = _decode(data)
    assert notes == ["resampled", "padded"] and valid == 1 + 4000 // HOP


def test_clipped_square_wave():
    square = np.sign(_sine(freq=440.0)) * 1.5  # written as PCM_16: saturated at full scale
    _, _, notes = _decode(_encoded(np.clip(square, -1, 1)))
    assert notes == ["clipped"]


def test_flac_round_trip():
    # as int16: libsndfile rounds float input to 16 bits slightly differently for WAV and FLAC
    x = np.round(_sine(freq=500.0, seconds=0.7) * 32767).astype(np.int16)
    wav, flac = _encoded(x), _encoded(x, fmt="FLAC")
    assert flac[:4] == b"fLaC" and ".flac" in AUDIO_SUFFIXES
    a, b = _decode(wav), _decode(flac)
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]  # lossless: the same 16-bit samples


def test_write_tones(tmp_path):
    counts = write_tones(tmp_path / "a", per_class_train=3, per_class_test=2, seed=7)
    assert counts == {"train": 3 * len(TONE_CLASSES), "test": 2 * len(TONE_CLASSES)}
    assert len(TONE_CLASSES) == 6
    for split, n in counts.items():
        rows = [json.loads(line) for line in (tmp_path / "a" / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n == len(list((tmp_path / "a" / split).rglob("*.wav")))
        for row in rows:
            path = tmp_path / "a" / row["audio"]
            assert path.is_file() and path.parent.name == row["label"] in TONE_CLASSES
            assert row["text"] and "{" not in row["text"]
            mel, valid, notes = _decode(path.read_bytes())
            assert valid == 101 and notes == [] and np.isfinite(mel).all()
        assert len({row["text"] for row in rows}) > len(TONE_CLASSES)  # captions vary within a class

    write_tones(tmp_path / "b", per_class_train=3, per_class_test=2, seed=7)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    write_tones(tmp_path / "c", per_class_train=3, per_class_test=2, seed=8)
    assert (tmp_path / "c" / files[0]).read_bytes() != (tmp_path / "a" / files[0]).read_bytes()


def test_tone_classes_sound_different(tmp_path):
    """Each class's energy sits where its description says: a low hum, a high whistle, 1 kHz beeps, sweeps that go
    the stated way."""
    write_tones(tmp_path, per_class_train=2, per_class_test=0)
    centres = librosa.mel_frequencies(N_MELS + 2, fmin=0, fmax=SR / 2)[1:-1]
    for row in map(json.loads, (tmp_path / "train.jsonl").read_text().splitlines()):
        mel = _decode((tmp_path / row["audio"]).read_bytes())[0].astype(np.float32)
        peak_hz = centres[np.exp(mel).mean(axis=1).argmax()]
        if row["label"] == "hum":
            assert peak_hz < 250
        elif row["label"] == "whistle":
            assert 1800 < peak_hz < 4400
        elif row["label"] == "beeps":
            assert 800 < peak_hz < 1250
        elif row["label"] in ("rising", "falling"):
            loud = mel.max(axis=0) > mel.max() - 6  # (F,) frames inside the sweep
            pitch = mel.argmax(axis=0)[loud]  # (F',) the peak bin of each
            slope = np.polyfit(np.arange(len(pitch)), pitch, 1)[0]
            assert (slope > 0) == (row["label"] == "rising"), row
