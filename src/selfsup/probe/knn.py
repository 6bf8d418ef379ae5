"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination"; the `knn_classifier` of DINO's eval_knn.py).

Features are L2-normalised; each test example takes its k most cosine-similar training examples, each votes for
its own class with weight exp(cos / T), and the class with the largest summed vote wins. No training, no
standardization: the number measures the geometry of the features as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.probe.metrics import accuracy, macro_f1


def knn_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """(M,) predicted classes for test_x (M, D) from train_x (N, D), train_y (N,)."""
    return knn_predict_each(train_x, train_y, test_x, num_classes, (k,), temperature, chunk)[min(k, len(train_x))]


def knn_predict_each(train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int, ks: tuple[int, ...],
                     temperature: float = 0.07, chunk: int = 1024) -> dict[int, Tensor]:
    """{k: (M,) predictions} for each k (capped at N) from one similarity pass: the k nearest neighbours are the
    first k of the max(ks) nearest, sorted by similarity."""
    if min(ks) < 1 or temperature <= 0:
        raise ValueError(f"k={min(ks)}, temperature={temperature}: expected k >= 1 and temperature > 0")
    train = F.normalize(train_x.float(), dim=1)  # (N, D)
    test = F.normalize(test_x.float(), dim=1)  # (M, D)
    ks = tuple(sorted({min(k, len(train)) for k in ks}))
    preds: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test), chunk):  # (chunk, N) similarities at a time
        sim = test[start:start + chunk] @ train.t()  # (m, N) cosine
        top_sim, top_idx = sim.topk(ks[-1], dim=1)  # (m, K), most similar first
        weights, labels = (top_sim / temperature).exp(), train_y[top_idx]  # (m, K) each
        for k in ks:
            votes = torch.zeros((len(sim), num_classes), dtype=weights.dtype, device=weights.device)
            votes.scatter_add_(1, labels[:, :k], weights[:, :k])  # (m, C) summed weight per class
            preds[k].append(votes.argmax(dim=1))
    return {k: torch.cat(p) if p else torch.zeros(0, dtype=torch.long) for k, p in preds.items()}


def knn_eval(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int, k: int = 20,
             temperature: float = 0.07, features: str = "frozen features", also_k: tuple[int, ...] = (200,)) -> dict:
    """Accuracy and macro-F1 at k, and the accuracy at each of `also_k` too (`accuracy_by_k`; DINO reports
    k = 20 and 200)."""
    preds = knn_predict_each(train_x, train_y, test_x, num_classes, (k, *also_k), temperature)
    used_k = min(k, len(train_y))
    pred = preds[used_k]
    by_k = {str(other): accuracy(p, test_y) for other, p in preds.items()}
    return dict(accuracy=accuracy(pred, test_y), macro_f1=macro_f1(pred, test_y, num_classes), k=used_k,
                accuracy_by_k=by_k, temperature=temperature, train_examples=len(train_y), test_examples=len(test_y),
                protocol=(f"weighted kNN (Wu et al. 2018 / DINO): {features}; L2-normalised, cosine similarity, "
                          f"k={used_k} nearest training examples vote exp(cos/T) with T={temperature:g}, "
                          "argmax of summed votes"))
