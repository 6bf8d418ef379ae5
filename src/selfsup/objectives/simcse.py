"""SimCSE (Gao, Yao & Chen 2021), unsupervised: every text goes through the encoder twice, the two passes differ
by dropout (model.dropout; the paper's 0.1) and here optionally by MLM-style masking of a share of the tokens
(simcse.mask_p), and each text's two embeddings are positives against the batch's other texts: InfoNCE with
τ = ssl.temperature (0.05 in the paper), through a projection MLP used in training only.

simcse.crop > 0 is an option beyond the paper: Contriever's independent cropping (Izacard et al. 2021), each view
a random contiguous span of that share of the text, drawn independently for the two views, attending only within
itself. From a random init, dropout alone leaves the task solved before training starts (two passes of one text
share every word, other texts share few: the loss is ~0.01 by step 100 at batch 16); two spans of one text share
its topic, not its words.

The batch holds packed windows. A window's text is its longest document segment (EOS opens every document): with
data.doc_mask no token attends across documents and RoPE is relative, so a segment's states are those of the
document alone. One text per window keeps every process's batch the same size, so the keys are gathered across
processes with gradients, as SimCLR's views.

Letters: B windows, T tokens, D width, E projection.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup import batch_random
from selfsup.data.batch import TextBatch
from selfsup.dist import gather, rank_and_world
from selfsup.models.heads import mlp
from selfsup.models.transformer import Transformer
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import info_nce
from selfsup.objectives.output import LossOutput
from selfsup.views.masking import MaskingTable, mask_tokens


def longest_segment(doc_ids: Tensor) -> Tensor:
    """(B, T) non-decreasing document index -> (B, T) True on the tokens of each row's longest document (the
    first of equals)."""
    B, T = doc_ids.shape
    lengths = torch.zeros(B, T + 1, dtype=torch.long, device=doc_ids.device)
    lengths.scatter_add_(1, doc_ids, torch.ones_like(doc_ids))  # (B, T + 1) tokens per document index
    return doc_ids == lengths.argmax(dim=1, keepdim=True)


def crop_span(segment: Tensor, share: float) -> Tensor:
    """(B, T) True on each row's text -> (B, T) True on a random contiguous span of round(share · length) of its
    tokens (at least 1), its start uniform over the positions that fit (batch_random's draw)."""
    B, T = segment.shape
    length = segment.sum(dim=1)  # (B,)
    start = segment.int().argmax(dim=1)  # (B,) the text's first token
    n = (share * length).round().clamp(min=1).long()  # (B,)
    offset = (batch_random.rand((B,), segment.device) * (length - n + 1)).long()  # (B,) in [0, length - n]
    t = torch.arange(T, device=segment.device)  # (T,)
    first = (start + offset).unsqueeze(1)  # (B, 1)
    return (t >= first) & (t < first + n.unsqueeze(1))


class SimCSE(nn.Module, Objective):
    unit = "token"
    window_overlap = 0  # windows of exactly model.context tokens

    def __init__(self, encoder: Transformer, table: MaskingTable, eos_id: int, proj_hidden: int, proj_dim: int,
                 temperature: float, mask_p: float, crop: float = 0.0):
        super().__init__()
        self.model = encoder
        self.projector = mlp(encoder.cfg.dim, proj_hidden, proj_dim, layers=2)
        self.table, self.eos_id = table, eos_id
        self.temperature, self.mask_p, self.crop = temperature, mask_p, crop

    def embed(self, tokens: Tensor, doc_ids: Tensor, segment: Tensor) -> Tensor:
        """One view: (B, T) tokens -> (B, D) pooled states of each window's segment (a crop: only it is attended)."""
        if self.mask_p:
            tokens, _ = mask_tokens(tokens, self.table.to(tokens.device), self.mask_p)
        hidden = self.model(tokens, doc_ids, pad_mask=segment if self.crop else None)  # (B, T, D)
        if self.model.cfg.pooling == "cls":  # the EOS that opens the document (the window's first token if cut)
            return hidden[torch.arange(len(hidden), device=hidden.device), segment.int().argmax(dim=1)]
        w = segment.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * w).sum(dim=1) / w.sum(dim=1)

    def forward(self, batch: TextBatch) -> LossOutput:
        tokens = batch["tokens"]  # (B, T)
        doc_ids = torch.cumsum(tokens == self.eos_id, dim=1)  # (B, T); always: the text is one document
        segment = longest_segment(doc_ids)  # (B, T)
        views = [crop_span(segment, self.crop), crop_span(segment, self.crop)] if self.crop else [segment, segment]
        h = self.embed(torch.cat([tokens, tokens]), torch.cat([doc_ids, doc_ids]), torch.cat(views))  # (2B, D)
        z1, z2 = self.projector(h).chunk(2)  # (B, E) each: two views, one pass (BatchNorm sees both)
        rank, _ = rank_and_world()
        loss, count = info_nce(z1, gather(z2, True), self.temperature, rank * z1.shape[0])
        return LossOutput(loss, count, units=tokens.numel(), embeddings=h.detach().chunk(2),
                          projections=(z1.detach(), z2.detach()))

    def flops_per_token(self) -> float:
        """The trunk twice (two views), without the tied output layer the trunk's count includes (no token is
        predicted); the projection runs once per window, not per token."""
        return 2 * (self.model.flops_per_token() - 6 * self.model.embed.weight.numel())
