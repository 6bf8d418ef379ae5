"""Pure loss functions. Each returns a *sum* over its units and the number of units, so the trainer can divide
by the count of the whole accumulated batch (not by each micro-batch's count)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # label of positions that carry no loss (padding, unmasked tokens)


def token_cross_entropy(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """logits: (..., V) in any precision; labels: (...) with IGNORE where there is no target.
    Returns (summed cross-entropy in fp32, number of valid labels)."""
    loss = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, (labels != IGNORE).sum()


def linear_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None,
                         chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """token_cross_entropy(hidden @ weight.T + bias, labels) without keeping the (N, V) logits for backward.

    hidden: (N, D); weight: (V, D); bias: (V,) or None; labels: (N,). The logits are made a chunk of rows at a
    time, in fp32 for the softmax, and the gradients for hidden, weight and bias are computed right there, so the
    largest activation of a language model (N × V fp32, 135 MB at batch 32 × 128 and vocabulary 8192) never
    exists whole.
    """
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk):
        want_grad = any(ctx.needs_input_grad[:3])
        grad_hidden = torch.empty_like(hidden) if want_grad else None  # (N, D)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_grad else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if want_grad else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s:s + chunk], labels[s:s + chunk]  # (n, D), (n,)
            valid = y != IGNORE  # (n,)
            y = torch.where(valid, y, 0)
            logits = (h @ weight.t()).float()  # (n, V); bf16 matmul under autocast, fp32 softmax
            if bias is not None:
                logits += bias.float()
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            loss += ((lse - logits.gather(1, y[:, None])[:, 0]) * valid).sum()
            if want_grad:  # d(sum of CE)/d logits = softmax - one_hot(y), zero on ignored rows
                g = logits.sub_(lse[:, None]).exp_()
                g[torch.arange(len(y), device=y.device), y] -= 1
                g.mul_(valid[:, None])
                if bias is not None:
                    grad_bias += g.sum(dim=0)
                dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
                g = g.to(dtype)
                grad_hidden[s:s + chunk] = g @ weight.to(dtype)  # (n, D)
                grad_weight += (g.t() @ h.to(dtype)).float()  # (V, D)
        if want_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype), grad_bias)
            ctx.has_bias = bias is not None
        return loss, (labels != IGNORE).sum()

    @staticmethod
    def backward(ctx, grad_loss, grad_count):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        grad_bias = grad_bias.to(grad_hidden.dtype) * grad_loss if ctx.has_bias else None
        return grad_hidden * grad_loss, grad_weight * grad_loss, grad_bias, None, None
