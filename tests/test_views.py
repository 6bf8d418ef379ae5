"""Image views (kornia augmentations, multi-crop, the evaluation view) and patch masking (MAE, BEiT)."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.seed import seed_everything
from selfsup.views.augment import Augment, MultiView, blur_kernel, center_view
from selfsup.views.patch_masking import block_mask, default_min_patches, random_masking

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
MEAN1, STD1 = (0.5,), (0.25,)
OFF = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


def images(channels: int = 3, side: int = 32, batch: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, side, side), dtype=torch.uint8, generator=g)


# ---- augmentations


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_shapes_and_dtype(channels, dtype):
    mean, std = (MEAN1, STD1) if channels == 1 else (MEAN3, STD3)
    x = images(channels)
    x = x if dtype == torch.uint8 else x.float() / 255
    out = Augment(24, (0.2, 1.0), mean, std, solarize_p=0.2)(x)
    assert out.shape == (8, channels, 24, 24) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("side", [32, 40])  # the same size, and an upscale (where antialiasing does nothing)
def test_augment_without_randomness_is_the_center_view(side):
    x = images(3)
    aug = Augment(side, (1.0, 1.0), MEAN3, STD3, **OFF)
    torch.testing.assert_close(aug(x), center_view(x, side, MEAN3, STD3))


def test_center_view_normalises_per_channel_and_crops_the_centre():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8)[None, :, None, None].expand(2, 3, 16, 16)
    out = center_view(x, 8, MEAN3, STD3)
    expected = (torch.tensor([0, 128, 255]) / 255 - torch.tensor(MEAN3)) / torch.tensor(STD3)
    torch.testing.assert_close(out, expected[None, :, None, None].expand(2, 3, 8, 8))
    wide = images(3, side=32)[..., :24, :]  # (B, 3, 24, 32): shorter side already 24, 4 columns cut each side
    torch.testing.assert_close(center_view(wide, 24, MEAN3, STD3), center_view(wide[..., 4:28], 24, MEAN3, STD3))
    assert torch.equal(center_view(x.float() / 255, 8, MEAN3, STD3), out)  # float input in [0, 1] too


def test_solarize_inverts_above_half():
    x = images(1)
    out = Augment(32, (1.0, 1.0), MEAN1, STD1, **{**OFF, "solarize_p": 1.0})(x)
    u = x.float() / 255
    torch.testing.assert_close(out, (torch.where(u >= 0.5, 1 - u, u) - 0.5) / 0.25)


def test_single_channel_keeps_brightness_and_contrast_only():
    stages = Augment(32, (0.2, 1.0), MEAN1, STD1).describe()
    assert stages["jitter"] == (0.4, 0.4, 0.0, 0.0) and stages["grayscale_p"] == 0.0
    assert "ColorJitter" in stages["stages"] and "RandomGrayscale" not in stages["stages"]


def test_stages_that_cannot_act_are_not_built():
    full = Augment(32, (0.2, 1.0), MEAN3, STD3, solarize_p=0.2).describe()["stages"]
    assert full == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale",
                    "RandomGaussianBlur", "RandomSolarize", "Normalize"]
    assert Augment(32, (0.2, 1.0), MEAN3, STD3, **OFF).describe()["stages"] == ["RandomResizedCrop", "Normalize"]
    no_strength = Augment(32, (0.2, 1.0), MEAN3, STD3, jitter=(0, 0, 0, 0)).describe()["stages"]
    assert "ColorJitter" not in no_strength and "RandomGaussianBlur" in no_strength
    assert len(Augment(32, (0.2, 1.0), MEAN3, STD3, **OFF).pipeline) == 2


def test_describe_and_repr_show_the_settings():
    aug = Augment(96, (0.05, 0.4), MEAN3, STD3, blur_p=1.0)
    d = aug.describe()
    assert d["size"] == 96 and d["scale"] == (0.05, 0.4) and d["blur_p"] == 1.0 and d["blur_kernel"] == 9
    assert "scale=(0.05, 0.4)" in repr(aug) and "blur_p=1.0" in repr(aug)
    assert (blur_kernel(224), blur_kernel(32), blur_kernel(10)) == (23, 3, 3)  # SimCLR's 23 at 224; odd, >= 3


def test_views_differ_and_a_seed_repeats_them():
    x = images(3)
    views = MultiView.build(32, MEAN3, STD3, global_scale=(0.2, 1.0))
    seed_everything(1)
    a1, a2 = views(x)
    assert not torch.allclose(a1, a2)
    seed_everything(1)
    b1, b2 = views(x)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    state = torch.get_rng_state()  # a checkpoint's RNG state resumes the same stream
    c = views(x)
    torch.set_rng_state(state)
    assert all(torch.equal(p, q) for p, q in zip(c, views(x)))


def test_multiview_global_and_local_crops():
    x = images(3, side=64, batch=4)
    views = MultiView.build(64, MEAN3, STD3, global_scale=(0.4, 1.0), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2),
                            n_local=3, local_size=24)
    out = views(x)
    assert [v.shape for v in out] == [(4, 3, 64, 64)] * 2 + [(4, 3, 24, 24)] * 3
    d = views.describe()
    assert [g["blur_p"] for g in d["global"]] == [1.0, 0.1] and [g["solarize_p"] for g in d["global"]] == [0.0, 0.2]
    assert "RandomSolarize" in d["global"][1]["stages"] and "RandomSolarize" not in d["global"][0]["stages"]
    assert d["local"]["scale"] == (0.05, 0.4) and d["n_local"] == 3
    assert not torch.allclose(out[2], out[3])  # each local crop is drawn anew
    with pytest.raises(ValueError, match="one entry per global view"):
        MultiView.build(32, MEAN3, STD3, blur_p=(1.0, 0.1), solarize_p=(0.0,))


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="one value per channel"):
        Augment(32, (0.2, 1.0), (0.5, 0.5), (0.2, 0.2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        Augment(32, (0.2, 1.0), MEAN3, STD3)(images(1))


# ---- MAE random masking


def test_random_masking_counts_and_consistency():
    g = torch.Generator().manual_seed(0)
    keep, mask, restore = random_masking(16, 49, 0.75, "cpu", generator=g)
    assert keep.shape == (16, 12) and keep.dtype == torch.int64 and restore.dtype == torch.int64
    assert mask.shape == (16, 49) and mask.dtype == torch.bool
    assert (mask.sum(1) == 49 - 12).all()
    assert not mask.gather(1, keep).any()  # every kept patch is visible
    assert (restore.sort(1).values == torch.arange(49)).all()  # a permutation per row
    assert len({tuple(row.tolist()) for row in mask}) == 16  # rows are masked differently
    assert random_masking(2, 10, 0.9, "cpu")[0].shape == (2, 1)  # 10 × (1 - 0.9) is 0.999..., still one kept


def test_random_masking_restore_puts_tokens_back():
    g = torch.Generator().manual_seed(1)
    B, T, D = 4, 16, 3
    x = torch.randn(B, T, D)
    keep, mask, restore = random_masking(B, T, 0.5, "cpu", generator=g)
    shuffle = restore.argsort(1)  # (B, T): the shuffle MAE sorts the noise into
    assert torch.equal(shuffle[:, :keep.shape[1]], keep)
    shuffled = x.gather(1, shuffle[..., None].expand(-1, -1, D))  # [visible ; hidden] as MAE's decoder sees them
    torch.testing.assert_close(shuffled.gather(1, restore[..., None].expand(-1, -1, D)), x, rtol=0, atol=0)
    visible = x.gather(1, keep[..., None].expand(-1, -1, D))  # (B, T_keep, D)
    tokens = torch.cat([visible, torch.full((B, T - keep.shape[1], D), 9.0)], 1)  # mask tokens of 9
    back = tokens.gather(1, restore[..., None].expand(-1, -1, D))  # (B, T, D)
    assert (back[mask] == 9.0).all() and torch.equal(back[~mask], x[~mask])


def test_random_masking_randomness_source():
    a = random_masking(4, 16, 0.5, "cpu", generator=torch.Generator().manual_seed(3))
    b = random_masking(4, 16, 0.5, "cpu", generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    seed_everything(3)
    c = random_masking(4, 16, 0.5, "cpu")
    seed_everything(3)
    assert torch.equal(c[1], random_masking(4, 16, 0.5, "cpu")[1])


# ---- BEiT block masking


def one_rectangle(grid_mask: torch.Tensor) -> bool:
    """grid_mask: (H, W) bool; True when its True cells fill their bounding box exactly."""
    rows, cols = grid_mask.nonzero(as_tuple=True)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    return bool(box == grid_mask.sum())


@pytest.mark.parametrize("grid, ratio", [((14, 14), 0.4), ((14, 14), 0.75), ((8, 8), 0.5), ((4, 4), 0.5)])
def test_block_mask_reaches_the_target_and_stops(grid, ratio):
    H, W = grid
    mask = block_mask(64, grid, ratio, "cpu", generator=torch.Generator().manual_seed(0))
    assert mask.shape == (64, H * W) and mask.dtype == torch.bool
    target = math.ceil(ratio * H * W)
    # the last block is drawn with area <= max(min_patches, what is left); rounding its sides adds < (H + W) / 2
    overshoot = default_min_patches(grid) + (H + W) // 2
    assert (mask.sum(1) >= target).all() and (mask.sum(1) < target + overshoot).all()
    assert len({tuple(row.tolist()) for row in mask}) >= 48  # a 4 × 4 grid has few masks, so some repeat


def test_block_mask_is_made_of_blocks():
    g = torch.Generator().manual_seed(2)
    single = block_mask(32, (8, 8), 1 / 64, "cpu", min_patches=6, generator=g).view(32, 8, 8)  # one block each
    assert all(one_rectangle(m) for m in single)
    assert ((single.sum((1, 2)) >= 4) & (single.sum((1, 2)) <= 9)).all()  # area 6, sides rounded
    # blocks of >= 16 patches leave no masked patch without a masked neighbour, unlike patches drawn one by one
    mask = block_mask(32, (14, 14), 0.4, "cpu", generator=g).view(32, 1, 14, 14).float()
    neighbours = torch.nn.functional.conv2d(mask, torch.tensor([[[[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]]]), padding=1)
    assert (neighbours[mask.bool()] > 0).all()


def test_block_mask_edge_ratios_and_randomness():
    full = block_mask(16, (4, 4), 0.99, "cpu", generator=torch.Generator().manual_seed(0))
    assert full.all()  # ratio near 1 on a tiny grid terminates, with every patch hidden
    assert not block_mask(4, (4, 4), 0.0, "cpu").any()
    assert block_mask(4, (4, 4), 0.9, "cpu", min_patches=16, max_rounds=1).sum(1).min() >= 15  # filled after the cap
    a = block_mask(8, (8, 8), 0.5, "cpu", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, block_mask(8, (8, 8), 0.5, "cpu", generator=torch.Generator().manual_seed(5)))
    seed_everything(5)
    b = block_mask(8, (8, 8), 0.5, "cpu")
    seed_everything(5)
    assert torch.equal(b, block_mask(8, (8, 8), 0.5, "cpu"))
    assert (default_min_patches((14, 14)), default_min_patches((8, 8)), default_min_patches((4, 4))) == (16, 5, 1)
