"""What a media tower reads, per modality: the training view and the deterministic evaluation view of a batch of
cached rows, as one module that follows `.train()` / `.eval()`.

    ImageView  (B, C, H, W) uint8 -> (B, C, S, S): random resized crop + flip in training, the centre view in eval
    AudioView  (B, M, F) float16 log-mel -> (B, M, F) normalised by the training set's mean and std; waveform
               (B, 1, S) float32 samples -> (B, S), each clip to zero mean and unit variance over its real samples
               and zero after them (Wav2Vec2FeatureExtractor's do_normalize)
    VideoView  (B, F', C, S, S) uint8, F' cached frames at segment centres -> (B, T, C, S, S) normalised; training
               picks one frame at random from each of T segments (TSN), evaluation the middle of each segment
Each returns the tower's positional arguments as a tuple.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from selfsup.views.augment import Augment, center_view, to_unit


class ImageView(nn.Module):
    def __init__(self, augment: Augment, size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.augment, self.size, self.mean, self.std = augment, size, list(mean), list(std)

    def forward(self, images: Tensor, lengths: Tensor | None = None) -> tuple[Tensor]:
        if self.training:
            return (self.augment(images),)
        return (center_view(images, self.size, self.mean, self.std),)


class AudioView(nn.Module):
    def __init__(self, mean: float, std: float, waveform: bool = False):
        super().__init__()
        self.mean, self.std, self.waveform = mean, std, waveform

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if self.waveform:
            return normalise_clips(mel.float().flatten(1), lengths), lengths
        return (mel.float() - self.mean) / self.std, lengths


def normalise_clips(x: Tensor, lengths: Tensor | None) -> Tensor:
    """(B, S) samples, (B,) real samples -> (B, S): (x − mean) / sqrt(var + 1e-7) over each clip's real samples,
    zeros after them, as transformers' zero_mean_unit_var_norm (its variance divides by n)."""
    real = torch.ones_like(x, dtype=torch.bool) if lengths is None else \
        torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, S)
    n = real.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    mean = torch.where(real, x, 0).sum(dim=1, keepdim=True) / n
    var = torch.where(real, (x - mean) ** 2, 0).sum(dim=1, keepdim=True) / n
    return torch.where(real, (x - mean) / torch.sqrt(var + 1e-7), 0)  # (B, S)


class VideoView(nn.Module):
    def __init__(self, frames: int, sampling: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.frames, self.sampling = frames, sampling
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 1, -1, 1, 1), persistent=False)

    def forward(self, clips: Tensor, lengths: Tensor | None = None) -> tuple[Tensor]:
        B, cached = clips.shape[:2]
        per = cached // self.frames  # cached frames per segment
        start = torch.arange(self.frames, device=clips.device) * per  # (T,)
        if self.training and self.sampling == "segment":
            pick = start + torch.randint(per, (B, self.frames)).to(clips.device)  # (B, T)
        else:
            pick = (start + per // 2).expand(B, -1)  # (B, T)
        x = clips[torch.arange(B, device=clips.device)[:, None], pick]  # (B, T, C, S, S)
        return ((to_unit(x) - self.mean) / self.std,)
