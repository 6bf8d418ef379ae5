"""k-means and PCA whitening in torch, on the training device: DeepCluster's pseudo-labels and BEiT's codebook."""

from __future__ import annotations

import torch
from torch import Tensor


def nearest(x: Tensor, centroids: Tensor, chunk: int = 65536) -> Tensor:
    """(N, D), (K, D) -> (N,) index of the nearest centroid (squared Euclidean), a chunk of rows at a time."""
    c_sq = (centroids * centroids).sum(dim=1)  # (K,)
    x = x.to(centroids.dtype)  # rows may come in another precision than the centroids were fitted in
    out = [(c_sq - 2 * rows @ centroids.t()).argmin(dim=1) for rows in x.split(chunk)]  # ‖x‖² is the same per row
    return torch.cat(out)


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre is a point drawn with probability
    proportional to its squared distance to the nearest centre chosen so far. x: (N, D) -> (K, D)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(dim=1)  # (N,) squared distance to the nearest centre
    for _ in range(1, k):
        weights = d2.cpu().double()
        if weights.sum() <= 0:  # fewer distinct points than k: any point will do, Lloyd re-seeds empties
            weights = torch.ones_like(weights)
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(dim=1))
    return torch.stack(centroids)


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means from k-means++ seeds. x: (N, D) float. Returns centroids (K, D) and the assignment (N,).
    An empty cluster is re-seeded with the point farthest from its centroid, so all K are used."""
    x = x.float()
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means of {n} points into {k} clusters: expected at least as many points as clusters")
    centroids = kmeans_plus_plus(x, k, generator)  # (K, D)
    for _ in range(iters):
        assign = nearest(x, centroids)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)  # (K, D)
        counts = torch.bincount(assign, minlength=k)  # (K,)
        centroids = sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            dist = ((x - centroids[assign]) ** 2).sum(dim=1)  # (N,)
            centroids[empty] = x[dist.topk(len(empty)).indices]
    return centroids, nearest(x, centroids)


def pca_whiten(x: Tensor, dim: int, eps: float = 1e-5) -> Tensor:
    """(N, D) -> (N, min(dim, D)): centred, projected on the top principal axes and scaled to unit variance."""
    x = x.float() - x.float().mean(dim=0)
    cov = x.t() @ x / max(x.shape[0] - 1, 1)  # (D, D)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    top = values.flip(0)[:dim], vectors.flip(1)[:, :dim]
    return x @ top[1] / (top[0].clamp(min=0) + eps).sqrt()
