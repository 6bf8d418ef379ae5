"""Linear probe on frozen features: multinomial logistic regression, the protocol of most SSL papers' "linear
evaluation" in its convex, tuning-free form (as in CLIP's and DINOv2's logistic-regression probes).

    1. standardize: subtract the training mean, divide by the training std, per feature;
    2. pick the L2 weight from `grid`: fit on a seeded, stratified split of train (1 - val_fraction), score
       accuracy on the held-out val_fraction (ties go to the stronger penalty);
    3. refit on all of train with the chosen weight (standardized with all of train), score on test.

Each fit minimises mean cross-entropy + l2 · ‖W‖² (bias not penalised) with full-batch L-BFGS (strong Wolfe
line search) in float64, from zero weights, so the result is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.probe.metrics import accuracy, macro_f1

GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def stratified_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (fit, val): from each class round(val_fraction · n_c) examples go to val, at least one when the
    class has two or more, never all of them; drawn with a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = min(max(round(val_fraction * len(idx)), 1 if len(idx) >= 2 else 0), len(idx) - 1)
        val.append(idx[:n])
        fit.append(idx[n:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Weights (D, C) and bias (C,) minimising mean CE(x @ W + b, y) + l2 · ‖W‖², by full-batch L-BFGS."""
    x = x.double()
    w = torch.zeros((x.shape[1], num_classes), dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _standardize(fit: Tensor, *others: Tensor) -> list[Tensor]:
    mean, std = fit.mean(dim=0), fit.std(dim=0).clamp(min=1e-6)
    return [(t.double() - mean) / std for t in (fit.double(), *others)]


def _predict(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return (x.double() @ w + b).argmax(dim=1)


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                 features: str = "frozen features", grid: tuple[float, ...] = GRID, val_fraction: float = 0.15,
                 max_iter: int = 200, seed: int = 0) -> dict:
    """Train on (train_x (N, D), train_y (N,)), select the L2 weight on a held-out split of train, score test."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: expected a fraction between 0 and 1")
    fit_idx, val_idx = stratified_split(train_y.cpu(), val_fraction, seed)
    scores = {}
    if len(val_idx):
        xf, xv = _standardize(train_x[fit_idx], train_x[val_idx])
        for l2 in grid:
            w, b = fit_logistic(xf, train_y[fit_idx], num_classes, l2, max_iter)
            scores[l2] = accuracy(_predict(xv, w, b), train_y[val_idx])
        chosen = max(grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger penalty
    else:  # one example per class: nothing to hold out
        chosen = sorted(grid)[len(grid) // 2]
    xtr, xte = _standardize(train_x, test_x)
    w, b = fit_logistic(xtr, train_y, num_classes, chosen, max_iter)
    pred = _predict(xte, w, b)
    grid_text = ", ".join(f"{v:g}" for v in grid)
    return dict(
        accuracy=accuracy(pred, test_y), macro_f1=macro_f1(pred, test_y, num_classes),
        train_accuracy=accuracy(_predict(xtr, w, b), train_y), l2=chosen,
        val_accuracy={f"{k:g}": v for k, v in scores.items()},
        train_examples=len(train_y), val_examples=len(val_idx), test_examples=len(test_y),
        protocol=(f"linear probe: {features}; standardized with the training mean/std; multinomial logistic "
                  f"regression, mean CE + l2·|W|^2, full-batch L-BFGS (strong Wolfe, float64, <= {max_iter} "
                  f"iterations) from zeros; l2 chosen from [{grid_text}] by accuracy on a seeded stratified "
                  f"{val_fraction:.0%} split held out from train (seed {seed}), then refit on all of train"))
