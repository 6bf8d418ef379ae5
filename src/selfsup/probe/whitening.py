"""BERT-whitening (Su et al. 2021, "Whitening Sentence Representations for Better Semantics and Faster Retrieval"):
the features' mean and covariance, fitted on a training split, map every feature to x' = (x - mu) · U diag(1/sqrt(s)),
U s Uᵀ the covariance, so the training features have zero mean and identity covariance. A trained text encoder's
features sit in a narrow cone (mean cosine 0.8-0.9 between unrelated texts, BENCHMARKS.md); cosine similarity, and
so the kNN vote, then compares mostly the common direction. Whitening removes it; the linear probe, which
standardizes each feature, is nearly invariant to it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fit_whitening(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and whitening matrix (D, D) of features x (N, D), in float64. Directions of variance below 1e-8 of
    the largest are scaled as that floor, not divided by ~0."""
    x = x.double()
    mu = x.mean(dim=0)  # (D,)
    s, u = torch.linalg.eigh(torch.cov((x - mu).T))  # (D,), (D, D): covariance = u diag(s) uᵀ
    return mu, u / s.clamp(min=1e-8 * s.max().clamp(min=1e-30)).sqrt()


def whiten(x: Tensor, mu: Tensor, w: Tensor) -> Tensor:
    """(N, D) features -> (N, D) whitened float32."""
    return ((x.double() - mu) @ w).float()


PROTOCOL = "BERT-whitening (Su et al. 2021) fitted on the training split: (x - mean) · U diag(1/sqrt(s))"
