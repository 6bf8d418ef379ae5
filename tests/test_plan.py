"""selfsup plan (plan/estimate.py, plan/activations.py): it answers for every recipe, small and paper-scale, on every
device of the table; its FLOPs are FlopCounterMode's count of a real step (what the trainer's MFU reads); a run
prints its plan and, when the plan says it will not fit, the config keys that would make it fit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from selfsup import config
from selfsup.data.read.tokenizer import train_bpe
from selfsup.objectives.build import build_objective
from selfsup.plan.activations import micro_batch
from selfsup.train.mfu import count_flops
from selfsup.plan.devices import DEVICES
from selfsup.plan.estimate import GIB, advice, footprint, make_plan, start_lines, summary_lines, table_lines
from selfsup.plan.state import objective_on_meta
from selfsup.seed import seed_everything
from selfsup.train.parallel import checkpoint_activations
from tests.conftest import TINY
from tests.test_cli import invoke
from tests.test_vision import NORM, TINY_VISION, batch_of, fake_images

pytestmark = pytest.mark.usefixtures("one_thread")

# every tower one block deep and micro-batches of two, so that 34 recipes × 6 devices take seconds: the objective,
# views, shapes and precision stay the recipe's (the published depths: tests/test_plan_scale.py)
SHALLOW = ["model.depth=1", "text.depth=1", "mae.decoder_depth=1", "train.batch_size=2"]


def answers_on_every_device(name: str) -> None:
    cfg = config.load(name, SHALLOW)
    feet = footprint(cfg)
    for device in DEVICES.values():
        plan = make_plan(cfg, device, per_node=8, nodes=2, price=2.0, feet=feet)
        lines = table_lines(plan)
        assert len(plan.memory) == 6 and plan.chosen.total > 0 and plan.micro.flops > 0, name
        assert plan.step_seconds > 0 and any("device-hours" in line and "$" in line for line in lines), name
        assert any("Chinchilla" in line for line in lines) == (cfg.modality == "text" and not cfg.pairs), name
        assert plan.fits or any(line.startswith("does not fit") for line in lines), name


def test_plan_answers_for_every_small_recipe_and_device():
    """(The paper-scale recipes: tests/test_plan_scale.py.)"""
    for name, path in sorted(config.recipe_files().items()):
        if not config.paper_scale(path):
            answers_on_every_device(name)


def real_flops(cfg, checkpointing=False):
    seed_everything(0)
    if cfg.is_image:
        objective, batch = build_objective(cfg), batch_of(fake_images(cfg.train.batch_size))
    else:
        objective = build_objective(cfg, train_bpe(["the quick brown fox jumps over the lazy dog"] * 20, 512))
        T = cfg.model.context + objective.window_overlap
        batch = {"tokens": torch.randint(0, 512, (cfg.train.batch_size, T))}
    if checkpointing:
        checkpoint_activations(objective)
    return count_flops(lambda: objective(batch).loss.backward())[0]  # as the trainer counts a step


@pytest.mark.parametrize("recipe, extra", [("gpt-clm", []), ("gpt-clm", ["train.activation_checkpointing=true"]),
                                           ("simcse", []), ("dino", ["views.local_crops=2"]), ("mae", []),
                                           ("mocov3", []), ("simclr", [])])
def test_flops_are_what_flopcountermode_counts_of_a_real_step(recipe, extra):
    cfg = config.load(recipe, [*TINY, *TINY_VISION, *NORM, *extra])
    ckpt = cfg.train.activation_checkpointing
    planned = micro_batch(cfg, objective_on_meta(cfg), cfg.train.batch_size, ckpt).flops
    assert planned == pytest.approx(real_flops(cfg, ckpt), rel=5e-3)  # the losses' matmuls (B × B) are left out


def test_a_run_that_will_not_fit_is_told_the_keys_that_would_fit_it():
    deep = ["model.depth=8", "model.vocab_size=512", "model.context=256", "train.batch_size=64"]  # blocks dominate
    cfg = config.load("gpt-clm", deep)
    feet = footprint(cfg)
    state = make_plan(cfg, DEVICES["l4"], 1, feet=feet).chosen.state.total
    small = dataclasses.replace(DEVICES["l4"], name="small",  # room for the state and a few rows
                                memory_gib=(state + feet.fixed + 48 * feet.per_row(False)) / 0.9 / GIB)
    plan = make_plan(cfg, small, 1, feet=feet)
    lines = summary_lines(plan)
    assert not plan.fits and lines[0].startswith("plan: ") and lines[1].startswith("warning: ")
    tips = advice(plan)
    assert tips[0].startswith("train.batch_size=") and "train.grad_accum=" in tips[0]
    b, accum = (int(kv.split("=")[1]) for kv in tips[0].split())
    assert b <= 48 and b * accum == 64  # the same global batch
    assert "train.activation_checkpointing=true" in tips and any(t.startswith("train.precision=bf16") for t in tips)
    keys = set(config.all_keys())
    assert all(kv.split("=")[0] in keys for tip in tips for kv in tip.split(" (")[0].split())
    start = start_lines(cfg, small, 1)  # what the run prints: the same warning
    assert start[1].startswith("warning: ") and "train.activation_checkpointing=true" in start[1]
    assert start_lines(config.load("gpt-clm", [*deep, "train.batch_size=8"]), small, 1)[1:] == []  # it fits
    fixed = config.load("gpt-clm", [*deep, "train.activation_checkpointing=true"])
    assert make_plan(fixed, small, 1, feet=feet).fits


def test_plan_on_the_command_line_and_its_one_line_errors(monkeypatch, capsys):
    from tests.test_vision import run_main

    out = invoke("plan", "gpt-clm", "train.precision=bf16", "--gpus", "4", "--gpu", "a100-40gb", "--price", "1.5")
    assert "a100-40gb" in out and "<- this run" in out and "Chinchilla" in out and "$" in out
    code, _, err = run_main(monkeypatch, capsys, "plan", "gpt-clm", "--gpu", "tpu-v9")
    assert code == 2 and err.count("\n") == 1 and "a100-80gb" in err
    code, _, err = run_main(monkeypatch, capsys, "plan", "gpt-clm", "train.batchsize=4")
    assert code == 2 and err.count("\n") == 1 and "train.batchsize" in err


def test_a_run_prints_its_plan_first(corpus, tmp_path):
    out = invoke("train", "gpt-clm", f"data.path={corpus}", f"out_dir={tmp_path / 'run'}", *TINY,
                 "train.max_steps=1", "train.device=cpu")
    first = out.splitlines()[0]
    assert first.startswith("plan: ") and "MiB per device of" in first and "1 steps in about" in first
