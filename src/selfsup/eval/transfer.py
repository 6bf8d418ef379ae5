"""`selfsup eval --task linear|knn|finetune` on a run: the transfer task on its trained trunk and, beside it, on the
baselines asked for (a random init of the same shape, the raw pixels), with the figures that make them comparable."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.config import RunConfig
from selfsup.eval.baseline import random_objective
from selfsup.eval.labeled import evaluate as run_task, labeled_set
from selfsup.probe.inputs import Pixels


def transfer(task: str, run_dir: Path, cfg: RunConfig, objective, tok, train_path: str, test_path: str,
             baselines: list[str], device: torch.device, opts: dict, progress=None) -> dict:
    """The result written to RUN_DIR/eval/<task>.json: each model's figures, the data read and, with the random
    baseline, the gain. `opts`: the task's settings (see labeled.evaluate); `progress(iterable, what)`."""
    trunk = objective.model
    train_set, inputs = labeled_set(cfg, objective, tok, train_path)
    test_set, _ = labeled_set(cfg, objective, tok, test_path, train_set.classes)

    measure = None
    if task == "finetune":  # the pretraining loss before and after: what fine-tuning made the trunk forget
        from selfsup.eval.objective_loss import objective_loss_probe

        probe = objective_loss_probe(cfg, run_dir, objective, device)
        if probe is not None:
            before = probe(trunk)
            measure = lambda tuned: {"objective_loss_before": before, "objective_loss_after": probe(tuned)}  # noqa
    results = {"pretrained": run_task(task, trunk, inputs, train_set, test_set, device, progress=progress,
                                      measure=measure, **opts)}
    if "random" in baselines:
        results["random"] = run_task(task, random_objective(cfg, tok, device).model, inputs, train_set, test_set,
                                     device, progress=progress, **opts)
    if "pixels" in baselines:
        results["pixels"] = run_task(task, Pixels(cfg.image.channels, cfg.image.size), inputs, train_set, test_set,
                                     device, progress=progress, **opts)
    result = dict(task=task, run_dir=str(run_dir), recipe=cfg.recipe,
                  objective=cfg.objective, protocol=results["pretrained"]["protocol"], classes=train_set.classes,
                  data=dict(train=train_set.counts(), test=test_set.counts()),
                  skipped=dict(train=train_set.skipped, test=test_set.skipped), **results)
    if "random" in results:
        result["gain"] = {m: results["pretrained"][m] - results["random"][m] for m in ("accuracy", "macro_f1")}
    return result
