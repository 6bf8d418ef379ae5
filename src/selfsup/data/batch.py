"""The batch: what a loader gives and an objective reads, one TypedDict per kind of data, every key in one place.

B is the micro-batch of one process. Loaders make them on the CPU; the trainer moves every tensor to the device.
`index` is a sample's row in its split (DeepCluster's pseudo-labels are per training row); a streamed sample's
index is its global sample number instead.
"""

from __future__ import annotations

from typing import Union

from torch import Tensor
from typing_extensions import NotRequired, TypedDict


class TextBatch(TypedDict):
    tokens: Tensor  # (B, T) int64 packed windows of model.context (+ the objective's window_overlap) token ids
    labels: NotRequired[Tensor]  # (B, T) int64 targets, IGNORE where none (perplexity's padded last window; CLM)
    pad_mask: NotRequired[Tensor]  # (B, T) bool, True on real tokens (texts of several lengths, right-padded)


class ImageBatch(TypedDict):
    images: Tensor  # (B, C, S, S) uint8, decoded and resized once (data/cache/images.py)
    index: Tensor  # (B,) int64


class ClipBatch(TypedDict):
    """Audio clips on their own (HuBERT)."""
    media: Tensor  # (B, M, F) float16 log-mel frames, or (B, 1, S) float32 samples (audio.input=waveform)
    lengths: Tensor  # (B,) int32 real frames or samples (the rest is padding)
    index: Tensor  # (B,) int64


class PairBatch(TypedDict):
    """A media sample and its caption (CLIP, SigLIP, CLAP, video-text)."""
    media: Tensor  # images (B, C, S, S) uint8, clips (B, M, F) float16 or videos (B, N, C, S, S) uint8
    lengths: Tensor  # (B,) int32: real frames of a clip (images and videos: unused)
    text: Tensor  # (B, L) int64 caption ids, right-padded
    text_mask: Tensor  # (B, L) bool, True on caption tokens
    index: Tensor  # (B,) int64


Batch = Union[TextBatch, ImageBatch, ClipBatch, PairBatch]
