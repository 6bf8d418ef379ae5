"""How a built objective is spread over the processes, applied from outside the model (as torchtitan's
parallelize.py): DDP, FSDP2 (`fully_shard` per transformer block, then the whole objective) or HSDP (FSDP within a
machine, replicated across machines), and activation checkpointing per block.

    model = parallelize(objective, cfg, procs, device)   # the module to call forward on; `objective` keeps the API
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from selfsup.config import RunConfig
from selfsup.dist import Processes
from selfsup.models.blocks import Block


def blocks(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of every tower (trunks, ViTs, decoders, teachers): the unit of sharding and
    of activation checkpointing."""
    return [m for m in module.modules() if isinstance(m, Block)]


def checkpoint_activations(module: nn.Module) -> None:
    """Each block keeps only its input for backward and recomputes the rest (torch.utils.checkpoint,
    non-reentrant): memory per block drops from all its activations to one (B, T, D) tensor, for ~1/3 more
    compute. State-dict keys are unchanged."""
    for block in blocks(module):
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)


def parallelize(objective: nn.Module, cfg: RunConfig, procs: Processes, device: torch.device) -> nn.Module:
    if cfg.train.activation_checkpointing:
        checkpoint_activations(objective)
    if procs.world == 1:
        return objective
    if cfg.dist.strategy == "ddp":
        # gradients averaged over the processes; buffers start equal (synced at init), then queues, centres and
        # BatchNorm statistics are kept in step by the objectives themselves, not by rank 0
        return DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None,
                                       forward_sync_buffers=False)
    if cfg.dist.strategy == "hsdp":  # shard within a machine (as the launcher counts it), replicate across
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", procs.world // cfg.dist.nnodes))
        mesh = init_device_mesh(device.type, (procs.world // per_node, per_node),
                                mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (procs.world,))
    # bf16: parameters gathered in bf16 for compute, gradients reduced and kept in fp32 (the master copy)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if cfg.train.precision == "bf16" else MixedPrecisionPolicy()
    for block in blocks(objective):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(objective, mesh=mesh, mp_policy=mp)
    return objective


def is_sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "device_mesh") for p in model.parameters())


@contextmanager
def no_sync(model: nn.Module, last: bool):
    """The context for one micro-batch's backward: gradients are reduced across processes on the last only."""
    if last:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
