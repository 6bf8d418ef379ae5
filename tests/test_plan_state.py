"""The planner's training state (plan/state.py) against the real thing: the objective built on the meta device
predicts, to the byte, the weights, gradients and optimizer state that a real objective holds after a real step
on the CPU."""

from __future__ import annotations

import pytest
import torch

from selfsup import config
from selfsup.data.read.tokenizer import train_bpe
from selfsup.objectives.build import build_objective
from selfsup.plan.devices import DEVICES
from selfsup.plan.state import objective_on_meta, state_memory
from selfsup.seed import seed_everything
from selfsup.train import optim
from tests.conftest import TINY
from tests.test_vision import NORM, TINY_VISION, batch_of, fake_images

pytestmark = pytest.mark.usefixtures("one_thread")


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("recipe, extra", [("gpt-clm", []), ("dino", ["views.local_crops=2"]),
                                           ("simclr", ["optim.name=lars"]), ("byol", ["optim.name=lamb"])])
def test_state_memory_is_what_a_real_step_holds(recipe, extra):
    cfg = config.load(recipe, [*TINY, *TINY_VISION, *NORM, *extra])
    planned = state_memory(cfg, objective_on_meta(cfg), processes=1, per_node=1)

    seed_everything(0)
    if cfg.is_image:
        objective, batch = build_objective(cfg), batch_of(fake_images(8))
    else:
        tok = train_bpe(["the quick brown fox jumps over the lazy dog"] * 20, 300)
        objective = build_objective(cfg, tok)
        batch = {"tokens": torch.randint(0, 300, (2, cfg.model.context + objective.window_overlap))}
    opt = optim.build(objective, cfg.optim, torch.device("cpu"))
    objective(batch).loss.backward()
    opt.step()
    trained = [p for p in objective.parameters() if p.requires_grad]
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim > 0]  # not "step"

    assert planned.weights == nbytes(objective.parameters()) + nbytes(objective.buffers())
    assert planned.gradients == nbytes(p.grad for p in trained if p.grad is not None) == nbytes(trained)
    assert planned.optimizer == nbytes(state)
    assert planned.gathered == 0 and planned.total > 0


def test_sharding_divides_the_state_and_ddp_adds_its_buckets():
    cfg = config.load("gpt-clm", TINY)
    objective = objective_on_meta(cfg)
    alone = state_memory(cfg, objective, 1, 1)
    ddp = state_memory(cfg, objective, 8, 8)
    assert ddp.weights == alone.weights and ddp.gradients == 2 * alone.gradients  # DDP's buckets
    fsdp_cfg = config.load("gpt-clm", [*TINY, "dist.strategy=fsdp", "train.precision=bf16"])
    fsdp = state_memory(fsdp_cfg, objective, 8, 8)
    assert fsdp.optimizer == alone.optimizer // 8 and fsdp.gradients == alone.gradients // 8
    block = sum(p.numel() for p in objective.model.blocks[0].parameters())
    assert fsdp.gathered == 2 * 2 * block  # two blocks in flight, in bf16
    hsdp = state_memory(config.load("gpt-clm", [*TINY, "dist.strategy=hsdp"]), objective, 16, 8)
    assert hsdp.optimizer == alone.optimizer // 8


def test_a_billion_parameter_recipe_is_sized_without_memory():
    cfg = config.load("llama-1b")
    objective = objective_on_meta(cfg)
    assert all(p.is_meta for p in objective.parameters())
    state = state_memory(cfg, objective, 8, 8)
    assert state.optimizer == 8 * 1_235_814_400 // 8  # AdamW's two fp32 moments, sharded over 8


def test_devices_have_their_figures_and_sources():
    for d in DEVICES.values():
        assert d.bf16_tflops > d.fp32_tflops > 0 and d.memory_gib > 0 and d.watts > 0 and "datasheet" in d.source
