"""Classification metrics in torch: accuracy and macro-F1 (as scikit-learn's `f1_score(average="macro")`)."""

from __future__ import annotations

import torch
from torch import Tensor


def accuracy(pred: Tensor, target: Tensor) -> float:
    """Fraction of predictions equal to the target; pred, target: (N,) integer class ids."""
    if pred.shape != target.shape or pred.ndim != 1:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)}: expected two (N,) tensors")
    if len(pred) == 0:
        raise ValueError("accuracy of no predictions")
    return (pred == target).double().mean().item()


def confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx.cpu(), minlength=num_classes * num_classes).view(num_classes, num_classes)


def macro_f1(pred: Tensor, target: Tensor, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 = 2·TP / (2·TP + FP + FN) over the classes that occur in the target or
    the predictions (scikit-learn's label set); a class with TP = 0 scores 0."""
    accuracy(pred, target)  # validates the shapes
    num_classes = num_classes or int(max(pred.max(), target.max())) + 1
    m = confusion(pred, target, num_classes).double()
    tp = m.diag()
    fp = m.sum(dim=0) - tp  # predicted as c, but not c
    fn = m.sum(dim=1) - tp  # c, but predicted as something else
    present = (m.sum(dim=0) + m.sum(dim=1)) > 0
    f1 = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.zeros_like(tp))
    return f1[present].mean().item()
