"""The training loop over a run that train/setup.py built: it draws batches, has train/step.py compute the loss and
update the weights, logs (train/record.py), checkpoints, and stops cleanly on a signal or after too many
non-finite steps. It sees objectives only through their contract (objectives/contract.py)."""

from __future__ import annotations

import signal
import time

from rich.console import Console

from selfsup import dist
from selfsup.config import RunConfig
from selfsup.train import checkpoint
from selfsup.train.monitor import Monitor
from selfsup.train.record import Records
from selfsup.train.schedule import lr_at
from selfsup.train.errors import TrainingError
from selfsup.train.setup import Run, build_run
from selfsup.train.step import optimizer_step
from selfsup.train.summary import summarize

__all__ = ["train", "TrainingError"]


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


def train(cfg: RunConfig, console: Console | None = None, allow_changes: list[str] = ()) -> dict:
    """Train (or resume) the run `cfg` describes; its summary. allow_changes: `--allow-changes` (train/identity.py)."""
    run = build_run(cfg, console, allow_changes)
    try:
        return _loop(run)
    finally:
        run.loggers.close()
        if run.lock is not None:
            run.lock.release()


def _loop(run: Run) -> dict:
    t, unit = run.cfg.train, run.unit
    monitor = Monitor(run.run_dir, t.max_steps, run.step, run.console, unit, write=run.procs.main)
    records = Records(run, monitor)
    run.started = time.perf_counter()  # training time: from here, as metrics.jsonl's `time` and elapsed_s count it
    status, bad_in_a_row, steps_here, due = "finished", 0, 0, False
    run.objective.train()
    with _StopFlag() as stop:
        while run.step < t.max_steps:
            lr = lr_at(run.step, t.max_steps, run.cfg.optim.lr * run.lr_factor, run.cfg.sched)
            batches = (run.data.loader.next_batch(t.batch_size) for _ in range(t.grad_accum))
            steps_here += 1
            count = run.flops_per_unit is None and steps_here == 2  # after any lazy set-up (codebooks, clusters)
            result = optimizer_step(run.objective, run.model, run.optimizer, run.trained, batches, run.step + 1, lr,
                                    run.device, t.precision, t.clip_grad, count)
            run.step += 1
            if count:
                run.flops_per_unit = result.flops * run.procs.world / max(result.units, 1)
                run.counters[f"flops_per_{unit}"] = run.flops_per_unit
            run.counters[f"{unit}s_seen"] += result.units
            bad_in_a_row = 0 if result.applied else bad_in_a_row + 1
            if not result.applied:
                run.counters["nan_skipped_steps"] += 1
                monitor.say(f"[yellow]step {run.step}: non-finite loss or gradient, step skipped ({bad_in_a_row} "
                            "in a row)")
                if bad_in_a_row >= t.max_bad_steps:
                    monitor.close()
                    raise TrainingError(_diverged(run, bad_in_a_row))
            run.optimizer.zero_grad(set_to_none=True)
            records.add(run.step, lr, result)

            last_step = run.step == t.max_steps
            stopping = dist.any_true(stop.signal is not None, run.device)  # all processes stop together
            scheduled = run.step % t.checkpoint_every == 0 or last_step or stopping
            due, saved = due or scheduled, False
            if due and _healthy(run, bad_in_a_row):
                _save(run, monitor)
                due, saved = False, True
            elif scheduled:
                monitor.say(f"[yellow]step {run.step}: not checkpointed, the run is not finite; the last good "
                            "checkpoint is kept (a checkpoint is written at the next finite step)")
            if stopping and not last_step:
                status = "interrupted"
                monitor.say(f"[yellow]stopped by signal {stop.signal or 'on another process'} at step {run.step}; "
                            f"{'checkpoint saved' if saved else 'the last good checkpoint is kept'}. Resume with: "
                            f"selfsup train {run.run_dir}")
                break
    monitor.close()
    run.counters["elapsed_s"] = run.elapsed()

    val_loss = records.val_loss
    if status == "finished":
        if val_loss is None:  # resumed a run that had already finished
            val_loss = run.validate(run.data.val_loader)
        checkpoint.save_final(run.run_dir / "model.safetensors", run.objective, run.procs.main, run.sharded)
    run.data.close()
    summary = summarize(run, status, val_loss, stop.signal)
    dist.barrier()
    return summary


def _healthy(run: Run, bad_in_a_row: int) -> bool:
    """A checkpoint is written only from a finite state (checkpoint.py): not inside a streak of skipped steps, and
    every weight, buffer and optimizer tensor finite on every process."""
    if bad_in_a_row:  # the same on every process: the loss and gradient norm are global
        return False
    return not dist.any_true(not checkpoint.finite(run.objective, run.optimizer), run.device)


def _save(run: Run, monitor: Monitor) -> None:
    try:
        run.save()
    except checkpoint.CheckpointError as e:  # disk full, quota, I/O error: on every process at once
        monitor.close()
        raise TrainingError(str(e)) from None


def _diverged(run: Run, bad: int) -> str:
    """The stop after train.max_bad_steps non-finite steps: nothing was checkpointed since they began."""
    first, good = run.step - bad + 1, checkpoint.checkpoints(run.run_dir)
    if good:
        where = (f"the last good checkpoint is {good[-1]}, written before them: resume from it with `selfsup train "
                 f"{run.run_dir}` and")
    else:
        where = f"no checkpoint was written before them: start again with `selfsup train {run.run_dir}` and"
    return (f"the loss was not finite for {bad} steps in a row (steps {first}-{run.step}); {where} a lower "
            f"optim.lr (now {run.cfg.optim.lr:g}), more sched.warmup_steps, train.clip_grad=1.0 or "
            "train.precision=fp32, naming what you change in --allow-changes (e.g. --allow-changes optim.lr)")
