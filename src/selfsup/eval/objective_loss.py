"""The pretraining objective's validation loss with another trunk in its place: after fine-tuning, how much of
what pretraining learned the trunk kept (a rise of this loss is forgetting)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from selfsup.config import RunConfig
from selfsup.objectives.contract import Objective


def objective_loss_probe(cfg: RunConfig, run_dir: Path, objective: Objective,
                         device: torch.device) -> Callable[[nn.Module], float] | None:
    """loss(trunk) on the run's own validation split (the same batches, masks and views for every trunk), or None
    when the objective has no validation loss (DeepCluster) or the run no validation split."""
    from selfsup.train.data import RunData
    from selfsup.train.step import evaluate

    if not objective.validates:
        return None
    data = RunData(cfg, Path(run_dir), log=lambda text: None)
    if data.val_loader is None:
        return None

    def loss(trunk: nn.Module) -> float:
        kept = {k: v.clone() for k, v in objective.model.state_dict().items()}
        objective.model.load_state_dict(trunk.state_dict())
        # masks and views from the run's seed: the same for every trunk
        value = evaluate(objective, data.val_loader, cfg.train.batch_size, cfg.train.eval_batches, device, "fp32",
                         cfg.seed)
        objective.model.load_state_dict(kept)
        return value

    return loss
