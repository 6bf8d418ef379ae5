"""summary.json: a run's final figures (status, steps, throughput, MFU, losses, cost, batch, data, and the model it
started from)."""

from __future__ import annotations

import json
import math

import numpy as np

from selfsup.train import identity
from selfsup.train.cost import nominal_power, run_cost
from selfsup.train.monitor import read_metrics
from selfsup.train.setup import Run


def summarize(run: Run, status: str, val_loss: float | None, signal: int | None = None) -> dict:
    """The summary of `run` as it stands; rank 0 writes it to summary.json. signal: what stopped an interrupted run
    (None: it stopped because another process received one), for the exit status."""
    cfg, unit, counters = run.cfg, run.unit, run.counters
    records = read_metrics(run.run_dir / "metrics.jsonl")
    rate_key = f"{unit}s_per_s"
    speeds = [r[rate_key] for r in records if r.get(rate_key)]
    rate = counters[f"{unit}s_seen"] / counters["elapsed_s"] if counters["elapsed_s"] else 0.0
    if speeds:  # the median logged throughput: not skewed by start-up, evaluation or checkpoints
        rate = float(np.median(speeds))
    flops = run.flops_per_unit
    perplexity = run.objective.token_nll and val_loss is not None
    summary = {
        "status": status, "signal": signal, "recipe": cfg.recipe, "objective": cfg.objective, "unit": unit, "steps": run.step,
        f"{unit}s_seen": counters[f"{unit}s_seen"], "wall_time_s": round(counters["elapsed_s"], 2), rate_key: rate,
        "mfu": rate * flops / (run.peak * run.batch["processes"]) if flops else None,
        "peak_tflops": run.peak / 1e12,
        f"flops_per_{unit}": flops, "params": run.params, "device": str(run.device),
        "precision": cfg.train.precision, "final_loss": records[-1]["loss"] if records else None,
        "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)) if perplexity else None,
        "unigram_ppl": run.data.unigram_ppl, "nan_skipped_steps": counters["nan_skipped_steps"],
        "collapse_warnings": counters["collapse_warnings"],
        "cost": run_cost(flops, counters[f"{unit}s_seen"], counters["elapsed_s"],
                         *nominal_power(run.device, cfg.train.device_watts)),
        "batch": run.batch, "data": run.data.summary,
        "started_from": identity.started_from(run.run_dir),  # model.init: source, commit of an hf: id, sha256
    }
    if run.procs.main:
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
