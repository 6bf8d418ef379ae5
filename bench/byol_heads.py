"""Where BYOL's representation spreads or collapses in its first steps (issue 18, part 4): every 10 steps, for one
batch of the digits, the mean cosine between different images and the mean per-dimension std of the L2-normalised
vectors (collapse.py's `std`) of the backbone features h, the target projection z and the online prediction p.

    OMP_NUM_THREADS=1 .venv/bin/python bench/byol_heads.py 60 [KEY=VALUE ...]

The benchmark's sizes (16 px, 1 channel, ViT 96 x 2, batch 32, 300-step schedule), the recipe's AdamW and linear
warm-up, gradients clipped at 1 as the trainer does; the scikit-learn digits (8 px, upsampled to 16) as uint8."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from selfsup import config
from selfsup.objectives.build import build_objective
from selfsup.seed import seed_everything
from selfsup.train import optim

SIZES = ["image.size=16", "image.channels=1", "views.local_crops=0", "model.dim=96", "model.depth=2", "model.heads=3",
         "train.batch_size=32", "train.max_steps=300", "image.mean=[0.3091]", "image.std=[0.347]"]


def spread(x: torch.Tensor) -> str:
    """Mean cosine between different rows, and mean per-dimension std of the normalised rows, of x (B, E)."""
    n = F.normalize(x.float(), dim=1)  # (B, E)
    b = len(n)
    cos = ((n @ n.T).sum() - b) / (b * b - b)
    return f"cos {cos:.3f} std {n.std(dim=0).mean():.4f}"


def main(steps: int, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    cfg = config.load("byol", [*SIZES, *overrides])
    seed_everything(cfg.seed)
    obj = build_objective(cfg).train()
    digits = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16  # (N, 1, 8, 8) in [0, 1]
    images = (F.interpolate(digits, size=16, mode="bilinear") * 255).round().to(torch.uint8)  # (N, 1, 16, 16)
    opt = optim.build(obj, cfg.optim, torch.device("cpu"))
    g = torch.Generator().manual_seed(cfg.seed)
    for step in range(steps + 1):
        index = torch.randint(0, len(images), (cfg.train.batch_size,), generator=g)
        batch = {"images": images[index], "index": index}
        if step % 10 == 0:
            with torch.no_grad():
                v1, v2 = obj.views(batch["images"])[:2]  # (B, C, S, S) each
                both = torch.cat([v1, v2])
                h = obj.model(both)  # (2B, D)
                z = obj.target.projector(obj.target.model(both))  # (2B, E)
                p = obj.predictor(obj.projector(h))  # (2B, E)
            print(f"step {step:3d}  h {spread(h[:len(v1)])} | z {spread(z[:len(v1)])} | p {spread(p[:len(v1)])}")
        for group in opt.param_groups:
            group["lr"] = cfg.optim.lr * min(1.0, (step + 1) / cfg.sched.warmup_steps)
        out = obj(batch)
        opt.zero_grad()
        (out.loss / out.count).backward()
        torch.nn.utils.clip_grad_norm_(obj.parameters(), cfg.train.clip_grad)
        opt.step()
        obj.after_step(step + 1)
        if step % 10 == 0:
            print(f"          loss {(out.loss / out.count).item():.3f} (2 − 2·cos, both directions)")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
