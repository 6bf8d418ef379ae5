"""MAE (He et al. 2021): mask 75% of the patches, encode only the visible ones with the ViT, and let a small
decoder reconstruct the pixels of the masked ones from the encoded patches and mask tokens. The loss is the
per-patch mean squared error on masked patches only; with `norm_pix_loss` each target patch is normalised by its
own mean and variance. Augmentation is light (random resized crop and flip), as in the paper.

Letters: B batch, T patches, T' visible patches, D encoder width, E decoder width, P patch side, C channels.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.data.batch import ImageBatch
from selfsup.models.blocks import Block, init_weights, make_norm, mlp_hidden
from selfsup.models.vit import ViT, sincos_2d
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import masked_patch_loss, patchify
from selfsup.objectives.output import LossOutput
from selfsup.views.patch_masking import random_masking


class MAE(nn.Module, Objective):
    unit = "image"

    def __init__(self, vit: ViT, views: nn.Module, channels: int, mask_ratio: float, norm_pix_loss: bool,
                 decoder_dim: int, decoder_depth: int, decoder_heads: int):
        super().__init__()
        self.model = vit
        self.views = views
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        cfg = vit.cfg
        self.decoder_embed = nn.Linear(cfg.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        hidden = mlp_hidden(decoder_dim, cfg.mlp_ratio, cfg.mlp)
        self.decoder = nn.ModuleList(Block(decoder_dim, decoder_heads, hidden, cfg.mlp, cfg.norm)
                                     for _ in range(decoder_depth))
        self.decoder_norm = make_norm(cfg.norm, decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, vit.patch ** 2 * channels)
        self.register_buffer("decoder_pos", sincos_2d(vit.grid, vit.grid, decoder_dim), persistent=False)  # (T, E)
        init_weights(self.decoder, decoder_depth)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, batch: ImageBatch) -> LossOutput:
        with torch.no_grad():
            x = self.views(batch["images"])[0]  # (B, C, H, W)
        B, T = x.shape[0], self.model.grid ** 2
        keep, mask, restore = random_masking(B, T, self.mask_ratio, x.device)  # (B, T'), (B, T), (B, T)
        latent = self.model.tokens(x, keep)  # (B, 1 + T', D): class token and visible patches
        y = self.decoder_embed(latent)  # (B, 1 + T', E)
        filler = self.mask_token.expand(B, T - keep.shape[1], -1).to(y.dtype)  # (B, T − T', E)
        patches = torch.cat([y[:, 1:], filler], dim=1)  # (B, T, E) in shuffled order
        patches = torch.gather(patches, 1, restore.unsqueeze(-1).expand(-1, -1, y.shape[-1]))  # original order
        y = torch.cat([y[:, :1], patches + self.decoder_pos.to(y.dtype)], dim=1)  # (B, 1 + T, E)
        for block in self.decoder:
            y = block(y, None, None, causal=False)
        pred = self.decoder_pred(self.decoder_norm(y)[:, 1:])  # (B, T, P·P·C)
        loss, count = masked_patch_loss(pred, patchify(x, self.model.patch), mask, self.norm_pix_loss)
        return LossOutput(loss, count, units=B, embeddings=(latent[:, 1:].mean(dim=1).detach(),))
