"""Pure loss functions. Each returns a *sum* over its units and the number of units, so the trainer can divide
by the count of the whole accumulated batch (not by each micro-batch's count)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.read.tokenizer import IGNORE
from selfsup.dist import all_reduce
from selfsup.models.blocks import wide


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
    exists whole. Without autograd (torch.no_grad, or no input that requires grad) only the loss is computed.
    """
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk, wants_grad(hidden, weight, bias))


def wants_grad(*inputs: Tensor | None) -> bool:
    """Whether autograd will ask for gradients of `inputs`: a custom Function's forward runs under no_grad and its
    ctx.needs_input_grad reads requires_grad alone, so only its caller can tell an evaluation from training."""
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk, want_grad):
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
        return grad_hidden * grad_loss, grad_weight * grad_loss, grad_bias, None, None, None


# ------------------------------------------------------------------------------------ losses on embeddings
# Letters: B images per view, E embedding width, K prototypes / queue entries, V crops (views) per image.

def nt_xent(z1: Tensor, z2: Tensor, temperature: float, all1: Tensor | None = None, all2: Tensor | None = None,
            offset: int = 0) -> tuple[Tensor, int]:
    """SimCLR's NT-Xent. z1, z2: (B, E) projections of two views of the same images. Each of the 2B embeddings
    is an anchor whose positive is the other view of its image; its negatives are the other 2B − 2 embeddings.
    Self-similarity is left out of the softmax, the positive is kept in it. Across processes, all1, all2: (N, E)
    the gathered views of the global batch (this rank's rows at `offset`); the local anchors are scored against
    all 2N. Returns (sum over the 2B local anchors, 2B)."""
    all1 = z1 if all1 is None else all1
    all2 = z2 if all2 is None else all2
    B, N = z1.shape[0], all1.shape[0]
    anchors = F.normalize(wide(torch.cat([z1, z2])), dim=-1)  # (2B, E)
    candidates = F.normalize(wide(torch.cat([all1, all2])), dim=-1)  # (2N, E)
    logits = anchors @ candidates.t() / temperature  # (2B, 2N)
    rows = torch.arange(B, device=z1.device) + offset  # each local image's row in the global views
    own = torch.cat([rows, rows + N])  # (2B,) the anchor itself among the candidates
    other = torch.cat([rows + N, rows])  # (2B,) its other view: the positive
    logits[torch.arange(2 * B, device=z1.device), own] = float("-inf")
    return F.cross_entropy(logits, other, reduction="sum"), 2 * B


def moco_v2_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> tuple[Tensor, int]:
    """MoCo v2's InfoNCE. q: (B, E) queries from the online encoder; k: (B, E) keys of the other view from the
    momentum encoder (no gradient); queue: (K, E) normalised keys of earlier batches, the negatives. The logits
    are [q·k⁺, q·queue] / τ with the positive at index 0. Returns (sum over B queries, B)."""
    q, k = F.normalize(wide(q), dim=-1), F.normalize(wide(k), dim=-1)
    positive = (q * k).sum(dim=-1, keepdim=True)  # (B, 1)
    negatives = q @ wide(queue).t()  # (B, K)
    logits = torch.cat([positive, negatives], dim=1) / temperature  # (B, 1 + K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels, reduction="sum"), q.shape[0]


def info_nce(q: Tensor, k: Tensor, temperature: float, offset: int = 0) -> tuple[Tensor, int]:
    """InfoNCE within the batch, one way. q: (B, E) queries; k: (N, E) keys, the global batch's when gathered
    across processes (this rank's rows at `offset`). Key i is q_i's positive, every other key a negative; both
    L2-normalised. Returns (sum over B, B)."""
    q, k = F.normalize(wide(q), dim=-1), F.normalize(wide(k), dim=-1)
    logits = q @ k.t() / temperature  # (B, N)
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels, reduction="sum"), q.shape[0]


def moco_v3_loss(q: Tensor, k: Tensor, temperature: float, offset: int = 0) -> tuple[Tensor, int]:
    """MoCo v3's loss: info_nce of the predictions q (B, E) for one view against the momentum-encoder keys k (N, E)
    of the other view (no gradient), scaled by 2τ as in the paper's code, which makes the gradient's size
    independent of τ. Returns (sum over B, B)."""
    loss, count = info_nce(q, k, temperature, offset)
    return loss * 2 * temperature, count


def byol_loss(p: Tensor, z: Tensor) -> tuple[Tensor, int]:
    """BYOL's regression: ‖p̂ − ẑ‖² = 2 − 2·cos(p, z) between the online prediction p (B, E) and the target
    projection z (B, E) of the other view (no gradient). Returns (sum over B, B)."""
    cos = F.cosine_similarity(wide(p), wide(z), dim=-1)  # (B,)
    return (2 - 2 * cos).sum(), p.shape[0]


def dino_loss(student: list[Tensor], teacher: list[Tensor], center: Tensor, student_temp: float,
              teacher_temp: float) -> tuple[Tensor, int]:
    """DINO's cross-entropy between the centred, sharpened teacher and the student. student: V tensors (B, K) of
    logits, one per crop, global crops first; teacher: G tensors (B, K) for the G global crops (no gradient);
    center: (K,). Every pair (teacher crop g, student crop v) with v ≠ g counts; the paper averages over pairs
    and images. Returns (sum over pairs and images, pairs × B)."""
    targets = [F.softmax((wide(t) - center) / teacher_temp, dim=-1) for t in teacher]  # G × (B, K)
    log_probs = [F.log_softmax(wide(s) / student_temp, dim=-1) for s in student]  # V × (B, K)
    total, pairs = torch.zeros((), device=center.device), 0
    for g, target in enumerate(targets):
        for v, log_p in enumerate(log_probs):
            if v == g:
                continue  # the same view seen by teacher and student carries no signal
            total = total + (-target * log_p).sum()
            pairs += 1
    return total, pairs * student[0].shape[0]


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float, iters: int) -> Tensor:
    """SwAV's Sinkhorn-Knopp: soft codes (B, K) from prototype scores (B, K) such that every image's codes sum to
    1 and every prototype receives B/K of the batch (the equal-partition constraint that prevents collapse).
    Across processes the batch is the global one: the sums over images are all-reduced, as in SwAV's code."""
    top = all_reduce(wide(scores).max().clone(), "max")
    q = torch.exp((wide(scores) - top) / epsilon).t()  # (K, B); the shift (the same on every rank) cancels out
    q /= all_reduce(q.sum())
    K = q.shape[0]
    B = int(all_reduce(torch.tensor(float(q.shape[1]), device=q.device)).item())  # the global batch
    for _ in range(iters):
        q /= all_reduce(q.sum(dim=1, keepdim=True)) * K  # each prototype: total mass 1/K
        q /= q.sum(dim=0, keepdim=True) * B  # each image: total mass 1/B
    return (q * B).t()  # (B, K), rows sum to 1


def swav_loss(scores: list[Tensor], codes: list[Tensor], temperature: float) -> tuple[Tensor, int]:
    """SwAV's swapped prediction. scores: V tensors (B, K) of prototype scores, one per crop, global crops first;
    codes: G tensors (B, K) of Sinkhorn codes of the global crops. The code of global crop g is predicted from
    every other crop v: −Σ_k q_g log softmax(s_v / τ). Returns (sum over pairs and images, pairs × B)."""
    log_probs = [F.log_softmax(wide(s) / temperature, dim=-1) for s in scores]  # V × (B, K)
    total, pairs = torch.zeros((), device=scores[0].device), 0
    for g, q in enumerate(codes):
        for v, log_p in enumerate(log_probs):
            if v != g:
                total = total + (-q * log_p).sum()
                pairs += 1
    return total, pairs * scores[0].shape[0]


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, T, P·P·C), patches in row-major order as the ViT embeds them."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


def normalize_patches(patches: Tensor) -> Tensor:
    """(..., P·P·C) -> each patch minus its mean, over its standard deviation (MAE's norm_pix, unbiased var)."""
    x = patches.float()
    mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True)
    return (x - mean) / (var + 1e-6).sqrt()


def masked_patch_loss(pred: Tensor, patches: Tensor, mask: Tensor, norm_pix: bool) -> tuple[Tensor, Tensor]:
    """MAE's reconstruction loss. pred, patches: (B, T, P·P·C); mask: (B, T) True on masked patches. The mean
    squared error of each patch counts only where it was masked; with `norm_pix` the target is each patch
    normalised by its own mean and variance. Returns (sum over masked patches of their MSE, masked count)."""
    target = normalize_patches(patches) if norm_pix else patches.float()
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # (B, T)
    return (per_patch * mask).sum(), mask.sum()
