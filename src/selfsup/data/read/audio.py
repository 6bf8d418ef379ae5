"""Decoding one audio file (its bytes, or its path) into a fixed-length log-mel spectrogram (or, audio.input=
waveform, the clip's samples), for the audio cache.

    mel, valid, notes = decode_audio(data, sample_rate=16000, seconds=10.0, n_mels=80, n_fft=400, hop=160,
                                     min_seconds=0.5)   # mel: float16 (80, 1001)
    wave, valid, notes = decode_audio(..., waveform=True)  # wave: float32 (1, 160000), valid: real samples

The pipeline, in order:

1. soundfile reads WAV, FLAC and OGG as float32 in [-1, 1], always (samples, channels), and only the frames the
   clip needs: a long file (a file's bytes, or the file itself) is read from its header's length around its
   centre, so an hour-long recording costs what its one-second clip costs. 'clipped' is judged on what is read.
2. Channels are averaged to mono; a file at another rate is resampled with soxr (HQ: flat to ~0.9 Nyquist,
   no audible aliasing, several times faster than a polyphase filter in numpy).
3. The clip is exactly `seconds` long: a longer file keeps its centre (its start and end are often silence or
   clicks), a shorter one is zero-padded at the end. Zeros are silence, so the padding never looks like sound;
   `valid` says how many frames cover real audio, for a mask.
4. Log-mel: a centred STFT (n_fft // 2 zeros on each side, zeros rather than librosa's reflect, again so that the
   padding stays silent), a periodic Hann window, the power spectrum |rfft|², Slaney-style mel filters as in
   librosa and Whisper, and the natural log floored at 1e-10 (−23): silence has a fixed, finite value.
5. Stored as float16: half the disk and page cache of float32, and log values in [−23, 30] keep ~3 significant
   digits, far finer than the noise in any real recording.
   A waveform row skips 4 and 5: the clip's samples as float32 (1, samples), exactly what soundfile and soxr gave,
   so an encoder that reads samples (HuBERT's) sees what transformers' feature extractor would be given.

What makes a file unusable raises `Skip(reason)` ("empty file", "corrupt audio", "too short", "silent"); what is
worth knowing but harmless comes back as notes ("mixed to mono", "resampled", "clipped", "padded", "cropped"),
which the caller counts. Everything here is module-level numpy, so worker processes can run it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
import soxr

from selfsup.data.cache.decoding import Skip
from selfsup.data.cache.stats import LogMelStats

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
SILENCE_RMS = 1e-4  # about −80 dBFS: below the noise floor of 16-bit audio, so nothing is there
CLIP_LEVEL = 0.999  # a sample this close to full scale was almost certainly clipped
CLIP_FRACTION = 1e-3  # ... and more than 0.1% of them is audible distortion, not a stray peak
LOG_FLOOR = 1e-10
MARGIN = 0.1  # seconds read past a long file's clip on each side when resampling: far wider than soxr's filter
MAX_BYTES = 4 << 30  # a file or tar member above 4 GiB (WAV's own limit) is not read (data/cache/rows.py, media.py)


@dataclass(frozen=True)
class AudioRows:
    """A row of the audio cache: float16 log-mel (n_mels, clip_frames), or with input "waveform" float32 samples
    (1, sample_rate × seconds), from a file's bytes (data/cache/rows.py)."""
    sample_rate: int
    seconds: float
    n_mels: int
    n_fft: int
    hop: int
    min_seconds: float
    input: str = "logmel"

    max_bytes = MAX_BYTES

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.input == "waveform" else np.float16)

    @property
    def shape(self) -> tuple[int, ...]:
        if self.input == "waveform":
            return (1, round(self.seconds * self.sample_rate))
        return (self.n_mels, clip_frames(self.sample_rate, self.seconds, self.hop))

    def stats(self) -> LogMelStats:
        return LogMelStats()

    def __call__(self, data: bytes | Path) -> tuple[np.ndarray, int, list[str]]:
        """(row, frames holding real audio, notes)."""
        return decode_audio(data, self.sample_rate, self.seconds, self.n_mels, self.n_fft, self.hop, self.min_seconds,
                            self.input == "waveform")


def clip_frames(sample_rate: int, seconds: float, hop: int) -> int:
    """Log-mel frames of a clip of `seconds`: centred frames, one per hop plus the one at sample 0."""
    return 1 + round(seconds * sample_rate) // hop


def decode_audio(data: bytes | Path, sample_rate: int, seconds: float, n_mels: int, n_fft: int, hop: int,
                 min_seconds: float, waveform: bool = False) -> tuple[np.ndarray, int, list[str]]:
    """(log-mel float16 (n_mels, clip_frames), frames covering real audio, notes) of a file's bytes or of the file
    itself (only the frames the clip needs are read); raises Skip for unusable files. waveform: (float32 samples
    (1, n), real samples, notes) instead."""
    if not data:
        raise Skip("empty file")
    n = round(seconds * sample_rate)
    try:
        with soundfile.SoundFile(io.BytesIO(data) if isinstance(data, bytes) else data) as f:
            rate = f.samplerate
            start, count, first = _window(f.frames, rate, sample_rate, n, max(n, round(min_seconds * sample_rate)))
            f.seek(start)
            x = f.read(count, dtype="float32", always_2d=True)  # (T, C): the clip and a margin, or the whole file
    except Exception:  # libsndfile reports malformed data as several kinds of error
        raise Skip("corrupt audio") from None
    if x.shape[0] == 0 or not np.isfinite(x).all():
        raise Skip("corrupt audio")
    notes = []
    if np.mean(np.abs(x) >= CLIP_LEVEL) > CLIP_FRACTION:  # on the raw samples: mixing and resampling hide it
        notes.append("clipped")
    if x.shape[1] > 1:
        notes.append("mixed to mono")
    x = x.mean(axis=1, dtype=np.float32)  # (T,)
    if rate != sample_rate:
        x = soxr.resample(x, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
        notes.append("resampled")
    cropped = first is not None or len(x) > n
    if first is None:  # the whole file was read
        if len(x) < round(min_seconds * sample_rate):
            raise Skip("too short")
        first = max(0, (len(x) - n) // 2)
    x = x[first:first + n]
    if cropped:
        notes.append("cropped")
    real = len(x)
    if np.sqrt(np.mean(np.square(x, dtype=np.float64))) < SILENCE_RMS:  # the kept part only, before padding
        raise Skip("silent")
    if real < n:
        x = np.pad(x, (0, n - real))
        notes.append("padded")
    if waveform:
        return x[None], real, notes

    frames = clip_frames(sample_rate, seconds, hop)
    valid = min(frames, 1 + real // hop)
    return log_mel(x, sample_rate, n_mels, n_fft, hop).astype(np.float16), valid, notes


def _window(total: int, rate: int, sample_rate: int, n: int, whole: int) -> tuple[int, int, int | None]:
    """What to read of a file of `total` frames at `rate` to keep the centre `n` samples at `sample_rate`:
    (first frame, frame count, where the clip starts in what was read, once resampled). A file no longer than
    `whole` samples at `sample_rate` is read whole ((0, -1, None)). Otherwise the read starts on a frame both rates
    share (a multiple of `step`), so the resampled window lines up sample for sample with the whole file
    resampled, and reaches MARGIN seconds past the clip on each side, beyond the resampler's filter."""
    length = total if rate == sample_rate else round(total * sample_rate / rate)  # at sample_rate, as soxr makes it
    if length <= whole:
        return 0, -1, None
    first = (length - n) // 2  # the clip's first sample at sample_rate: the centre of the file
    if rate == sample_rate:
        return first, n, 0
    common = gcd(rate, sample_rate)
    step, margin = rate // common, round(MARGIN * rate)
    start = max(0, first * rate // sample_rate - margin) // step * step
    stop = min(total, -(-(first + n) * rate // sample_rate) + margin)
    return start, stop - start, first - start // step * (sample_rate // common)


def log_mel(x: np.ndarray, sample_rate: int, n_mels: int, n_fft: int, hop: int) -> np.ndarray:
    """Natural-log mel power of a mono signal (T,): float32 (n_mels, 1 + T // hop), frames centred on t * hop."""
    frames = 1 + len(x) // hop
    # zeros, not reflect: padding is silence. The right side gets the odd sample when n_fft is odd, so that every
    # frame fits and the count stays 1 + T // hop.
    padded = np.pad(x.astype(np.float32, copy=False), (n_fft // 2, n_fft - n_fft // 2))  # (T + n_fft,)
    windows = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:frames]  # (F, n_fft), a view
    spectrum = np.fft.rfft(windows * hann(n_fft), axis=-1)  # (F, n_fft // 2 + 1) complex
    power = spectrum.real ** 2 + spectrum.imag ** 2  # (F, K)
    mel = mel_filters(sample_rate, n_fft, n_mels) @ power.T  # (n_mels, K) @ (K, F) -> (n_mels, F)
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32, copy=False)


@lru_cache(maxsize=8)
def hann(n_fft: int) -> np.ndarray:
    """Periodic Hann (n_fft,): the STFT convention (scipy's fftbins=True), so overlapped windows sum flat."""
    w = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    w.flags.writeable = False  # shared by every call through the cache
    return w


@lru_cache(maxsize=8)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney mel filter bank (n_mels, n_fft // 2 + 1), float32, as librosa's defaults and Whisper use."""
    import librosa.filters  # imported here: librosa takes a second to import, and only this needs it

    m = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sample_rate / 2,
                            htk=False, norm="slaney").astype(np.float32)
    m.flags.writeable = False  # shared by every call through the cache
    return m
