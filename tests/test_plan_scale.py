"""selfsup plan answers for every paper-scale recipe on every device of the table (the small recipes:
tests/test_plan.py, whose helper this is), and GPT-2 124M's plan at its published depth."""

from __future__ import annotations

import pytest

from selfsup import config
from selfsup.plan.devices import DEVICES
from selfsup.plan.estimate import GIB, make_plan
from selfsup.plan.state import objective_on_meta
from tests.test_plan import answers_on_every_device

pytestmark = pytest.mark.usefixtures("one_thread")


def test_plan_answers_for_every_paper_scale_recipe_and_device():
    for name, path in sorted(config.recipe_files().items()):
        if config.paper_scale(path):
            answers_on_every_device(name)


def test_a_paper_scale_plan():
    """GPT-2 124M on 8 H100s as published: 12 × 5 sequences of 1024 per process, 491,520 tokens per step."""
    cfg = config.load("gpt2-124m")
    plan = make_plan(cfg, DEVICES["h100"], per_node=8)
    assert plan.units_per_step == 491_520 and plan.fits
    ddp = plan.chosen
    assert ddp.state.weights == 4 * sum(p.numel() for p in objective_on_meta(cfg).parameters())
    assert 1 * GIB < ddp.activations < 12 * GIB  # activations of 12 × 1024 tokens, bf16: a few GiB
    fsdp = next(m for m in plan.memory if m.strategy == "fsdp" and not m.checkpointing)
    ckpt = next(m for m in plan.memory if m.strategy == "ddp" and m.checkpointing)
    assert fsdp.state.optimizer == ddp.state.optimizer // 8 and ckpt.activations < 0.7 * ddp.activations
    assert ckpt.largest_batch > ddp.largest_batch > cfg.train.batch_size
    # the counted FLOPs are the trainer's formula for a language model (PaLM's 6 N + 12 L D T per token) within 2%:
    # torch counts attention's backward as 2.5 forwards, the formula as 2
    tokens = cfg.train.batch_size * cfg.model.context
    assert plan.micro.flops == pytest.approx(objective_on_meta(cfg).flops_per_token() * tokens, rel=0.02)
