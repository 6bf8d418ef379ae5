"""Which patches of an image grid a masked-image-modelling objective hides, drawn for a whole batch at once.

`random_masking` is MAE's (He et al. 2021, models_mae.py): sort per-sample uniform noise, keep the first
T_keep patches of the shuffle, and keep the inverse permutation so the decoder can put [visible ; mask tokens]
back in patch order. `block_mask` is BEiT's block-wise masking (Bao et al. 2021, Algorithm 1): union random
rectangles until enough patches are hidden, so the model cannot fill a patch in from its visible neighbours.
Draws come from `generator` when given, else from batch_random.py (this process's rows of the global
batch's draw: the same mask for a sample on any number of processes).

Letters in shape comments: B batch, T patches (H·W, row-major as a patch embedding flattens them), H, W grid.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from selfsup import batch_random

EPS = 1e-9  # ratios are decimals: 10 × (1 - 0.9) is 0.99999..., which int() would make 0 instead of 1


def _uniform(shape: tuple[int, ...], device, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) noise, drawn where the generator lives (a CPU generator cannot fill a GPU tensor)."""
    if generator is None:
        return batch_random.rand(shape, device)
    return torch.rand(shape, device=generator.device, generator=generator).to(device)


def random_masking(batch: int, tokens: int, ratio: float, device,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking of `ratio` of `tokens` patches, the same count in every row.

    Returns keep (B, T_keep) int64, the visible patches in shuffle order, T_keep = int(T × (1 - ratio));
    mask (B, T) bool, True where hidden, in patch order; restore (B, T) int64, the inverse of the shuffle:
    `torch.cat([visible, mask_tokens], 1).gather(1, restore[..., None].expand(-1, -1, D))` is in patch order.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    n_keep = int(tokens * (1 - ratio) + EPS)
    noise = _uniform((batch, tokens), device, generator)  # (B, T)
    shuffle = noise.argsort(dim=1)  # (B, T): ascending noise, the first n_keep are kept
    restore = shuffle.argsort(dim=1)  # (B, T): where each patch went in the shuffle
    keep = shuffle[:, :n_keep]  # (B, T_keep)
    mask = torch.ones(batch, tokens, dtype=torch.bool, device=device)  # (B, T) in shuffle order
    mask[:, :n_keep] = False
    return keep, mask.gather(1, restore), restore


def default_min_patches(grid: tuple[int, int]) -> int:
    """BEiT's smallest block is 16 patches on its 14 × 14 grid, 8% of it; smaller grids keep that fraction
    (5 on 8 × 8, 1 on 4 × 4), where 16 would be a quarter of 8 × 8 and all of 4 × 4 and leave no room for the
    random shapes that make the task; larger grids keep 16 as BEiT does."""
    return max(1, min(16, round(16 * grid[0] * grid[1] / 196)))


def block_mask(batch: int, grid: tuple[int, int], ratio: float, device, *, min_patches: int | None = None,
               aspect: tuple[float, float] = (0.3, 1 / 0.3), generator: torch.Generator | None = None,
               max_rounds: int = 100) -> Tensor:
    """BEiT's block-wise masking: (B, H·W) bool, True where hidden, at least ceil(ratio × H·W) per row.

    Each round draws one block per unfinished row: area s uniform in [min_patches, what is left to mask]
    (min_patches once less is left), aspect r log-uniform in `aspect`, a = round(sqrt(s·r)) rows by
    b = round(sqrt(s/r)) columns (cut to the grid) at a uniform position, and unions it into the row's mask.
    A row stops once it reaches the target, so it overshoots by less than its last block. All rows are drawn
    together, on the CPU (the loop's exit test would wait on the GPU every round), and moved to `device` at
    the end. After max_rounds, which a row meets only when tiny gaps are left (ratio near 1), the rest are
    filled with single patches at random, so a call always ends with the target met.
    """
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    H, W = grid
    shared = generator is None  # rounds depend on every row: the whole global batch is drawn, own rows kept
    if shared:
        batch, mine = batch_random.rows(batch)
        generator = batch_random.generator
    target = math.ceil(ratio * H * W - EPS)
    low = min_patches if min_patches is not None else default_min_patches(grid)
    log_aspect = torch.tensor(aspect, dtype=torch.float64).log()
    where = generator.device
    rows = torch.arange(H, device=where)[None, :, None]  # (1, H, 1)
    cols = torch.arange(W, device=where)[None, None, :]  # (1, 1, W)
    mask = torch.zeros(batch, H, W, dtype=torch.bool, device=where)  # (B, H, W)
    count = torch.zeros(batch, dtype=torch.long, device=where)  # (B,)
    for _ in range(max_rounds):
        active = count < target  # (B,)
        if not active.any():
            break
        u = torch.rand(batch, 4, dtype=torch.float64, device=where, generator=generator)  # (B, 4)
        high = (target - count).clamp(min=low)  # (B,)
        area = low + u[:, 0] * (high - low)  # (B,)
        r = (log_aspect[0] + u[:, 1] * (log_aspect[1] - log_aspect[0])).exp()  # (B,)
        a = (area * r).sqrt().round().long().clamp(1, H)  # (B,) rows
        b = (area / r).sqrt().round().long().clamp(1, W)  # (B,) columns
        top = (u[:, 2] * (H - a + 1)).long()  # (B,) uniform in [0, H - a]
        left = (u[:, 3] * (W - b + 1)).long()  # (B,)
        block = ((rows >= top[:, None, None]) & (rows < (top + a)[:, None, None])
                 & (cols >= left[:, None, None]) & (cols < (left + b)[:, None, None]))  # (B, H, W)
        mask |= block & active[:, None, None]
        count = mask.sum(dim=(1, 2))
    mask = mask.flatten(1)  # (B, T)
    short = (target - count).clamp(min=0)  # (B,)
    if short.any():  # a random rank among each row's visible patches; hide the `short` first ones
        noise = torch.rand(mask.shape, device=where, generator=generator).masked_fill(mask, 2.0)  # (B, T)
        rank = noise.argsort(dim=1).argsort(dim=1)  # (B, T)
        mask |= rank < short[:, None]
    return (mask[mine] if shared else mask).to(device)
