"""The processes of a run: one per device, under torchrun or started by `selfsup train` itself.

    torchrun --nproc-per-node 8 -m selfsup train RECIPE ...        the standard environment (RANK, WORLD_SIZE, ...)
    selfsup train RECIPE dist.nproc_per_node=2 [dist.nnodes=...]   the same, through torch's elastic launcher

Rank 0 alone writes the run directory, logs and progress; every rank reads its own rows of each global batch
(data/order.py) and averages gradients with DDP. Backend: NCCL on GPUs, gloo on CPUs, unless dist.backend says.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from selfsup.config import RunConfig


LAUNCHED = "SELFSUP_LAUNCHED"


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


def reports(procs_rank: int) -> bool:
    """Whether this process prints the summary and writes the report: rank 0, unless `selfsup train` started the
    workers itself (then it reports)."""
    return procs_rank == 0 and LAUNCHED not in os.environ


def wants_launch(cfg: RunConfig) -> bool:
    """True when `selfsup train` should start the workers itself."""
    return not under_launcher() and (cfg.dist.nproc_per_node > 1 or cfg.dist.nnodes > 1)


def launch(cfg: RunConfig, argv: list[str]) -> None:
    """Run `python -m selfsup ARGV` in dist.nproc_per_node workers on this machine via torch's elastic launcher
    (what torchrun runs); returns when they finish, raises when one fails."""
    from torch.distributed.run import get_args_parser, run

    d = cfg.dist
    args = ["--nproc-per-node", str(d.nproc_per_node), "--nnodes", str(d.nnodes), "--node-rank", str(d.node_rank),
            "--rdzv-endpoint", d.rdzv_endpoint, "--max-restarts", "0"]
    if d.nnodes > 1:
        run_id = hashlib.sha256(cfg.out_dir.encode()).hexdigest()[:12]  # one per run directory, alike on every machine
        args += ["--rdzv-backend", "c10d", "--rdzv-id", f"selfsup-{run_id}"]
    else:
        args += ["--master-addr", d.rdzv_endpoint.rpartition(":")[0], "--master-port",
                 d.rdzv_endpoint.rpartition(":")[2]]
    os.environ[LAUNCHED] = "1"  # the workers inherit it: this process prints the summary, not their rank 0
    run(get_args_parser().parse_args([*args, "-m", "selfsup", *argv]))


def setup(device: torch.device, backend: str = "auto") -> tuple[Processes, torch.device]:
    """Join the process group the environment describes (none: one process). A CUDA device becomes this
    process's own GPU (LOCAL_RANK)."""
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


def end_worker() -> None:
    """End a worker process of a multi-process run (no-op in a lone process) once its work is done and written,
    skipping the interpreter's final clean-up. There, gloo's threads may still hold work whose tensors
    reference Python objects, and freeing them while the interpreter is torn down aborts the process
    ('terminate called without an active exception', SIGABRT: about one FSDP run in 20 on CPU, measured), and the
    launcher then reports a finished run as failed."""
    if not under_launcher():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def barrier(procs: Processes) -> None:
    if procs.world > 1:
        dist.barrier()


def all_sum(procs: Processes, *values: float | torch.Tensor, device: torch.device) -> list[float]:
    """Each value summed over the processes (floats back)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if procs.world > 1:
        dist.all_reduce(t)
    return t.tolist()


def any_true(procs: Processes, flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on any (a signal may reach one worker only)."""
    return bool(all_sum(procs, float(flag), device=device)[0]) if procs.world > 1 else flag


def gather_objects(procs: Processes, obj) -> list:
    """Every process's `obj`, rank order, on every process (pickled in memory between our own processes)."""
    if procs.world == 1:
        return [obj]
    out = [None] * procs.world
    dist.all_gather_object(out, obj)
    return out


def lr_scale(cfg: RunConfig, global_batch: int) -> float:
    """The factor the dist.lr_scaling rule applies to optim.lr for this global batch."""
    base = cfg.dist.base_batch or cfg.train.batch_size * cfg.train.grad_accum
    if cfg.dist.lr_scaling == "linear":
        return global_batch / base
    if cfg.dist.lr_scaling == "sqrt":
        return (global_batch / base) ** 0.5
    return 1.0
