"""BEiT-style masked image modelling (Bao et al. 2021): about 40% of the patches, in blocks, are replaced by a
learned mask token, and the ViT predicts the discrete visual token of each masked patch.

Which tokenizer, and why: BEiT uses DALL-E's pretrained dVAE, which we cannot download and would not want to
depend on. The visual tokens here come from a codebook the framework learns itself before pretraining: k-means
(`codebook_size` centroids) on the patches of up to `codebook_images` training images, each patch normalised by
its own mean and variance (as MAE's norm_pix targets), so a token names a patch's local structure (an edge, a
stroke end, a flat area) rather than its brightness. It needs no second training stage and is deterministic for
a seed; like a dVAE's tokens it is a fixed target, but a coarser one (no learned decoder). The codebook is a
buffer of the objective: it is saved in checkpoints and the final model, and a resumed run does not refit it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from selfsup.data.batch import ImageBatch
from selfsup.dist import broadcast
from selfsup.models.vit import ViT
from selfsup.objectives.contract import Objective
from selfsup.objectives.kmeans import kmeans, nearest
from selfsup.objectives.losses import normalize_patches, patchify, token_cross_entropy
from selfsup.objectives.output import LossOutput
from selfsup.views.augment import center_view
from selfsup.views.patch_masking import block_mask


class BEiT(nn.Module, Objective):
    unit = "image"
    fits_on_data = True  # its tokenizer's codebook is fitted on the training images

    def __init__(self, vit: ViT, views: nn.Module, mask_ratio: float, codebook_size: int, codebook_images: int,
                 images: np.ndarray | None, mean: list[float], std: list[float], seed: int = 0):
        super().__init__()
        self.model = vit
        self.views = views
        self.mask_ratio = mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vit.out_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(vit.out_dim, codebook_size)
        channels = vit.embed.in_channels
        self.register_buffer("codebook", torch.zeros(codebook_size, vit.patch ** 2 * channels))  # (K, P·P·C)
        self.register_buffer("codebook_ready", torch.zeros((), dtype=torch.bool))
        self._images, self._norm, self._seed, self._fit_images = images, (mean, std), seed, codebook_images

    @torch.compiler.disable
    @torch.no_grad()
    def fit_codebook(self, device: torch.device) -> None:
        """k-means over the normalised patches of up to `codebook_images` training images (centre views)."""
        if self._images is None:
            raise RuntimeError("BEiT needs the training images to fit its codebook (or a trained one to load)")
        g = torch.Generator().manual_seed(self._seed)
        n = len(self._images)
        pick = np.sort(torch.randperm(n, generator=g)[:self._fit_images].numpy())
        x = center_view(torch.from_numpy(np.array(self._images[pick])).to(device), self._images.shape[-1],
                        *self._norm)  # (N, C, H, W)
        patches = normalize_patches(patchify(x, self.model.patch)).flatten(0, 1)  # (N·T, P·P·C)
        centroids, _ = kmeans(patches, self.codebook.shape[0], iters=20, generator=g)
        self.codebook.copy_(broadcast(centroids))  # the same targets on every process
        self.codebook_ready.fill_(True)

    def forward(self, batch: ImageBatch) -> LossOutput:
        if self.training and not self.codebook_ready:
            self.fit_codebook(batch["images"].device)
        with torch.no_grad():
            x = self.views(batch["images"])[0]  # (B, C, H, W)
            targets = nearest(normalize_patches(patchify(x, self.model.patch)).flatten(0, 1), self.codebook)
        B, grid = x.shape[0], self.model.grid
        mask = block_mask(B, (grid, grid), self.mask_ratio, x.device)  # (B, T) True where masked
        tokens = self.model.embed(x).flatten(2).transpose(1, 2)  # (B, T, D)
        tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        h = self.model.encode(tokens + self.model.positions(grid, grid).to(tokens.dtype))  # (B, 1 + T, D)
        logits = self.head(h[:, 1:][mask])  # (M, K) for the M masked patches
        loss, count = token_cross_entropy(logits, targets.view(B, -1)[mask])
        return LossOutput(loss, count, units=B, embeddings=(h[:, 1:].mean(dim=1).detach(),))
