"""One optimizer step, and the validation loss: the arithmetic of the loop, apart from its bookkeeping.

Under gradient accumulation each micro-batch's *summed* loss is back-propagated and the accumulated gradient
is divided once by the count of the whole step (e.g. valid tokens), so `grad_accum=4, batch=8` gives the same
gradient as `grad_accum=1, batch=32`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from selfsup import dist
from selfsup.objectives.contract import Objective
from selfsup.objectives.output import LossOutput
from selfsup.seed import fixed_draws
from selfsup.train.mfu import count_flops
from selfsup.train.parallel import no_sync


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def accumulate(model, batches, device: torch.device, precision: str):
    """Forward and backward every micro-batch of one optimizer step, then divide the summed gradient by the
    count of the whole step over all processes. `model` is the objective, wrapped or sharded (train/parallel.py):
    DDP and FSDP average the gradients over the processes once, on the last micro-batch. Returns (mean loss per
    term over all processes, units processed by all, the last micro-batch's output, whose embeddings the collapse
    monitor reads)."""
    loss_sum, count, units, out = torch.zeros((), device=device), torch.zeros((), device=device), 0, None
    batches = list(batches)
    for i, batch in enumerate(batches):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with no_sync(model, last=i == len(batches) - 1):
            with autocast(device, precision):
                out = model(batch)
            out.loss.backward()
        loss_sum += out.loss.detach()
        count += out.count
        units += out.units
    total_loss, total_count = dist.all_sum(loss_sum, count, device=device)
    world = dist.rank_and_world()[1]
    # DDP averaged the summed gradients over the processes: × world / global count gives the global mean
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    torch._foreach_mul_(grads, world / max(total_count, 1))
    return total_loss / max(total_count, 1), units * world, out


@dataclass
class StepResult:
    loss: float  # mean loss per term over all processes
    grad_norm: float  # before clipping
    units: int  # processed by all processes
    out: LossOutput  # the last micro-batch's
    flops: float | None  # counted on this process, when asked to
    applied: bool  # False: the loss or gradient was not finite and the optimizer step was skipped


def optimizer_step(objective: Objective, model, optimizer: torch.optim.Optimizer, trained: list[torch.nn.Parameter],
                   batches, step: int, lr: float, device: torch.device, precision: str, clip_grad: float | None,
                   count: bool = False) -> StepResult:
    """Optimizer step `step` (counted from 1) at `lr` on `batches`; `trained`: the parameters whose gradient norm is
    clipped (those the optimizer updates); count: measure its FLOPs with FlopCounterMode.
    The objective's hooks run around the update: before_step after the backward (gradients it holds back),
    after_step after it (EMA teachers, centres, logit-scale clamps, re-initialised heads, whose optimizer state
    restarts)."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    flops = None
    if count:
        flops, (loss, units, out) = count_flops(lambda: accumulate(model, batches, device, precision))
    else:
        loss, units, out = accumulate(model, batches, device, precision)
    grad_norm = torch.nn.utils.clip_grad_norm_(trained, clip_grad or float("inf"))
    grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()  # FSDP: DTensor
    applied = math.isfinite(loss) and math.isfinite(grad_norm)
    if applied:
        objective.before_step(step)
        optimizer.step()
        objective.after_step(step)
        restart_state(optimizer, objective.reinitialised(step))
    return StepResult(loss, grad_norm, units, out, flops, applied)


def restart_state(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    """The optimizer state of `params` as a fresh optimizer has it: every tensor zeroed (moments, momentum, the step
    count of Adam's bias correction). Zeroed in place rather than dropped, so a checkpoint holds the same entries
    either way: FSDP's sharded resume loads into every entry a fresh run's optimizer has. The state is keyed by the
    parameters the optimizer holds, which are the objective's own (FSDP's sharded ones once wrapped)."""
    for p in params:
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value):
                value.zero_()


@torch.no_grad()
def evaluate(objective: Objective, loader, batch_size: int, batches: int, device, precision: str, seed: int) -> float:
    """Mean loss per unit over the first `batches` validation batches (the same ones every time), over all
    processes. Masks and views are drawn from generators seeded `seed` for the occasion (seed.fixed_draws): the same
    at every evaluation, and the training generators are left where they were, so how often a run validates does
    not change what it trains on."""
    world = dist.rank_and_world()[1]
    was_training = objective.training
    objective.eval()
    loader.load_state({"epoch": 0, "index": 0})
    total, count = 0.0, 0
    per = min(batch_size, max(len(loader) // world, 1))
    with fixed_draws(seed):
        for _ in range(min(batches, max(len(loader) // (per * world), 1))):
            batch = {k: v.to(device) for k, v in loader.next_batch(per).items()}
            with autocast(device, precision):
                out = objective(batch)
            total += out.loss.item()
            count += int(out.count)
    objective.train(was_training)
    total, count = dist.all_sum(total, count, device=device)
    return total / max(count, 1)
