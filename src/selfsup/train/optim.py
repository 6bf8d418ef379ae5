"""Optimizers: AdamW (fused where torch has a fused kernel), LAMB and LARS.

Parameters with ndim <= 1 (biases, norm scales, logit scales) get no weight decay, chosen by shape, never by
name; LAMB and LARS also leave them out of the layer-wise trust ratio (`adapt=False` in their group).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay, "adapt": True},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "adapt": False},
    ]


def build(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "adamw":
        for g in groups:
            del g["adapt"]
        fused = device.type in ("cuda", "cpu", "mps")  # torch 2.4+ has fused AdamW kernels on these
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return Lars(groups, lr=cfg.lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)


def _trust_ratio(p: Tensor, update: Tensor, coefficient: float = 1.0) -> Tensor:
    """coefficient · ‖p‖ / ‖update‖, or 1 where either norm is zero (fresh zero-init layers, zero grads)."""
    w, u = p.norm(), update.norm()
    return torch.where((w > 0) & (u > 0), coefficient * w / u, torch.ones_like(w))


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning", Algorithm 2): an Adam step with
    decoupled decay, rescaled per tensor by ‖p‖ / ‖step‖."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].to(p.device)  # a tensor: no host sync per parameter on GPUs
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                update = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                ratio = _trust_ratio(p, update) if group["adapt"] else 1.0
                p.sub_(group["lr"] * ratio * update)


class Lars(torch.optim.Optimizer):
    """LARS (You et al., 2017) as SimCLR and BYOL run it: momentum over steps that already hold the learning rate
    and the per-tensor trust ratio η · ‖p‖ / ‖g + λp‖,

        v ← m · v + lr · trust · (g + λp);    p ← p − v

    (SimCLR's LARSOptimizer, `classic_momentum`). PyTorch's SGD form, v ← m · v + u; p ← p − lr · v, is the same
    under a constant lr, but under warm-up it rescales the earlier steps' momentum by today's larger lr: at m = 0.9
    its second step is 1.31× the paper's and its steps stay up to 1.57× larger through a 10-step warm-up.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, trust_coefficient=trust_coefficient,
                                      weight_decay=0.0, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                scale = group["lr"] * (_trust_ratio(p, update, group["trust_coefficient"]) if group["adapt"] else 1.0)
                state = self.state[p]
                if "momentum_buffer" in state:  # a checkpoint of the SGD form (w -= lr · buf): lr · buf continues it
                    state["velocity"] = state.pop("momentum_buffer").mul_(group["lr"])  # exactly for this step
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                v = state["velocity"]
                v.mul_(group["momentum"]).add_(update.mul_(scale))
                p.sub_(v)
