"""DeepCluster (Caron et al. 2018): alternate between clustering the features of the whole training set with
k-means (after PCA whitening and L2 normalisation) and training the network to predict each image's cluster
from an augmented view.

The classifier sits on a projection MLP (AlexNet's fc6-fc7 in the paper, a projector in DeepCluster-v2), so
the backbone's features, which evaluation reads, are not forced to be linearly separable into each clustering's
arbitrary classes (measured on the digits demo: a linear classifier right on the backbone left its features
worse than a random init's). As in the paper: re-clustered on a schedule (`recluster_every` steps; the paper
does it every epoch), the classifier is re-initialised after each clustering (cluster indices are arbitrary), its
optimizer state with it (the paper builds a fresh optimizer for it: moments of the old clusters' indices would push
the new ones), and clusters count equally (the paper samples images uniformly over clusters; here each image's loss is
weighted by 1 / its cluster's size, which has the same expectation without a special sampler). The
pseudo-labels are part of the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.batch import ImageBatch
from selfsup.dist import broadcast
from selfsup.models.heads import mlp
from selfsup.objectives.contract import Objective
from selfsup.objectives.kmeans import kmeans, pca_whiten
from selfsup.objectives.output import LossOutput
from selfsup.views.augment import center_view


class DeepCluster(nn.Module, Objective):
    unit = "image"
    validates = False  # pseudo-labels exist for the training images only: no held-out loss
    fits_on_data = True  # clusters every training image,
    streams = False  # held in memory,
    continues = False  # and its pseudo-labels belong to those rows
    def __init__(self, backbone: nn.Module, views: nn.Module, proj_hidden: int, proj_dim: int, clusters: int,
                 recluster_every: int, pca_dim: int, kmeans_iters: int, images: np.ndarray | None, mean: list[float],
                 std: list[float], seed: int = 0):
        super().__init__()
        self.model = backbone
        self.views = views
        self.projector = mlp(backbone.out_dim, proj_hidden, proj_dim, layers=2)
        self.classifier = nn.Linear(proj_dim, clusters)
        self.clusters, self.recluster_every, self.pca_dim, self.kmeans_iters = clusters, recluster_every, pca_dim, \
            kmeans_iters
        self._images, self._norm, self._seed = images, (mean, std), seed
        self.labels = torch.empty(0, dtype=torch.long)  # (N,) pseudo-label per training image, on the CPU
        self.weights = torch.empty(0)  # (K,) 1 / cluster size, scaled to mean 1 over images

    # the pseudo-labels travel in the state dict (and so in checkpoints) whatever the data set's size
    def get_extra_state(self) -> Tensor:
        return self.labels

    def set_extra_state(self, state: Tensor) -> None:
        self._set_labels(state.cpu().long())

    def _set_labels(self, labels: Tensor) -> None:
        self.labels = labels
        sizes = torch.bincount(labels, minlength=self.clusters).float() if len(labels) else torch.ones(self.clusters)
        self.weights = len(labels) / (self.clusters * sizes.clamp(min=1))

    @torch.compiler.disable
    @torch.no_grad()
    def recluster(self, device: torch.device, step: int) -> None:
        if self._images is None:
            raise RuntimeError("DeepCluster needs the training images to cluster them")
        was_training = self.training
        self.eval()
        feats, dtype = [], next(self.model.parameters()).dtype  # the trunk's precision (float64 in exact checks)
        for i in range(0, len(self._images), 256):
            x = torch.from_numpy(np.array(self._images[i:i + 256])).to(device)
            feats.append(self.model(center_view(x, x.shape[-1], *self._norm).to(dtype)).float())  # (b, D)
        self.train(was_training)
        x = F.normalize(pca_whiten(torch.cat(feats), self.pca_dim), dim=1)  # (N, pca_dim)
        g = torch.Generator().manual_seed(self._seed * 1_000_003 + step)
        _, assign = kmeans(x, self.clusters, self.kmeans_iters, g)
        self._set_labels(broadcast(assign).cpu())  # the same pseudo-labels on every process
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, batch: ImageBatch) -> LossOutput:
        images = batch["images"]
        if self.training and not len(self.labels):
            self.recluster(images.device, step=0)
        with torch.no_grad():
            x = self.views(images)[0]  # (B, C, S, S)
        h = self.model(x)  # (B, D)
        logits = self.classifier(self.projector(h)).float()  # (B, K)
        index = batch["index"].cpu()
        if len(self.labels):
            labels = self.labels[index].to(images.device)
            w = self.weights.to(images.device)[labels]  # (B,)
            loss = (F.cross_entropy(logits, labels, reduction="none") * w).sum()
            count = w.sum()
        else:  # an evaluation model without pseudo-labels has no loss to report
            loss, count = logits.sum() * 0, torch.zeros((), device=images.device)
        return LossOutput(loss, count, units=images.shape[0], embeddings=(h.detach(),))

    def after_step(self, step: int) -> None:
        if step % self.recluster_every == 0:
            self.recluster(next(self.parameters()).device, step)

    def reinitialised(self, step: int) -> list[nn.Parameter]:
        return list(self.classifier.parameters()) if step % self.recluster_every == 0 else []
