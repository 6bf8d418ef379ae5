"""Labeled data for transfer evaluation with the inputs that feed it to the trunk, and running one transfer task
(linear, knn, finetune) on a trunk. Reading a labeled set is data/labeled.py's (the trainer's online probes read
them too); how items reach a trunk, and the kNN and linear classifiers, are probe/'s.
"""

from __future__ import annotations

import torch

from selfsup.data.labeled import LabeledSet, read_for_run
from selfsup.probe.inputs import run_inputs


def labeled_set(cfg, objective, tok, path: str, classes: list[str] | None = None):
    """A labeled evaluation set in the run's modality, and the inputs that feed it to the trunk."""
    return read_for_run(cfg, path, classes), run_inputs(cfg, objective, tok)


TASKS = ("linear", "knn", "finetune")


def evaluate(task: str, trunk, inputs, train: LabeledSet, test: LabeledSet, device: torch.device,
             batch_size: int = 16, seed: int = 0, k: int = 20, temperature: float = 0.07, epochs: int = 10,
             lr: float = 3e-4, layer_decay: float = 0.75, patience: int = 3, freeze_blocks: int = 0,
             l2sp: float = 0.0, whiten: bool = False, progress=None, measure=None) -> dict:
    """One transfer task on one trunk: accuracy, macro_f1, protocol and the task's own figures. `inputs` (see
    probe/inputs.py) says how items reach the trunk; `whiten` (linear, knn): the features BERT-whitened with the
    training split's mean and covariance; `measure`: see finetune."""
    from selfsup.probe.inputs import encode

    n = len(train.classes)
    if task == "finetune":
        from selfsup.eval.finetune import finetune

        return finetune(trunk, inputs, train.items, train.labels, test.items, test.labels, n, device, lr=lr,
                        layer_decay=layer_decay, max_epochs=epochs, patience=patience, batch_size=batch_size,
                        freeze_blocks=freeze_blocks, l2sp=l2sp, measure=measure,
                        seed=seed, progress=progress and (lambda it: progress(it, "fine-tuning")))
    if task not in TASKS:
        raise ValueError(f"task '{task}': expected one of {', '.join(TASKS)}")
    wrap = (lambda what: (lambda it: progress(it, what))) if progress else (lambda what: None)
    train_x = encode(trunk, inputs, train.items, batch_size, device, wrap("encoding train"))
    test_x = encode(trunk, inputs, test.items, batch_size, device, wrap("encoding test"))
    described = inputs.describe(trunk)
    if whiten:
        from selfsup.probe.whitening import PROTOCOL, fit_whitening, whiten as apply

        mu, w = fit_whitening(train_x)
        train_x, test_x, described = apply(train_x, mu, w), apply(test_x, mu, w), f"{described}; {PROTOCOL}"
    if task == "linear":
        from selfsup.probe.linear import linear_probe

        return linear_probe(train_x, train.labels, test_x, test.labels, n, features=described, seed=seed)
    from selfsup.probe.knn import knn_eval

    return knn_eval(train_x, train.labels, test_x, test.labels, n, k=k, temperature=temperature,
                    features=described)
