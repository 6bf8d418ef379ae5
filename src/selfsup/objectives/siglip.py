"""SigLIP (Zhai et al. 2023): every (media, text) pair of the batch is an independent binary decision under a
sigmoid, with a learned scale (exp(log_scale), log_scale starting at ln 10) and a learned bias (starting at −10,
so the many negatives do not dominate the first steps); no softmax over the batch.

Across processes each rank scores its own media against the texts of all ranks (the paper's chunked form;
align.gather_with_grad lets the texts' gradients flow back to their ranks, which the exact global gradient
needs). align.chunk > 0 computes the loss a block of texts at a time, so memory does not grow with batch².
"""

from __future__ import annotations

import math

import torch
from torch import nn

from selfsup.data.batch import PairBatch
from selfsup.dist import gather, rank_and_world
from selfsup.objectives.align import Towers
from selfsup.objectives.output import LossOutput
from selfsup.objectives.pair_losses import siglip_loss


class SigLIP(Towers):
    def __init__(self, media: nn.Module, view: nn.Module, text: nn.Module, embed_dim: int,
                 log_scale: float | None = None, max_scale: float = 100.0, bias: float = -10.0,
                 gather_with_grad: bool = False, chunk: int = 0, **towers):
        super().__init__(media, view, text, embed_dim, **towers)  # towers: Towers' projections and padding
        self.logit_scale = nn.Parameter(torch.tensor([math.log(10.0) if log_scale is None else log_scale]))
        self.logit_bias = nn.Parameter(torch.tensor([bias]))
        self.max_log_scale = math.log(max_scale)
        self.gather_with_grad, self.chunk = gather_with_grad, chunk

    def forward(self, batch: PairBatch) -> LossOutput:
        features = self.media_features(batch["media"], batch.get("lengths"))  # (B, D)
        media = self.project_media(features)  # (B, E)
        text = self.embed_text(batch["text"], batch["text_mask"])  # (B, E)
        rank, _ = rank_and_world()
        B = media.shape[0]
        all_text = gather(text, self.gather_with_grad)  # (N, E)
        loss, count = siglip_loss(media, all_text, self.logit_scale, self.logit_bias, offset=rank * B,
                                  chunk=self.chunk)
        with torch.no_grad():
            hits = (media @ text.t()).argmax(dim=1) == torch.arange(B, device=media.device)
        metrics = {"logit_scale": self.logit_scale.detach().exp(), "pair_acc": hits.float().mean(),
                   "logit_bias": self.logit_bias.detach().clone()}  # a copy: FSDP frees the gathered parameter
        return LossOutput(loss, count, units=B, metrics=metrics, embeddings=(features.detach(),),
                          projections=(media.detach(), text.detach()))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        self.logit_scale.clamp_(0, self.max_log_scale)
