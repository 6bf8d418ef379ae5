"""The planner against measurement: the planned peak of a training step (weights, gradients, optimizer state and
the working memory of plan/activations.py) against the peak resident memory of two real steps on this CPU, measured
as bench/ measures (bench/plan_vs_measured.py's child process, one thread). The plan leaves out the allocator's
slack, and the measurement holds it: the plan is at most 25% below the measured peak and at most 10% above it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from selfsup import config
from selfsup.plan.activations import micro_batch
from selfsup.plan.state import objective_on_meta, state_memory

BENCH = Path(__file__).resolve().parents[1] / "bench" / "plan_vs_measured.py"
SMALL = ["train.max_steps=2", "train.grad_accum=1", "data.workers=0"]  # as bench/plan_vs_measured.py
CASES = [("gpt-clm", ["train.batch_size=16"]), ("mae", ["train.batch_size=64", "image.size=64", "model.patch=8"])]
BELOW, ABOVE = 0.25, 0.10


def planned(recipe: str, overrides: list[str]) -> int:
    cfg = config.load(recipe, [*SMALL, *overrides])
    state = state_memory(cfg, objective_on_meta(cfg), processes=1, per_node=1)
    return state.total + micro_batch(cfg, objective_on_meta(cfg), cfg.train.batch_size, False).working


def test_planned_memory_is_the_measured_peak_of_real_steps():
    children = [subprocess.Popen([sys.executable, str(BENCH), "--child", recipe, json.dumps(overrides)],
                                 stdout=subprocess.PIPE, text=True) for recipe, overrides in CASES]
    for (recipe, overrides), child in zip(CASES, children):
        out, _ = child.communicate(timeout=600)
        assert child.returncode == 0, recipe
        measured = json.loads(out.strip().splitlines()[-1])["measured"]
        plan = planned(recipe, overrides)
        assert (1 - BELOW) * measured <= plan <= (1 + ABOVE) * measured, (recipe, plan / measured - 1)
