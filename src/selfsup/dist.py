"""Every collective and rank helper: the processes of a run, and the global batch for losses and statistics.

    setup(device, backend)  join the process group the environment describes (torchrun's variables; none: one)
    rank_and_world()        (rank, world) of this process; (0, 1) without a process group
    gather(x, with_grad)    (B, E) on each of W ranks -> (W·B, E), rank r's rows at [r·B, (r+1)·B)
    all_reduce(x, op)       sum, max or mean over the ranks, in place (statistics: centres, Sinkhorn sums)
    broadcast(x)            rank 0's x everywhere (fitted targets: k-means units, codebooks, pseudo-labels)
    all_sum, any_true, gather_objects, barrier: the trainer's bookkeeping (loss sums, stop flags, RNG states)

Every function reads the process group torch.distributed holds (one process, or none: the single-process
result, so every formula reduces to the one-process one); `Processes` is the run's description of itself.

gather with with_grad=False gathers without autograd and puts this rank's own tensor back in its slot, so
gradients reach the local rows only (open_clip's two switches); with_grad=True gathers with a backward that sums
each slot's gradient over the ranks, so every term of the global loss reaches the rows it depends on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from selfsup.config import ConfigError


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def local_main(self) -> bool:
        return self.local_rank == 0


def under_launcher() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """'auto': the GPU where there is one, else the CPU; cpu, cuda, cuda:N or mps where this machine has it. Any
    other name, or a device this machine lacks, is a ConfigError naming `key` (its option) and what there is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpus, mps = torch.cuda.device_count(), torch.backends.mps.is_available()
    here = ("auto, cpu" + (f", cuda, cuda:0 to cuda:{gpus - 1}" if gpus > 1 else ", cuda, cuda:0" if gpus else "")
            + (", mps" if mps else ""))
    try:
        device = torch.device(name)
    except RuntimeError:  # not a device string at all
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key} '{name}': expected auto, cpu, cuda, cuda:N or mps (this machine has: {here})")
    if device.type == "cuda" and (device.index or 0) >= gpus:
        has = f"{gpus} CUDA device{'s' if gpus > 1 else ''}" if gpus else "no CUDA device"
        raise ConfigError(f"{key} '{name}': this machine has {has}; expected one of {here}")
    if device.type == "mps" and not mps:
        raise ConfigError(f"{key} '{name}': this machine has no MPS device; expected one of {here}")
    return device


def setup(device: torch.device, backend: str = "auto") -> tuple[Processes, torch.device]:
    """Join the process group the environment describes (none: one process). A CUDA device becomes this
    process's own GPU (LOCAL_RANK). Backend: NCCL on GPUs, gloo on CPUs, unless `backend` says."""
    if not under_launcher() or int(os.environ["WORLD_SIZE"]) == 1:
        return Processes(), device
    rank, local, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(chosen, device_id=device if device.type == "cuda" else None)
    return Processes(rank, local, world, chosen), device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def all_sum(*values: float | Tensor, device: torch.device) -> list[float]:
    """Each value summed over the processes (floats back)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if rank_and_world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on any (a signal may reach one worker only)."""
    return bool(all_sum(float(flag), device=device)[0]) if rank_and_world()[1] > 1 else flag


def gather_objects(obj) -> list:
    """Every process's `obj`, rank order, on every process (pickled in memory between our own processes)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


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
