"""Everything a run needs before its first step, built in order: processes, data, objective, parallelism,
optimizer, resume, and the start-up lines that say what will train. `train/trainer.py` is the loop over it.

The data comes first: what the objective needs of it (objectives/build.py `data_needs`) is known from the config,
and what the objective is built from (tokenizer, training images or clips, normalisation statistics) from the
data. The statistics are written into the resolved config as values (RunConfig.with_measured), never by changing
the config that was passed in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from selfsup import config as config_mod
from selfsup import dist
from selfsup.config import RunConfig
from selfsup.models.hf.init import load_init
from selfsup.models.sync_batchnorm import synchronize_batchnorm
from selfsup.objectives.build import build_objective
from selfsup.objectives.contract import Objective
from selfsup.seed import seed_everything
from selfsup.train import checkpoint, continual, identity, optim
from selfsup.train.data import RunData
from selfsup.train.errors import TrainingError
from selfsup.train.lock import RunLock, claim
from selfsup.train.loggers import Loggers
from selfsup.train.mfu import peak_flops
from selfsup.train.parallel import is_sharded, parallelize
from selfsup.train.probe import Probe, read_sets
from selfsup.train.schedule import lr_scale
from selfsup.train.step import evaluate


@dataclass
class Run:
    cfg: RunConfig  # resolved: normalisation statistics measured on the data filled in
    procs: dist.Processes
    device: torch.device
    run_dir: Path
    console: Console
    data: RunData
    objective: Objective  # the module whose state is saved, evaluated and exported
    model: torch.nn.Module  # the objective as wrapped for training (DDP, FSDP2): what forward and backward run on
    optimizer: torch.optim.Optimizer
    sharded: bool  # FSDP: every process saves its own shards
    step: int  # optimizer steps done (a resumed run's checkpoint step)
    counters: dict  # checkpointed with the step: skipped steps, elapsed time, units seen, FLOPs per unit, warnings
    trained: list[torch.nn.Parameter]  # what the optimizer updates and the gradient clipping reads
    peak: float  # FLOP/s of one device at the run's precision, for MFU
    batch: dict  # the global batch and its lr, as the summary reports them
    lr_factor: float  # what dist.lr_scaling multiplies optim.lr by
    flops_per_unit: float | None  # text: the PaLM formula; others: counted on this session's second step
    lock: RunLock | None  # rank 0's hold on the run directory, released when the run ends
    loggers: Loggers  # log.to: rank 0's other writers of each record (none on the other processes); closed at the end
    started: float = field(default_factory=time.perf_counter)
    probe: Probe | None = None  # the online probe (probe.train, probe.test), if any

    def __post_init__(self):
        self.elapsed_before = self.counters["elapsed_s"]  # training seconds of the sessions before this one

    @property
    def params(self) -> int:
        """Trained parameters, as the optimizer sees them."""
        return sum(p.numel() for p in self.trained)

    @property
    def unit(self) -> str:
        return self.objective.unit

    def elapsed(self) -> float:
        """Training seconds over every session of this run, this one included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def save(self) -> Path:
        """A checkpoint of this step; returns once it is on disk for every process, or raises
        checkpoint.CheckpointError on every process."""
        state = {"data": self.data.loader.state(), "counters": {**self.counters, "elapsed_s": self.elapsed()}}
        rng = dist.gather_objects(checkpoint.rng_state())
        keep = self.cfg.train.keep_checkpoints
        if self.sharded:  # every process writes its shards
            return checkpoint.save_sharded(self.run_dir, self.step, self.objective, self.optimizer, state, keep, rng,
                                           self.procs)
        return checkpoint.save(self.run_dir, self.step, self.objective, self.optimizer, state, keep, rng,
                               main=self.procs.main)  # rank 0 writes; nobody runs ahead of it

    def validate(self, rows) -> float | None:
        """Mean loss on the validation loader `rows` (None: no validation rows, None back). Batches of a whole
        step's rows (no gradients to keep): the same validation rows whenever the global batch is the same,
        whatever the number of processes; masks and views drawn from the run's seed, the training ones untouched."""
        if rows is None:
            return None
        t = self.cfg.train
        return evaluate(self.objective, rows, t.batch_size * t.grad_accum, t.eval_batches, self.device, t.precision,
                        self.cfg.seed)


def build_run(cfg: RunConfig, console: Console | None = None, allow_changes: list[str] = ()) -> Run:
    """allow_changes: config keys a resumed run may change beyond identity.MAY_CHANGE (`--allow-changes`)."""
    procs, device = dist.setup(dist.resolve_device(cfg.train.device), cfg.dist.backend)
    console = console or Console()
    if not procs.main:  # rank 0 alone speaks and writes the run directory
        console = Console(file=open(os.devnull, "w"))
    run_dir = Path(cfg.out_dir)
    say = lambda text: console.print(f"[dim]{text}")  # noqa: E731
    allowed = identity.allowed_keys(list(allow_changes))
    cfg, changes, lock = _claim(cfg, run_dir, procs, allowed, say)
    try:
        return _build(cfg, procs, device, console, say, allowed, changes, lock)
    except BaseException:
        if lock is not None:
            lock.release(remove_empty=True)  # a directory this run made, if nothing got written into it
        raise


def _build(cfg: RunConfig, procs: dist.Processes, device: torch.device, console: Console, say, allowed: set[str],
           changes: dict, lock: RunLock | None) -> Run:
    t, run_dir = cfg.train, Path(cfg.out_dir)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    probe_sets = read_sets(cfg, procs, device)  # before the run directory is written: a wrong path stops here
    data = _prepare_data(cfg, run_dir, procs, device, say, admit=lambda d: identity.admit(
        _resolved(cfg, d), d.fingerprint, d.tokenizer, run_dir, allowed, changes))
    cfg = _resolved(cfg, data)
    seed_everything(cfg.seed)  # every process builds the same initial weights (DDP checks them too)
    objective = build_objective(cfg, data.tokenizer, data.train_images, clips=data.train_clips).to(device)
    started_from = None
    if cfg.continual.parent:  # continual pretraining starts from the parent's final weights (a checkpoint overrides)
        continual.load_parent(cfg, objective)
    elif cfg.model.init:  # a Hugging Face model's weights (a checkpoint overrides); the lr warms up from step 0
        started_from, line = load_init(cfg, objective, identity.pinned(run_dir, cfg.model.init))
        say(line)
    if procs.world > 1:
        synchronize_batchnorm(objective, device)  # batch statistics of the global batch, as one process
    model = parallelize(objective, cfg, procs, device)  # DDP, FSDP2 or HSDP; activation checkpointing
    if t.compile:
        objective.compile()  # the loss too, so its fp32 upcast fuses into the softmax; state-dict keys unchanged
    optimizer = optim.build(objective, cfg.optim, device)  # after sharding: FSDP's parameters are its shards
    for split in (data.loader, data.val_loader, data.old_val_loader):
        if split is not None:
            split.shard(procs.rank, procs.world)

    unit = objective.unit
    step, counters = 0, {"nan_skipped_steps": 0, "elapsed_s": 0.0, f"{unit}s_seen": 0, "collapse_warnings": 0}
    if procs.main:
        checkpoint.remove_unfinished(run_dir)  # what saves killed half-way left
    try:  # the newest checkpoint that verifies, the same on every process
        last = checkpoint.agreed_latest(run_dir, procs.main, lambda line: console.print(line, style="yellow",
                                                                                        markup=False))
    except checkpoint.CheckpointError as e:
        raise TrainingError(str(e)) from None
    if last is not None:
        state = checkpoint.load(last, objective, optimizer, procs.rank)
        step, counters = state["step"], {**counters, **state["counters"]}
        data.loader.load_state(state["data"])
        console.print(f"resuming from {last} (step {step})")
    if procs.rank and (last is None or not checkpoint.has_rng(last, procs.rank)):
        torch.manual_seed(cfg.seed + 1_000_003 * procs.rank + step)  # each process its own augmentations
    if procs.main:
        identity.record(run_dir, step, changes, allowed, started_from if last is None else None)

    global_batch = t.batch_size * t.grad_accum * procs.world
    lr_factor = lr_scale(cfg, global_batch)
    batch = dict(per_process=t.batch_size, grad_accum=t.grad_accum, processes=procs.world, global_batch=global_batch,
                 units_per_step=global_batch * data.window[1], unit=unit, lr_scaling=cfg.dist.lr_scaling,
                 lr=cfg.optim.lr * lr_factor, base_batch=cfg.dist.base_batch or t.batch_size * t.grad_accum)
    trained = [p for p in objective.parameters() if p.requires_grad]
    dtype = torch.bfloat16 if t.precision == "bf16" else torch.float32
    peak = t.peak_tflops * 1e12 if t.peak_tflops else peak_flops(device, dtype)
    flops = objective.flops_per_token() if unit == "token" else counters.get(f"flops_per_{unit}")
    loggers = Loggers(cfg.log.to if procs.main else [], run_dir, cfg, step,
                      lambda line: console.print(line, style="yellow", markup=False))
    run = Run(cfg, procs, device, run_dir, console, data, objective, model, optimizer, is_sharded(objective), step,
              counters, trained, peak, batch, lr_factor, flops, lock, loggers)
    if probe_sets is not None:
        run.probe = Probe(cfg, probe_sets, objective, data.tokenizer, device, procs, run_dir)
    _banner(run)
    return run


def _claim(cfg: RunConfig, run_dir: Path, procs: dist.Processes, allowed: set[str],
           say) -> tuple[RunConfig, dict, RunLock | None]:
    """Before anything is read or written: rank 0 locks the run directory and resolves `cfg` against the run it
    holds (identity.resume_config: a resume may change only what it may). Every process gets rank 0's config and
    the changes, or stops with rank 0."""
    lock, changes, error = None, {}, None
    if procs.main:
        try:
            lock = claim(run_dir, say)
            cfg, changes = identity.resume_config(cfg, run_dir, allowed)
        except Exception as e:  # the others must not wait for a process that has given up
            error = e
    if procs.world > 1:
        tree = dist.gather_objects(cfg.model_dump(mode="json") if procs.main and error is None else None)[0]
        if tree is None and error is None:
            raise TrainingError("process 0 could not start the run; its error is in the log above")
        if tree is not None:
            cfg = config_mod.validate(tree)
    if error is not None:
        if lock is not None:
            lock.release(remove_empty=True)
        raise error
    return cfg, changes, lock


def _resolved(cfg: RunConfig, data: RunData) -> RunConfig:
    """The config with the normalisation statistics measured on the data, where it leaves them unset."""
    return cfg.with_measured(*data.norm) if data.norm is not None else cfg


def _prepare_data(cfg: RunConfig, run_dir: Path, procs: dist.Processes, device: torch.device, log, admit) -> RunData:
    """The data cache is made once per machine: rank 0 first, then the first process of every other machine, then
    everyone else, who find it made. Rank 0 then `admit`s it (identity.admit: it is the run's data; the run
    directory is written), before the others read a resumed pairs run's tokenizer from there."""
    data, error = None, None
    for turn in (procs.main, procs.local_main and not procs.main, not procs.local_main):
        if turn:
            try:
                data = RunData(cfg, run_dir, log=log)
                if procs.main:
                    admit(data)
            except Exception as e:  # the others must not wait for a process that has given up
                error = e
        if dist.any_true(error is not None, device):  # also the barrier between turns
            if error is not None:
                raise error
            raise TrainingError("another process failed to prepare the data; its error is in the log above")
    return data


def _banner(run: Run) -> None:
    cfg, t, b, unit = run.cfg, run.cfg.train, run.batch, run.unit
    described, per_sample = run.data.window
    run.console.print(f"{cfg.recipe}: {run.params / 1e6:.2f}M trained parameters on {run.device} ({t.precision}), "
                      f"{described}, {t.max_steps:,} steps")
    if cfg.continual.parent:
        run.console.print(f"continuing {cfg.continual.parent} (its final weights) on {cfg.data.path}; the lr schedule "
                          f"starts again: {cfg.sched.warmup_steps} warm-up steps")
    for line in cfg.fitted:  # budget.py: what a setting the user left alone is for a run of this length
        run.console.print(f"fitted to the run's length: {line}", markup=False)
    run.console.print(f"global batch {b['global_batch']:,} = {t.batch_size} per process × {t.grad_accum} "
                      f"accumulated × {b['processes']} process(es) = {b['global_batch'] * per_sample:,} {unit}s per "
                      f"step; peak lr {b['lr']:.3g} (optim.lr × {run.lr_factor:.3g}, "
                      f"dist.lr_scaling={cfg.dist.lr_scaling})")
