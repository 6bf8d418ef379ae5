"""Normalisation statistics of training rows, measured while a cache is built (data/cache/rows.py) or on the head
of the streamed shards (data/stream/prepare.py).

    stats = PixelStats(3); stats.add(rows, lengths); mean, std = stats.result()   # per channel, in [0, 1] units

Pixels (images, video frames) are counted per channel and value, so mean and std are exact whatever the number
of rows; log-mel rows give one mean and std over the frames that hold real audio (not the padding).
"""

from __future__ import annotations

import numpy as np


class PixelStats:
    """Per-channel mean/std of uint8 rows (k, C, S, S) or (k, F, C, S, S): video frames count like images."""

    def __init__(self, channels: int):
        self.hist = np.zeros((channels, 256), np.int64)  # pixel values per channel

    def add(self, rows: np.ndarray, lengths: np.ndarray) -> None:
        pixels = rows.reshape(-1, *rows.shape[-3:])  # (k·F, C, S, S)
        for c in range(self.hist.shape[0]):
            self.hist[c] += np.bincount(pixels[:, c].ravel(), minlength=256)

    def result(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std in [0, 1] units: exact, in two passes over the 256 bins."""
        values = np.arange(256) / 255
        n = self.hist.sum(1)  # (C,)
        mean = self.hist @ values / n
        std = np.sqrt((self.hist * (values[None] - mean[:, None]) ** 2).sum(1) / n)
        return mean.tolist(), std.tolist()


class LogMelStats:
    """One mean/std over the real (unpadded) frames of float16 log-mel rows (k, n_mels, frames), or the real samples of
    waveform rows (k, 1, samples)."""

    def __init__(self):
        self.sums = np.zeros(3)  # count, Σx, Σx²

    def add(self, rows: np.ndarray, lengths: np.ndarray) -> None:
        for row, n in zip(rows, lengths):
            x = row[:, :n].astype(np.float64)
            self.sums += (x.size, x.sum(), (x * x).sum())

    def result(self) -> tuple[float, float]:
        n, s, ss = self.sums
        mean = s / max(n, 1)
        return float(mean), float(np.sqrt(max(ss / max(n, 1) - mean * mean, 1e-12)))
