"""Batched image augmentations for the joint-embedding objectives (SimCLR, MoCo, BYOL, DINO), run on the
training device with kornia so a batch of uint8 images becomes its views in a few kernels, not a per-image
PIL loop in the data workers.

The pipeline is SimCLR's (Chen et al. 2020, appendix A) as BYOL and DINO use it: random resized crop ->
horizontal flip -> colour jitter -> random grayscale -> Gaussian blur -> solarize -> normalise. A stage whose
probability or strength is 0 is not built at all, so it costs nothing and `describe()` shows what runs.
Every draw comes from torch's global generator (kornia samples its parameters there, on the CPU, whatever
the images' device), so a seeded run is reproducible and a checkpoint of the RNG state resumes it.

Letters in shape comments: B batch, C channels (1 or 3), H, W input height and width, S output side.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.enhance import normalize
from torch import Tensor, nn

RATIO = (3 / 4, 4 / 3)  # aspect ratios of the crop, as torchvision's RandomResizedCrop


def to_unit(images: Tensor) -> Tensor:
    """uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]; kornia works on floats only."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def blur_kernel(size: int) -> int:
    """SimCLR's kernel side: 10% of the image side, odd (23 at 224), and at least 3 so small images blur too."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


class Augment(nn.Module):
    """One random view: (B, C, H, W) uint8 or float in [0, 1] -> (B, C, size, size) float32, normalised.

    jitter is (brightness, contrast, saturation, hue) as torchvision's ColorJitter. The number of channels
    is len(mean); a single channel keeps brightness and contrast but drops saturation, hue and grayscale,
    which need RGB.
    """

    def __init__(self, size: int, scale: tuple[float, float], mean: Sequence[float], std: Sequence[float], *,
                 flip_p: float = 0.5, jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
                 jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5,
                 blur_sigma: tuple[float, float] = (0.1, 2.0), solarize_p: float = 0.0):
        super().__init__()
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean and std need one value per channel (1 or 3), got {len(mean)} and {len(std)}")
        self.channels = len(mean)
        rgb = self.channels == 3
        jitter = tuple(jitter) if rgb else (jitter[0], jitter[1], 0.0, 0.0)
        grayscale_p = grayscale_p if rgb else 0.0
        self.settings = dict(size=size, scale=tuple(scale), ratio=RATIO, flip_p=flip_p, jitter=jitter,
                             jitter_p=jitter_p, grayscale_p=grayscale_p, blur_p=blur_p, blur_sigma=tuple(blur_sigma),
                             blur_kernel=blur_kernel(size), solarize_p=solarize_p, mean=tuple(mean), std=tuple(std))
        # align_corners=False resamples on the half-pixel grid, as torchvision and F.interpolate do
        stages: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=scale, ratio=RATIO, align_corners=False)]
        if flip_p > 0:
            stages.append(K.RandomHorizontalFlip(p=flip_p))
        if jitter_p > 0 and any(jitter):
            stages.append(K.ColorJitter(*jitter, p=jitter_p))
        if grayscale_p > 0:
            stages.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            k = blur_kernel(size)
            stages.append(K.RandomGaussianBlur((k, k), blur_sigma, p=blur_p))
        if solarize_p > 0:  # a fixed threshold of 0.5 and no addition, as BYOL: x >= 0.5 becomes 1 - x
            stages.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
        stages.append(K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std)))
        self.pipeline = nn.Sequential(*stages)

    def describe(self) -> dict:
        """The settings that run, and the kornia stages built from them, for recipes and run reports."""
        return {**self.settings, "stages": [type(m).__name__ for m in self.pipeline]}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items())

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, S, S)
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected images (B, {self.channels}, H, W), got {tuple(images.shape)}")
        return self.pipeline(to_unit(images))


class MultiView(nn.Module):
    """Several views of each image: [global_1, ..., global_G, local_1, ..., local_N], each (B, C, S, S).

    The global views may differ (BYOL's asymmetric pair); the N local views share one Augment with a smaller
    size and crop scale (DINO's multi-crop). Build it from Augments, or with `MultiView.build` for the usual
    recipes.
    """

    def __init__(self, views: Sequence[Augment], local: Augment | None = None, n_local: int = 0):
        super().__init__()
        if n_local > 0 and local is None:
            raise ValueError("n_local > 0 needs a local Augment")
        self.views = nn.ModuleList(views)
        self.local = local if n_local > 0 else None
        self.n_local = n_local

    @classmethod
    def build(cls, size: int, mean: Sequence[float], std: Sequence[float], *,
              global_scale: tuple[float, float] = (0.08, 1.0), blur_p: Sequence[float] = (0.5, 0.5),
              solarize_p: Sequence[float] = (0.0, 0.0),
              jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1), jitter_p: float = 0.8,
              grayscale_p: float = 0.2, flip_p: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0),
              n_local: int = 0, local_size: int | None = None, local_scale: tuple[float, float] = (0.05, 0.4),
              local_blur_p: float = 0.5) -> MultiView:
        """One global view per entry of blur_p and solarize_p, the rest of the settings shared.

        SimCLR / MoCo v2: blur_p (0.5, 0.5), solarize_p (0, 0). BYOL / MoCo v3: blur_p (1.0, 0.1),
        solarize_p (0.0, 0.2). DINO: as BYOL with global_scale (0.4, 1), n_local crops at local_scale
        (0.05, 0.4) and local_size (96 at 224; by default the same 3/7 of size), blurred with local_blur_p.
        """
        if len(blur_p) != len(solarize_p):
            raise ValueError(f"blur_p and solarize_p need one entry per global view, got {blur_p} and {solarize_p}")
        shared = dict(mean=mean, std=std, flip_p=flip_p, jitter=jitter, jitter_p=jitter_p,
                      grayscale_p=grayscale_p, blur_sigma=blur_sigma)
        views = [Augment(size, global_scale, blur_p=b, solarize_p=s, **shared) for b, s in zip(blur_p, solarize_p)]
        local = None
        if n_local > 0:
            local = Augment(local_size or round(size * 3 / 7), local_scale, blur_p=local_blur_p, **shared)
        return cls(views, local, n_local)

    def describe(self) -> dict:
        return {"global": [v.describe() for v in self.views],
                "local": self.local.describe() if self.local is not None else None, "n_local": self.n_local}

    def forward(self, images: Tensor) -> list[Tensor]:  # (B, C, H, W) -> G + N views, each (B, C, S, S)
        views = [view(images) for view in self.views]
        return views + [self.local(images) for _ in range(self.n_local)]


def center_view(images: Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The deterministic view for evaluation and embedding: (B, C, H, W) uint8 or float in [0, 1] ->
    (B, C, size, size) float32 normalised. The shorter side is resized to size (bilinear, antialiased as PIL)
    and the centre square kept, so a non-square image is cropped, not squashed; a square one is just resized.
    """
    x = to_unit(images)  # (B, C, H, W)
    H, W = x.shape[-2:]
    h, w = (size, max(size, round(W * size / H))) if H <= W else (max(size, round(H * size / W)), size)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)  # (B, C, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top:top + size, left:left + size]  # (B, C, S, S)
    return normalize(x, torch.tensor(mean, device=x.device), torch.tensor(std, device=x.device))
