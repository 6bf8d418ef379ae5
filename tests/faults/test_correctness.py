"""Correctness found by review (issue 14, items 13-16): DeepCluster's classifier restarts its optimizer state with
its weights; validation draws its masks and views from generators of its own; the chunked losses compute no
gradients when none is wanted; LARS puts the learning rate inside its momentum, as SimCLR and BYOL do."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from selfsup import batch_random, config
from selfsup.config import OptimConfig
from selfsup.data.load.rows import RowLoader
from selfsup.objectives.deepcluster import DeepCluster
from selfsup.objectives.losses import linear_cross_entropy
from selfsup.objectives.pair_losses import siglip_loss
from selfsup.seed import seed_everything
from selfsup.train import optim, trainer
from selfsup.train.step import evaluate, optimizer_step
from tests.conftest import TINY
from tests.test_train import crash_and_resume, losses, quiet
from tests.test_vision import TINY_VISION, batch_of, built, digits_dir, fake_images  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ item 16: LARS


class TwoParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)  # weight (2-D): decay and trust ratio; bias (1-D): neither


def test_lars_follows_the_papers_form_under_a_changing_lr():
    """v ← m·v + lr·trust·(g + λw); w ← w − v (SimCLR's LARSOptimizer), by hand for three warm-up steps."""
    lrs, m, wd, eta = [0.1, 0.2, 0.3], 0.9, 0.01, 0.001
    torch.manual_seed(0)
    net = TwoParams()
    opt = optim.build(net, OptimConfig(name="lars", lr=lrs[0], weight_decay=wd, momentum=m, trust_coefficient=eta),
                      torch.device("cpu"))
    w, b = net.lin.weight.detach().clone(), net.lin.bias.detach().clone()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    for lr in lrs:
        gw, gb = torch.randn_like(w), torch.randn_like(b)
        net.lin.weight.grad, net.lin.bias.grad = gw.clone(), gb.clone()
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        u = gw + wd * w
        vw = m * vw + lr * (eta * w.norm() / u.norm()) * u
        vb = m * vb + lr * gb  # 1-D: no weight decay, no trust ratio
        w, b = w - vw, b - vb
        torch.testing.assert_close(net.lin.weight.detach(), w, rtol=0, atol=1e-7)
        torch.testing.assert_close(net.lin.bias.detach(), b, rtol=0, atol=1e-7)


def test_lars_state_resumes_exactly_and_reads_a_checkpoint_of_the_sgd_form():
    torch.manual_seed(0)
    grads = [torch.randn(3, 4) for _ in range(4)], [torch.randn(3) for _ in range(4)]

    def run(steps, net, opt):
        for i in steps:
            net.lin.weight.grad, net.lin.bias.grad = grads[0][i].clone(), grads[1][i].clone()
            for g in opt.param_groups:
                g["lr"] = 0.1 * (i + 1)
            opt.step()

    cfg = OptimConfig(name="lars", lr=0.1, weight_decay=0.01)
    torch.manual_seed(1)
    a = TwoParams()
    b = TwoParams()
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = optim.build(a, cfg, torch.device("cpu")), optim.build(b, cfg, torch.device("cpu"))
    run(range(4), a, opt_a)
    run(range(2), b, opt_b)
    saved = opt_b.state_dict()
    assert {k for s in saved["state"].values() for k in s} == {"velocity"}
    opt_b = optim.build(b, cfg, torch.device("cpu"))
    opt_b.load_state_dict(saved)
    run(range(2, 4), b, opt_b)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)

    # a checkpoint written by the SGD form holds `momentum_buffer` (the unscaled sum): its next step is the step that
    # form would have taken, w − lr · (m · buf + u), and the run goes on in the paper's form
    net = TwoParams()
    opt = optim.build(net, OptimConfig(name="lars", lr=0.3, momentum=0.9), torch.device("cpu"))
    buf = torch.randn(3)
    opt.state[net.lin.bias]["momentum_buffer"] = buf.clone()
    before, g = net.lin.bias.detach().clone(), torch.randn(3)
    net.lin.bias.grad = g.clone()
    opt.step()
    torch.testing.assert_close(net.lin.bias.detach(), before - 0.3 * (0.9 * buf + g), rtol=0, atol=1e-7)
    assert set(opt.state[net.lin.bias]) == {"velocity"}


# ------------------------------------------------------------------------------------ item 15: chunked losses


def _chunked(name):
    """A chunked loss over 3 chunks, of inputs that require grad."""
    g = torch.Generator().manual_seed(0)
    if name == "linear_cross_entropy":
        h = torch.randn(40, 8, generator=g, requires_grad=True)
        w = torch.randn(50, 8, generator=g, requires_grad=True)
        y = torch.randint(0, 50, (40,), generator=g)
        return lambda: linear_cross_entropy(h, w, y, chunk=16)[0]
    m = F.normalize(torch.randn(12, 8, generator=g), dim=1).requires_grad_()
    t = F.normalize(torch.randn(12, 8, generator=g), dim=1).requires_grad_()
    scale, bias = torch.tensor(2.3, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    return lambda: siglip_loss(m, t, scale, bias, chunk=5)[0]


@pytest.mark.parametrize("name", ["linear_cross_entropy", "siglip_loss"])
def test_chunked_losses_compute_no_gradients_under_no_grad(name):
    """Evaluation and perplexity run the chunked losses under torch.no_grad: the product that makes each chunk's
    logits, not the two of the same size that only the gradients need; the loss is the same to the bit."""
    loss = _chunked(name)
    with FlopCounterMode(display=False) as training:
        with_grad = loss()
    with torch.no_grad(), FlopCounterMode(display=False) as evaluating:
        without = loss()
    assert evaluating.get_total_flops() * 3 == training.get_total_flops() > 0
    assert with_grad.requires_grad and not without.requires_grad
    assert torch.equal(with_grad.detach(), without)


# ------------------------------------------------------------------------------------ item 13: DeepCluster


def test_deepcluster_classifier_restarts_its_optimizer_state_with_its_weights():
    """After a re-clustering the classifier's next AdamW step is a fresh optimizer's first one, lr · g / (|g| + ε)
    plus decay (the paper builds a new optimizer for it), while the trunk keeps its moments."""
    images = fake_images(40).numpy()
    cfg, obj = built("deepcluster", "deepcluster.recluster_every=2", images=images)
    obj.train()
    opt = optim.build(obj, cfg.optim, torch.device("cpu"))
    trained = [p for p in obj.parameters() if p.requires_grad]
    lr = 0.01

    def step(n):
        batch = batch_of(torch.from_numpy(images[8 * n:8 * n + 8]))
        result = optimizer_step(obj, obj, opt, trained, [batch], n, lr, torch.device("cpu"), "fp32", None)
        assert result.applied

    step(1)
    step(2)  # re-clusters: new labels, new classifier, its moments and step count back to zero
    w, b = obj.classifier.weight.detach().clone(), obj.classifier.bias.detach().clone()
    for p in obj.classifier.parameters():
        assert all(not v.any() for v in opt.state[p].values())
    assert int(opt.state[obj.projector[0].weight]["step"]) == 2
    opt.zero_grad(set_to_none=True)
    step(3)
    eps, wd = cfg.optim.eps, cfg.optim.weight_decay
    gw, gb = obj.classifier.weight.grad, obj.classifier.bias.grad
    torch.testing.assert_close(obj.classifier.weight.detach(), w * (1 - lr * wd) - lr * gw / (gw.abs() + eps))
    torch.testing.assert_close(obj.classifier.bias.detach(), b - lr * gb / (gb.abs() + eps))
    assert int(opt.state[obj.classifier.weight]["step"]) == 1 and int(opt.state[obj.projector[0].weight]["step"]) == 3


def test_deepcluster_resumed_across_a_reclustering_matches_an_uninterrupted_run(digits_dir, tmp_path, monkeypatch):
    """Killed after step 4 (a re-clustering, the classifier's state restarted), resumed from the checkpoint at 3:
    the restart happens again at step 4 and every loss and weight is the uninterrupted run's."""
    args = [f"data.path={digits_dir / 'train'}", *TINY_VISION, "train.max_steps=6", "train.log_every=1",
            "train.checkpoint_every=3", "deepcluster.recluster_every=2", "train.batch_size=8"]
    full, out = crash_and_resume(monkeypatch, DeepCluster, 4, "deepcluster", args, tmp_path)
    assert losses(out) == losses(full)
    a, b = load_file(full / "model.safetensors"), load_file(out / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------ item 14: validation's draws


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", ["bert-mlm", "gpt-clm"])
def test_how_often_a_run_validates_does_not_change_what_it_trains(recipe, corpus, tmp_path):
    """Validation draws its masks from generators seeded for it and puts the training ones back: a run validated
    every 2 steps logs the training losses of one validated at the end alone, and the same validation loss there."""
    runs = {}
    for every in (2, 6):
        out = tmp_path / f"every-{every}"
        trainer.train(config.load(recipe, [f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=6",
                                           "train.log_every=1", f"train.eval_every={every}"]), quiet())
        runs[every] = _records(out)
    often, once = runs[2], runs[6]
    assert [r["step"] for r in often if "val_loss" in r] == [2, 4, 6]
    assert [r["step"] for r in once if "val_loss" in r] == [6]
    assert [r["loss"] for r in often] == [r["loss"] for r in once]
    assert often[-1]["val_loss"] == once[-1]["val_loss"]


def test_validation_scores_the_same_masks_every_time_and_leaves_every_generator_alone():
    images = fake_images(16).numpy()
    cfg, obj = built("mae", images=images)
    rows = RowLoader({"images": images}, shuffle=False)
    seed_everything(3)
    before = _generators()
    first = evaluate(obj, rows, 8, 2, torch.device("cpu"), "fp32", seed=cfg.seed)
    assert _generators() == before
    torch.rand(5), batch_random.rand((4, 3)), random.random(), np.random.rand()  # training goes on drawing
    assert evaluate(obj, rows, 8, 2, torch.device("cpu"), "fp32", seed=cfg.seed) == first


def _generators():
    return (torch.get_rng_state().tolist(), batch_random.get_state().tolist(), random.getstate(),
            str(np.random.get_state()))
