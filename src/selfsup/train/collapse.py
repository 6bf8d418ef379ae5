"""The collapse monitor: how spread out an objective's representations are, read every few steps from the
embeddings of two views of the same images.

    rankme      effective rank of the backbone features: exp of the entropy of the normalised singular values of
                the centred batch (Garrido et al. 2023); between 1 (one direction) and min(B, D)
    std         mean over dimensions of the per-dimension std of the L2-normalised projections the loss compares
                (SimSiam's collapse indicator): 1/sqrt(E) when they spread evenly, 0 when every image maps to one
                point
    alignment   mean squared distance between the two views' normalised projections (Wang & Isola 2020); 0 is
                perfect invariance
    uniformity  log of the mean Gaussian potential exp(−2‖x − y‖²) over pairs of images; lower is more uniform

std, alignment and uniformity are read on the projections because that is where the loss acts and where these
measures are defined; backbone features of a healthy model often share a large mean direction, which would make
them look collapsed. Objectives without projections (MAE, BEiT, DeepCluster) report them on the backbone
features, for information only. A warning is raised when the effective rank falls below 2 (or 2% of its
maximum), or the projections' std below a tenth of 1/sqrt(E): the usual signs of dimensional and complete collapse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def collapse_metrics(embeddings: tuple[Tensor, ...], projections: tuple[Tensor, ...] = ()) -> dict[str, float]:
    """embeddings: one or two (B, D) backbone features; projections: one or two (B, E) projections, or ()
    (two views of the same B images each)."""
    x = embeddings[0].float()
    singular = torch.linalg.svdvals(x - x.mean(dim=0))  # (min(B, D),)
    p = singular / singular.sum().clamp(min=1e-12) + 1e-12
    views = projections or embeddings
    z = F.normalize(views[0].float(), dim=1)  # (B, E)
    out = dict(rankme=math.exp(-(p * p.log()).sum().item()), std=z.std(dim=0).mean().item())
    if len(views) > 1:
        out["alignment"] = (z - F.normalize(views[1].float(), dim=1)).pow(2).sum(dim=1).mean().item()
    out["uniformity"] = torch.pdist(z).pow(2).mul(-2).exp().mean().log().item()
    return out


def collapse_warning(metrics: dict[str, float], embeddings: tuple[Tensor, ...],
                     projections: tuple[Tensor, ...] = ()) -> str | None:
    """A sentence for the log when the readings look collapsed, else None."""
    batch, dim = embeddings[0].shape
    floor_rank = max(2.0, 0.02 * min(batch, dim))
    problems = []
    floor_std = 0.1 / math.sqrt(projections[0].shape[1]) if projections else 0.0
    if metrics["std"] < floor_std:
        problems.append(f"feature std {metrics['std']:.4f} < {floor_std:.4f}")
    if metrics["rankme"] < floor_rank:
        problems.append(f"effective rank {metrics['rankme']:.1f} < {floor_rank:.1f}")
    if not problems:
        return None
    return ("representations are collapsing (" + ", ".join(problems) + "); try a lower optim.lr, a larger batch, "
            "or check the recipe's temperature / momentum")
