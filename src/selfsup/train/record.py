"""The lines of metrics.jsonl: what the loop gathers between two of them, and each record it writes.

A record holds at least step, loss (the mean of the applied steps since the last record), lr, a throughput
(`<unit>s_per_s`, training time only), MFU and the gradient norm; then the objective's own metrics, the collapse
monitor's readings (every ssl.collapse_every steps, rank 0), the validation loss (every train.eval_every steps,
a perplexity beside it where the loss is one per token, and the old domain's loss under continual pretraining), and
the online probe's accuracies and seconds (every probe.every steps: probe_knn_acc, probe_linear_acc, probe_s).
"""

from __future__ import annotations

import math
import time

from selfsup.train.collapse import collapse_metrics, collapse_warning
from selfsup.train.monitor import Monitor
from selfsup.train.setup import Run
from selfsup.train.step import StepResult


class Records:
    def __init__(self, run: Run, monitor: Monitor):
        self.run, self.monitor = run, monitor
        self.val_loss: float | None = None  # the latest validation loss
        self._reset()

    def _reset(self) -> None:
        self.since, self.units, self.losses = time.perf_counter(), 0, []

    def add(self, step: int, lr: float, result: StepResult) -> None:
        """Step `step` is done: count it, and write a record when one is due."""
        run, t = self.run, self.run.cfg.train
        self.units += result.units
        if result.applied:
            self.losses.append(result.loss)
        last_step = step == t.max_steps
        evaluate_now = step % t.eval_every == 0 or last_step
        # the same decision on every process (validation is collective); rank 0 alone reads the collapse monitor
        out = result.out
        collapse_now = bool(out.embeddings) and (step % run.cfg.ssl.collapse_every == 0 or last_step)
        probe_now = run.probe is not None and run.probe.due(step, last_step)  # collective: every process encodes
        if not self.losses or not (step % t.log_every == 0 or evaluate_now or collapse_now or probe_now):
            return
        now = time.perf_counter()
        rate = self.units / (now - self.since)
        flops = run.flops_per_unit
        record = {"step": step, "loss": sum(self.losses) / len(self.losses), "lr": lr, f"{run.unit}s_per_s": rate,
                  "mfu": rate * flops / (run.peak * run.procs.world) if flops else None,
                  "grad_norm": result.grad_norm, "time": run.elapsed_before + now - run.started}
        record.update({k: float(v) for k, v in out.metrics.items()})  # the objective's own readings
        if collapse_now and run.procs.main:
            self._collapse(step, record, out)
        if evaluate_now:
            self._validate(step, record)
        if probe_now:
            self._probe(step, record)
        self.monitor.log(record)
        run.loggers.log(record)  # log.to: the same record to TensorBoard, W&B, MLflow, CSV
        self._reset()  # throughput counts training time only

    def _collapse(self, step: int, record: dict, out) -> None:
        readings = collapse_metrics(out.embeddings, out.projections)
        record.update({f"collapse_{k}": v for k, v in readings.items()})
        warning = collapse_warning(readings, out.embeddings, out.projections)
        if warning:
            self.run.counters["collapse_warnings"] += 1
            record["collapse_warning"] = warning
            self.monitor.say(f"[yellow]step {step}: {warning}")

    def _validate(self, step: int, record: dict) -> None:
        run = self.run
        self.val_loss = run.validate(run.data.val_loader)
        if self.val_loss is None:
            return
        record["val_loss"] = self.val_loss
        text = f"step {step:>6}: loss {record['loss']:.4f}  val_loss {self.val_loss:.4f}"
        if run.objective.token_nll:
            record["val_ppl"] = math.exp(min(self.val_loss, 50))
            text += f"  val_ppl {record['val_ppl']:.2f}"
        old = run.validate(run.data.old_val_loader)  # continual pretraining: forgetting as it happens
        if old is not None:
            record["val_loss_old"] = old
            text += f"  val_loss_old {old:.4f}"
        self.monitor.say(text)

    def _probe(self, step: int, record: dict) -> None:
        scored = self.run.probe(step)
        if scored is not None:  # rank 0
            record.update(scored[0])
            self.monitor.say(scored[1])
