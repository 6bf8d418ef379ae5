"""The media-text alignment losses, pure functions of L2-normalised embeddings. Each returns a *sum* over the
rows it scores and their number, like every loss in losses.py.

Across W processes the losses read the global batch through selfsup/dist.py; `offset` is the position of
this rank's rows in the gathered tensors (rank · B) and is 0 in one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.models.blocks import wide
from selfsup.objectives.losses import wants_grad


def clip_loss(media: Tensor, text: Tensor, log_scale: Tensor, all_media: Tensor | None = None,
              all_text: Tensor | None = None, offset: int = 0) -> tuple[Tensor, int]:
    """CLIP's symmetric InfoNCE (Radford et al. 2021, fig. 3): logits = exp(log_scale) · media @ textᵀ; each media
    row is classified over the texts and each text over the media, the target being its own pair; the two
    cross-entropies are averaged.

    media, text: (B, E) this rank's normalised embeddings, row i of each a pair. all_media, all_text: (N, E) the
    gathered global batch, or None in one process (then N = B). With gathered features each rank scores only its
    own B rows against all N (open_clip's local_loss); summed over ranks this is the global loss exactly.
    Returns (Σ over the B rows of (ce_media→text + ce_text→media) / 2, B)."""
    all_media = media if all_media is None else all_media
    all_text = text if all_text is None else all_text
    scale = wide(log_scale).exp()
    labels = torch.arange(media.shape[0], device=media.device) + offset  # (B,)
    per_media = scale * wide(media) @ wide(all_text).t()  # (B, N)
    per_text = scale * wide(text) @ wide(all_media).t()  # (B, N)
    loss = F.cross_entropy(per_media, labels, reduction="sum") + F.cross_entropy(per_text, labels, reduction="sum")
    return loss / 2, media.shape[0]


def siglip_loss(media: Tensor, text: Tensor, log_scale: Tensor, bias: Tensor, offset: int = 0,
                chunk: int = 0) -> tuple[Tensor, int]:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, algorithm 1): every (media i, text j) pair is a binary
    decision, z_ij = +1 for the true pair and −1 otherwise, logit l_ij = exp(log_scale) · m_i·t_j + bias, loss
    −log σ(z_ij · l_ij); the paper normalises the sum by the batch size.

    media: (B, E) this rank's rows; text: (N, E) all texts (N = B in one process; gathered across ranks, this is
    the paper's chunked multi-device form: each device scores its media against every text). chunk > 0 scores
    `chunk` texts at a time and computes the gradients right there (when autograd will want them), so the (B, N)
    logits never exist whole. Returns (Σ over the B × N pairs, B)."""
    if chunk:
        want_grad = wants_grad(media, text, log_scale, bias)
        return _ChunkedSigmoid.apply(media, text, log_scale, bias, offset, chunk, want_grad), media.shape[0]
    logits = wide(log_scale).exp() * wide(media) @ wide(text).t() + wide(bias)  # (B, N)
    signs = -torch.ones_like(logits)
    signs[torch.arange(media.shape[0]), torch.arange(media.shape[0]) + offset] = 1.0
    return F.softplus(-signs * logits).sum(), media.shape[0]  # −log σ(x) = softplus(−x)


class _ChunkedSigmoid(torch.autograd.Function):
    """siglip_loss a block of texts at a time. With g_ij = ∂loss/∂l_ij = −z_ij σ(−z_ij l_ij) and s = exp(log_scale):
    ∂/∂m_i = s Σ_j g_ij t_j, ∂/∂t_j = s Σ_i g_ij m_i, ∂/∂log_scale = s Σ g_ij m_i·t_j, ∂/∂bias = Σ g_ij."""

    @staticmethod
    def forward(ctx, media, text, log_scale, bias, offset, chunk, want_grad):
        m, t = wide(media), wide(text)
        s, b = wide(log_scale).exp().reshape(()), wide(bias).reshape(())  # scalars, whatever the parameter shape
        B, dtype = m.shape[0], torch.promote_types(m.dtype, t.dtype)
        if want_grad:
            grad_m, grad_t = torch.zeros_like(m), torch.empty_like(t)  # (B, E), (N, E)
            grad_scale, grad_bias = (torch.zeros((), device=m.device, dtype=dtype) for _ in range(2))
        loss = torch.zeros((), device=m.device, dtype=dtype)
        rows = torch.arange(B, device=m.device)
        for start in range(0, t.shape[0], chunk):
            block = t[start:start + chunk]  # (c, E)
            dots = m @ block.t()  # (B, c)
            logits = s * dots + b
            signs = -torch.ones_like(logits)
            pos = rows + offset - start  # column of each media row's own text in this block
            hit = (pos >= 0) & (pos < block.shape[0])
            signs[rows[hit], pos[hit]] = 1.0
            z = -signs * logits
            loss += F.softplus(z).sum()
            if want_grad:
                g = -signs * torch.sigmoid(z)  # (B, c) ∂loss/∂logits
                grad_m += s * g @ block
                grad_t[start:start + chunk] = s * g.t() @ m
                grad_scale += s * (g * dots).sum()
                grad_bias += g.sum()
        if want_grad:
            ctx.save_for_backward(grad_m, grad_t, grad_scale, grad_bias)
            ctx.like = [(x.dtype, x.shape) for x in (media, text, log_scale, bias)]
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grads = [(g * grad_loss).to(dtype).reshape(shape) for g, (dtype, shape) in zip(ctx.saved_tensors, ctx.like)]
        return *grads, None, None, None
