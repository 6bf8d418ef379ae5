"""CLIP / ALIGN (Radford et al. 2021; Jia et al. 2021): symmetric InfoNCE between the media and text embeddings
of a batch of pairs, with a learned temperature: the logit scale is exp(log_scale), log_scale starts at
ln(1/0.07) and is clamped after every step so the scale stays within [1, 100] (CLIP §2.5, open_clip).

Across processes (align.local_loss, align.gather_with_grad, as open_clip): features are gathered from every rank;
with local_loss each rank scores its own rows against the whole global batch, otherwise every rank computes the
whole global loss. The count returned makes the logged loss the global mean in every mode, and the gradients the
global mean's with gather_with_grad (the default, with local_loss); without it the towers' gradients are 1/world of
that (as open_clip's default: each rank's gradient reaches its own rows only) and the scale's exact.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from selfsup.data.batch import PairBatch
from selfsup.dist import gather, rank_and_world
from selfsup.objectives.align import Towers
from selfsup.objectives.output import LossOutput
from selfsup.objectives.pair_losses import clip_loss


class CLIP(Towers):
    def __init__(self, media: nn.Module, view: nn.Module, text: nn.Module, embed_dim: int,
                 log_scale: float | None = None, max_scale: float = 100.0, local_loss: bool = False,
                 gather_with_grad: bool = False, **towers):
        super().__init__(media, view, text, embed_dim, **towers)  # towers: Towers' projections and padding
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1 / 0.07) if log_scale is None else log_scale]))
        self.max_log_scale = math.log(max_scale)
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad

    def forward(self, batch: PairBatch) -> LossOutput:
        features = self.media_features(batch["media"], batch.get("lengths"))  # (B, D)
        media = self.project_media(features)  # (B, E)
        text = self.embed_text(batch["text"], batch["text_mask"])  # (B, E)
        rank, world = rank_and_world()
        all_media, all_text = gather(media, self.gather_with_grad), gather(text, self.gather_with_grad)
        B = media.shape[0]
        if self.local_loss or world == 1:
            loss, count = clip_loss(media, text, self.logit_scale, all_media, all_text, offset=rank * B)
        elif self.gather_with_grad:  # every rank the whole loss, every term's gradient reaching every row
            loss, count = clip_loss(all_media, all_text, self.logit_scale)
        else:  # every rank the whole loss, its gradient reaching this rank's rows only (open_clip's default)
            loss, count = clip_loss(all_media, all_text, self.logit_scale)
            loss, count = loss / world, B
        with torch.no_grad():
            hits = (media @ text.t()).argmax(dim=1) == torch.arange(B, device=media.device)
        metrics = {"logit_scale": self.logit_scale.detach().exp(), "pair_acc": hits.float().mean()}
        return LossOutput(loss, count, units=B, metrics=metrics, embeddings=(features.detach(),),
                          projections=(media.detach(), text.detach()))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        self.logit_scale.clamp_(0, self.max_log_scale)
