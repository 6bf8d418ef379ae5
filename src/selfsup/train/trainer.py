"""The training loop. It knows nothing about any objective: it moves batches, calls the objective for a summed
loss and its count, steps the optimizer, logs, evaluates and checkpoints.

Under gradient accumulation each micro-batch's *summed* loss is back-propagated and the accumulated gradient
is divided once by the count of the whole step (e.g. valid tokens), so `grad_accum=4, batch=8` gives the same
gradient as `grad_accum=1, batch=32`.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from selfsup import config as config_mod
from selfsup.config import RunConfig
from selfsup.data.loader import RowLoader
from selfsup.data.packing import PackedWindows
from selfsup.models.sync_batchnorm import synchronize_batchnorm
from selfsup.objectives.build import build_objective
from selfsup.train import checkpoint, continual, distributed, optim
from selfsup.train.collapse import collapse_metrics, collapse_warning
from selfsup.train.cost import nominal_power, run_cost
from selfsup.train.data import RunData
from selfsup.train.distributed import Processes
from selfsup.train.mfu import count_flops, peak_flops
from selfsup.train.monitor import Monitor, read_metrics
from selfsup.train.parallel import is_sharded, no_sync, parallelize
from selfsup.train.schedule import lr_at
from selfsup.views import batch_random


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to try."""


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    batch_random.seed(seed)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into 'checkpoint and stop after this step'; a second one kills."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@torch.no_grad()
def evaluate(objective, loader: PackedWindows | RowLoader, batch_size: int, batches: int, device,
             precision: str, procs: Processes = Processes()) -> float:
    """Mean loss per unit over the first `batches` validation batches (the same ones every time), over all
    processes."""
    was_training = objective.training
    objective.eval()
    loader.load_state({"epoch": 0, "index": 0})
    total, count = 0.0, 0
    per = min(batch_size, max(len(loader) // procs.world, 1))
    for _ in range(min(batches, max(len(loader) // (per * procs.world), 1))):
        batch = {k: v.to(device) for k, v in loader.next_batch(per).items()}
        with autocast(device, precision):
            out = objective(batch)
        total += out.loss.item()
        count += int(out.count)
    objective.train(was_training)
    total, count = distributed.all_sum(procs, total, count, device=device)
    return total / max(count, 1)


def accumulate(model, batches, device: torch.device, precision: str, procs: Processes = Processes()):
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
    total_loss, total_count = distributed.all_sum(procs, loss_sum, count, device=device)
    # DDP averaged the summed gradients over the processes: × world / global count gives the global mean
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    torch._foreach_mul_(grads, procs.world / max(total_count, 1))
    return total_loss / max(total_count, 1), units * procs.world, out


def train(cfg: RunConfig, console: Console | None = None) -> dict:
    t_cfg = cfg.train
    procs, device = distributed.setup(resolve_device(t_cfg.device), cfg.dist.backend)
    console = console or Console()
    if not procs.main:  # rank 0 alone speaks and writes the run directory
        console = Console(file=open(os.devnull, "w"))
    run_dir = Path(cfg.out_dir)
    if procs.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    log = lambda text: console.print(f"[dim]{text}")  # noqa: E731
    # the data cache is made once per machine: rank 0 first (it also trains a caption tokenizer into the run
    # directory), then the first process of every other machine, then everyone else, who find it made
    error = None
    for turn in (procs.main, procs.local_main and not procs.main, not procs.local_main):
        if turn:
            try:
                data = RunData(cfg, run_dir, log=log, write=procs.main)
            except Exception as e:  # the others must not wait for a process that has given up
                error = e
        if distributed.any_true(procs, error is not None, device):  # also the barrier between turns
            if error is not None:
                raise error
            raise TrainingError("another process failed to prepare the data; its error is in the log above")
    seed_everything(cfg.seed)  # every process builds the same initial weights (DDP checks them too)
    objective = build_objective(cfg, data.tokenizer, data.train_images, clips=data.train_clips).to(device)
    if cfg.continual.parent:  # continual pretraining starts from the parent's final weights (a checkpoint overrides)
        continual.load_parent(cfg, objective)
    if procs.world > 1:
        synchronize_batchnorm(objective, device)  # batch statistics of the global batch, as one process
    model = parallelize(objective, cfg, procs, device)  # DDP, FSDP2 or HSDP; activation checkpointing
    sharded = is_sharded(objective)
    if t_cfg.compile:
        objective.compile()  # the loss too, so its fp32 upcast fuses into the softmax; state-dict keys unchanged
    optimizer = optim.build(objective, cfg.optim, device)  # after sharding: FSDP's parameters are its shards
    if cfg.modality == "text":
        data.text_loaders(cfg, objective.window_overlap)
    loader, val_loader = data.loader, data.val_loader
    if not getattr(objective, "validates", True):
        val_loader = None  # e.g. DeepCluster: pseudo-labels exist for training images only
    for split in (loader, val_loader, data.old_val_loader):
        if split is not None:
            split.shard(procs.rank, procs.world)
    unit = objective.unit  # "token", "image", "pair" or "clip": what throughput and MFU count

    step, counters = 0, {"nan_skipped_steps": 0, "elapsed_s": 0.0, f"{unit}s_seen": 0, "collapse_warnings": 0}
    last = checkpoint.latest(run_dir)
    if last is not None:
        state = checkpoint.load(last, objective, optimizer, procs.rank)
        step, counters = state["step"], {**counters, **state["counters"]}
        loader.load_state(state["data"])
        console.print(f"resuming from {last} (step {step})")
    if procs.rank and (last is None or not checkpoint.has_rng(last, procs.rank)):
        torch.manual_seed(cfg.seed + 1_000_003 * procs.rank + step)  # each process its own augmentations
    if procs.main:
        (run_dir / "config.yaml").write_text(config_mod.dump(cfg))

    params = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    # text: the PaLM formula; others: counted by torch's FlopCounterMode on this process's second step
    flops_per_unit = objective.flops_per_token() if unit == "token" else counters.get(f"flops_per_{unit}")
    dtype = torch.bfloat16 if t_cfg.precision == "bf16" else torch.float32
    peak = t_cfg.peak_tflops * 1e12 if t_cfg.peak_tflops else peak_flops(device, dtype)
    described, per_sample = data.window
    global_batch = t_cfg.batch_size * t_cfg.grad_accum * procs.world
    lr_factor = distributed.lr_scale(cfg, global_batch)
    batch_info = dict(per_process=t_cfg.batch_size, grad_accum=t_cfg.grad_accum, processes=procs.world,
                      global_batch=global_batch, units_per_step=global_batch * per_sample, unit=unit,
                      lr_scaling=cfg.dist.lr_scaling, lr=cfg.optim.lr * lr_factor,
                      base_batch=cfg.dist.base_batch or t_cfg.batch_size * t_cfg.grad_accum)
    console.print(f"{cfg.recipe}: {params / 1e6:.2f}M trained parameters on {device} ({t_cfg.precision}), "
                  f"{described}, {t_cfg.max_steps:,} steps")
    if cfg.continual.parent:
        console.print(f"continuing {cfg.continual.parent} (its final weights) on {cfg.data.path}; the lr schedule "
                      f"starts again: {cfg.sched.warmup_steps} warm-up steps")
    console.print(f"global batch {global_batch:,} = {t_cfg.batch_size} per process × {t_cfg.grad_accum} "
                  f"accumulated × {procs.world} process(es) = {global_batch * per_sample:,} {unit}s per step; "
                  f"peak lr {batch_info['lr']:.3g} (optim.lr × {lr_factor:.3g}, dist.lr_scaling={cfg.dist.lr_scaling})")

    monitor = Monitor(run_dir, t_cfg.max_steps, step, console, unit, write=procs.main)
    params_list = [p for p in objective.parameters() if p.requires_grad]
    t_start, elapsed_before = time.perf_counter(), counters["elapsed_s"]

    def save() -> Path:
        counters["elapsed_s"] = elapsed_before + time.perf_counter() - t_start
        state = {"data": loader.state(), "counters": counters}
        rng = distributed.gather_objects(procs, checkpoint.rng_state())
        if sharded:  # every process writes its shards
            return checkpoint.save_sharded(run_dir, step, objective, optimizer, state, t_cfg.keep_checkpoints, rng,
                                           procs)
        path = None
        if procs.main:
            path = checkpoint.save(run_dir, step, objective, optimizer, state, t_cfg.keep_checkpoints, rng)
        distributed.barrier(procs)  # nobody runs ahead of a checkpoint that is not on disk yet
        return path

    def validate(rows=val_loader) -> float | None:
        if rows is None:
            return None
        # batches of a whole step's rows (no gradients to keep): the same validation rows whenever the global
        # batch is the same, whatever the number of processes
        return evaluate(objective, rows, t_cfg.batch_size * t_cfg.grad_accum, t_cfg.eval_batches, device,
                        t_cfg.precision, procs)

    bad_in_a_row, status, val_loss, steps_here = 0, "finished", None, 0
    t_log, units_log, loss_log = time.perf_counter(), 0, []
    objective.train()
    with _StopFlag() as stop:
        while step < t_cfg.max_steps:
            lr = lr_at(step, t_cfg.max_steps, cfg.optim.lr * lr_factor, cfg.sched)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batches = (loader.next_batch(t_cfg.batch_size) for _ in range(t_cfg.grad_accum))
            steps_here += 1
            if flops_per_unit is None and steps_here == 2:  # after any lazy set-up (codebooks, first clustering)
                flops, (loss_value, units, out) = count_flops(
                    lambda: accumulate(model, batches, device, t_cfg.precision, procs))
                flops_per_unit = counters[f"flops_per_{unit}"] = flops * procs.world / max(units, 1)
            else:
                loss_value, units, out = accumulate(model, batches, device, t_cfg.precision, procs)
            grad_norm = torch.nn.utils.clip_grad_norm_(params_list, t_cfg.clip_grad or float("inf"))
            grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()
            step += 1
            counters[f"{unit}s_seen"] += units
            units_log += units
            last_step = step == t_cfg.max_steps
            if math.isfinite(loss_value) and math.isfinite(grad_norm):
                bad_in_a_row = 0
                if hasattr(objective, "before_step"):  # gradients an objective holds back (DINO's last layer)
                    objective.before_step(step)
                optimizer.step()
                loss_log.append(loss_value)
                if hasattr(objective, "after_step"):  # EMA teachers, centers, logit-scale clamps
                    objective.after_step(step)
            else:
                counters["nan_skipped_steps"] += 1
                bad_in_a_row += 1
                monitor.say(f"[yellow]step {step}: non-finite loss or gradient, step skipped ({bad_in_a_row} in a row)")
                if bad_in_a_row >= t_cfg.max_bad_steps:
                    optimizer.zero_grad(set_to_none=True)
                    save()
                    monitor.close()
                    raise TrainingError(
                        f"the loss was not finite for {bad_in_a_row} steps in a row (up to step {step}); a checkpoint "
                        f"was saved in {run_dir}/checkpoints. Try a lower optim.lr, more sched.warmup_steps, "
                        "train.clip_grad=1.0 or train.precision=fp32")
            optimizer.zero_grad(set_to_none=True)

            evaluate_now = step % t_cfg.eval_every == 0 or last_step
            # the same decision on every process (validation is collective); rank 0 alone reads the collapse monitor
            collapse_now = bool(out.embeddings) and (step % cfg.ssl.collapse_every == 0 or last_step)
            if loss_log and (step % t_cfg.log_every == 0 or evaluate_now or collapse_now):
                now = time.perf_counter()
                rate = units_log / (now - t_log)
                record = {"step": step, "loss": sum(loss_log) / len(loss_log), "lr": lr, f"{unit}s_per_s": rate,
                          "mfu": rate * flops_per_unit / (peak * procs.world) if flops_per_unit else None,
                          "grad_norm": grad_norm,
                          "time": elapsed_before + now - t_start}
                record.update({k: float(v) for k, v in out.metrics.items()})  # the objective's own readings
                if collapse_now and procs.main:
                    readings = collapse_metrics(out.embeddings, out.projections)
                    record.update({f"collapse_{k}": v for k, v in readings.items()})
                    warning = collapse_warning(readings, out.embeddings, out.projections)
                    if warning:
                        counters["collapse_warnings"] += 1
                        record["collapse_warning"] = warning
                        monitor.say(f"[yellow]step {step}: {warning}")
                if evaluate_now:
                    val_loss = validate()
                    if val_loss is not None:
                        record["val_loss"] = val_loss
                        text = f"step {step:>6}: loss {record['loss']:.4f}  val_loss {val_loss:.4f}"
                        if cfg.objective in config_mod.TEXT_OBJECTIVES:  # a loss per token predicted
                            record["val_ppl"] = math.exp(min(val_loss, 50))
                            text += f"  val_ppl {record['val_ppl']:.2f}"
                        old = validate(data.old_val_loader)  # continual pretraining: forgetting as it happens
                        if old is not None:
                            record["val_loss_old"] = old
                            text += f"  val_loss_old {old:.4f}"
                        monitor.say(text)
                monitor.log(record)
                t_log, units_log, loss_log = time.perf_counter(), 0, []  # throughput counts training time only
            stopping = distributed.any_true(procs, stop.signal is not None, device)  # all stop together
            if step % t_cfg.checkpoint_every == 0 or last_step or stopping:
                save()
            if stopping and not last_step:
                status = "interrupted"
                monitor.say(f"[yellow]stopped by signal {stop.signal or 'on another process'} at step {step}; "
                            "checkpoint saved. "
                            f"Resume with: selfsup train {run_dir}")
                break
    monitor.close()
    counters["elapsed_s"] = elapsed_before + time.perf_counter() - t_start

    if status == "finished":
        if val_loss is None:  # resumed a run that had already finished
            val_loss = validate()
        checkpoint.save_final(run_dir / "model.safetensors", objective, procs.main, sharded)  # backbone and heads
    data.close()
    summary = _summary(cfg, run_dir, data, unit, status, step, counters, params, flops_per_unit, peak, device,
                       val_loss, batch_info, write=procs.main)
    distributed.barrier(procs)
    return summary


def _summary(cfg, run_dir, data: RunData, unit, status, step, counters, params, flops_per_unit, peak, device,
             val_loss, batch: dict, write: bool = True) -> dict:
    records = read_metrics(run_dir / "metrics.jsonl")
    rate_key = f"{unit}s_per_s"
    speeds = [r[rate_key] for r in records if r.get(rate_key)]
    rate = counters[f"{unit}s_seen"] / counters["elapsed_s"] if counters["elapsed_s"] else 0.0
    if speeds:  # the median logged throughput: not skewed by start-up, evaluation or checkpoints
        rate = float(np.median(speeds))
    text = cfg.objective in config_mod.TEXT_OBJECTIVES  # a perplexity: the loss is per token predicted
    summary = {
        "status": status, "recipe": cfg.recipe, "objective": cfg.objective, "unit": unit, "steps": step,
        f"{unit}s_seen": counters[f"{unit}s_seen"], "wall_time_s": round(counters["elapsed_s"], 2), rate_key: rate,
        "mfu": rate * flops_per_unit / (peak * batch["processes"]) if flops_per_unit else None,
        "peak_tflops": peak / 1e12,
        f"flops_per_{unit}": flops_per_unit, "params": params, "device": str(device),
        "precision": cfg.train.precision, "final_loss": records[-1]["loss"] if records else None,
        "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)) if text and val_loss is not None else None,
        "unigram_ppl": data.unigram_ppl, "nan_skipped_steps": counters["nan_skipped_steps"],
        "collapse_warnings": counters["collapse_warnings"],
        "cost": run_cost(flops_per_unit, counters[f"{unit}s_seen"], counters["elapsed_s"],
                         *nominal_power(device, cfg.train.device_watts)),
        "batch": batch, "data": data.summary,
    }
    if write:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
