"""The global batch for losses and statistics across processes (open_clip's two switches for gathering).

    gather(x, with_grad)   (B, E) on each of W ranks -> (W·B, E), rank r's rows at [r·B, (r+1)·B)
    all_reduce(x, op)      sum, max or mean over the ranks, in place (statistics: centres, Sinkhorn sums)
    broadcast(x)           rank 0's x everywhere (fitted targets: k-means units, codebooks, pseudo-labels)

with_grad=False gathers without autograd and puts this rank's own tensor back in its slot, so gradients reach
the local rows only; with_grad=True gathers with a backward that sums each slot's gradient over the
ranks, so every term of the global loss reaches the rows it depends on. One process, or no
process group: x itself, and every formula reduces to the single-process one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(x: Tensor, op: str = "sum") -> Tensor:
    """x summed (or 'max', 'mean') over the processes, in place, without autograd; x itself in one process."""
    _, world = rank_and_world()
    if world > 1:
        dist.all_reduce(x, dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if op == "mean":
            x /= world
    return x


def broadcast(x: Tensor) -> Tensor:
    """Rank 0's x on every process, in place: state each process fits alike (k-means targets) but where one
    non-deterministic kernel (CUDA's index_add_) could make them drift apart."""
    if rank_and_world()[1] > 1:
        dist.broadcast(x, 0)
    return x


def gather(x: Tensor, with_grad: bool) -> Tensor:
    rank, world = rank_and_world()
    if world == 1:
        return x
    if with_grad:
        return _AllGather.apply(x)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """x summed over the processes; the backward sums the gradients of every process (a statistic every
    process's loss depends on, e.g. global BatchNorm sums)."""
    return _AllReduce.apply(x) if rank_and_world()[1] > 1 else x


class _AllGather(torch.autograd.Function):
    """(B, E) -> (W·B, E); backward: each process gets the sum over processes of the gradient of its own rows.
    (torch.distributed.nn's version is deprecated in favour of a private API.)"""

    @staticmethod
    def forward(ctx, x):
        rank, world = rank_and_world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad
