import math

import pytest
import torch
from torch import nn

from selfsup.config import OptimConfig, SchedConfig
from selfsup.train import optim
from selfsup.train.schedule import lr_at


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)  # weight (2-D) decays; bias (1-D) does not
        self.norm = nn.LayerNorm(3)
        self.scale = nn.Parameter(torch.ones(()))  # 0-D, e.g. a logit scale


def test_decay_by_shape_not_name():
    groups = optim.param_groups(Net(), 0.1)
    decay, no_decay = groups
    assert [p.shape for p in decay["params"]] == [(3, 4)] and decay["weight_decay"] == 0.1
    assert sorted(p.ndim for p in no_decay["params"]) == [0, 1, 1, 1] and no_decay["weight_decay"] == 0.0
    assert no_decay["adapt"] is False


def test_adamw_is_fused_on_cpu():
    opt = optim.build(Net(), OptimConfig(name="adamw"), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]


def _one_step(name, **kw):
    torch.manual_seed(0)
    net = Net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    opt = optim.build(net, OptimConfig(name=name, **kw), torch.device("cpu"))
    opt.step()
    return net, before, grads


def test_lamb_first_step_matches_the_paper():
    lr, wd, eps = 0.01, 0.1, 1e-8
    net, before, grads = _one_step("lamb", lr=lr, weight_decay=wd, betas=(0.9, 0.999), eps=eps)
    w, g = before["lin.weight"], grads["lin.weight"]
    update = g / (g.abs() + eps) + wd * w  # bias-corrected Adam ratio after one step is g/|g|
    expected = w - lr * (w.norm() / update.norm()) * update
    assert torch.allclose(net.lin.weight, expected, atol=1e-6)
    b, gb = before["lin.bias"], grads["lin.bias"]  # 1-D: no decay and no trust ratio
    assert torch.allclose(net.lin.bias, b - lr * gb / (gb.abs() + eps), atol=1e-6)


def test_lars_first_step_matches_the_paper():
    lr, wd, eta = 0.5, 0.01, 0.001
    net, before, grads = _one_step("lars", lr=lr, weight_decay=wd, trust_coefficient=eta, momentum=0.9)
    w, g = before["lin.weight"], grads["lin.weight"]
    update = g + wd * w
    assert torch.allclose(net.lin.weight, w - lr * eta * w.norm() / update.norm() * update, atol=1e-6)
    assert torch.allclose(net.norm.weight, before["norm.weight"] - lr * grads["norm.weight"], atol=1e-6)


def test_trust_ratio_is_one_for_zero_weights():
    assert optim._trust_ratio(torch.zeros(3), torch.ones(3)).item() == 1.0
    assert optim._trust_ratio(torch.ones(3), torch.zeros(3)).item() == 1.0


@pytest.mark.parametrize("name", ["cosine", "wsd", "constant"])
def test_schedules_warm_up_linearly(name):
    cfg = SchedConfig(name=name, warmup_steps=10, min_lr_ratio=0.1)
    assert [lr_at(s, 100, 1.0, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])


def test_cosine_and_wsd_shapes():
    cos = SchedConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(10, 110, 1.0, cos) == pytest.approx(1.0)
    assert lr_at(60, 110, 1.0, cos) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, 110, 1.0, cos) == pytest.approx(0.1)
    wsd = SchedConfig(name="wsd", warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_at(79, 100, 1.0, wsd) == 1.0  # stable until the last 20%
    assert lr_at(90, 100, 1.0, wsd) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, wsd) == pytest.approx(0.0)
    assert lr_at(50, 100, 2.0, SchedConfig(name="constant", warmup_steps=0)) == 2.0
    assert not math.isnan(lr_at(0, 1, 1.0, SchedConfig(warmup_steps=0)))
