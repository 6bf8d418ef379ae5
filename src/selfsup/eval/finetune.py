"""Fine-tuning the whole trunk with a linear classification head on its pooled output.

Protocol (BERT/ELECTRA-style): AdamW with layer-wise learning-rate decay (ELECTRA, BEiT): the head and the final
norm at lr, block i (0-based) at lr · decay^(depth − i), the embeddings (and their norm) at
lr · decay^(depth + 1); weight decay on matrices only (ndim >= 2, by shape, as in pretraining). Learning rate
warms up linearly over the first 6% of max_epochs' steps, then decays linearly to zero at max_epochs. After every
epoch the model is scored on a seeded stratified split held out from train; training stops after `patience`
epochs without a better validation accuracy (ties: lower validation loss), and the best epoch's weights are
restored before the test set is scored. The trunk passed in is copied, never changed.

Options that keep what pretraining learned (forgetting-aware fine-tuning): `freeze_blocks` freezes the
embeddings and the first N blocks; `l2sp` adds L2-SP (Li et al. 2018), α/2 · ‖w − w₀‖² toward the pretrained
weights w₀ of the trunk, in place of weight decay toward zero on those weights (the head keeps its decay). Inputs (texts or images)
reach the trunk through an `inputs` object of probe/inputs.py, so one loop serves every modality.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.probe.linear import stratified_split
from selfsup.probe.metrics import accuracy, macro_f1


class Classifier(nn.Module):
    """trunk -> pooled features (B, D) -> linear head -> logits (B, C)."""

    def __init__(self, trunk: nn.Module, num_classes: int, inputs=None):
        super().__init__()
        self.trunk = trunk
        self.inputs = inputs
        self.head = nn.Linear(trunk.out_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, *args: Tensor) -> Tensor:
        return self.head(self.inputs.features(self.trunk, *args))


def trunk_depth(trunk: nn.Module) -> int:
    """Layers below the head: transformer blocks, or a ResNet's residual blocks."""
    return len(trunk.blocks) if hasattr(trunk, "blocks") else len(trunk.layers)


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings (token or patch embedding, class token, ResNet stem), i + 1 for block i (transformer
    block or residual block), depth + 1 for the final norm, the head and anything else."""
    parts = name.split(".")
    if parts[0] == "trunk" and parts[1] in ("embed", "embed_norm", "cls", "stem"):
        return 0
    if parts[0] == "trunk" and parts[1] in ("blocks", "layers"):
        return int(parts[2]) + 1
    return depth + 1


def llrd_param_groups(model: Classifier, lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """One AdamW group per (layer, decayed or not): lr · layer_decay^(depth + 1 − layer_id); no weight decay on
    parameters with ndim <= 1. Each group carries `layer` and `scale` for inspection."""
    depth = trunk_depth(model.trunk)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, decay = layer_id(name, depth), p.ndim >= 2
        if (layer, decay) not in groups:
            scale = layer_decay ** (depth + 1 - layer)
            groups[layer, decay] = dict(params=[], names=[], layer=layer, scale=scale, lr=lr * scale,
                                        weight_decay=weight_decay if decay else 0.0)
        groups[layer, decay]["params"].append(p)
        groups[layer, decay]["names"].append(name)
    return [groups[key] for key in sorted(groups)]


@torch.no_grad()
def _score(model: Classifier, items, rows: list[int], labels: Tensor, batch_size: int,
           device: torch.device) -> tuple[Tensor, float]:
    """Predictions and mean cross-entropy for items[rows] (labels: (len(rows),)), in eval mode."""
    model.eval()
    logits = torch.empty((len(rows), model.head.out_features))
    for start in range(0, len(rows), batch_size):
        logits[start:start + batch_size] = model(*model.inputs.batch(items, rows[start:start + batch_size],
                                                                     device)).float().cpu()
    return logits.argmax(dim=1), F.cross_entropy(logits, labels).item()


def finetune(trunk: nn.Module, inputs, train_items, train_y: Tensor, test_items, test_y: Tensor, num_classes: int,
             device: torch.device, lr: float = 3e-4, layer_decay: float = 0.75, weight_decay: float = 0.01,
             max_epochs: int = 10, patience: int = 3, batch_size: int = 16, val_fraction: float = 0.15,
             seed: int = 0, freeze_blocks: int = 0, l2sp: float = 0.0, progress=None, measure=None) -> dict:
    """Fine-tune a copy of `trunk` with a linear head; returns test metrics and the protocol. `inputs` (see
    probe/inputs.py) turns items (texts, images) into the trunk's inputs; `progress` wraps the iterable of epochs;
    `measure(trunk) -> dict`, if given, adds its readings of the fine-tuned trunk to the result (e.g. the
    pretraining objective's loss, which shows what fine-tuning forgot)."""
    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(trunk), num_classes, inputs).to(device)
    fit_idx, val_idx = stratified_split(train_y.cpu(), val_fraction, seed)
    if len(val_idx) == 0:
        raise ValueError("fine-tuning needs a validation split: every class has a single training example")
    items, test_prepared = inputs.prepare(train_items), inputs.prepare(test_items)
    fit_rows, val_rows = fit_idx.tolist(), val_idx.tolist()
    fit_y, val_y = train_y[fit_idx], train_y[val_idx]
    test_rows = list(range(len(test_y)))

    depth = trunk_depth(trunk)
    for name, p in model.named_parameters():
        if freeze_blocks and name.startswith("trunk.") and layer_id(name, depth) <= freeze_blocks:
            p.requires_grad_(False)  # layer 0 is the embeddings, layer i the i-th block
    pretrained = {name: p.detach().clone() for name, p in model.trunk.named_parameters()}  # w0
    anchors = {name: w for name, w in pretrained.items() if model.trunk.get_parameter(name).requires_grad}
    groups = llrd_param_groups(model, lr, layer_decay, weight_decay)
    for g in groups:
        g["base_lr"] = g["lr"]
        if l2sp and g["layer"] <= depth:  # trunk weights: pulled toward w0 by L2-SP instead of toward zero
            g["weight_decay"] = 0.0
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = math.ceil(len(fit_rows) / batch_size)
    total = steps_per_epoch * max_epochs
    warmup = max(1, round(0.06 * total))
    g = torch.Generator().manual_seed(seed)

    best = dict(acc=-1.0, loss=math.inf, epoch=0, state=None)
    history, step, epochs_run = [], 0, 0
    epochs = range(1, max_epochs + 1)
    for epoch in (progress(epochs) if progress else epochs):
        model.train()
        perm = torch.randperm(len(fit_rows), generator=g).tolist()
        train_loss = 0.0
        for start in range(0, len(perm), batch_size):
            rows = perm[start:start + batch_size]
            factor = min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
            logits = model(*inputs.batch(items, [fit_rows[i] for i in rows], device)).float()
            loss = F.cross_entropy(logits, fit_y[rows].to(device))
            if l2sp:
                drift = sum(((p - anchors[n]) ** 2).sum() for n, p in model.trunk.named_parameters() if n in anchors)
                loss = loss + l2sp / 2 * drift
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            train_loss += loss.item() * len(rows)
            step += 1
        epochs_run = epoch
        pred, val_loss = _score(model, items, val_rows, val_y, batch_size, device)
        val_acc = accuracy(pred, val_y)
        history.append(dict(epoch=epoch, train_loss=train_loss / len(fit_rows), val_loss=val_loss,
                            val_accuracy=val_acc))
        if val_acc > best["acc"] or (val_acc == best["acc"] and val_loss < best["loss"]):
            best = dict(acc=val_acc, loss=val_loss, epoch=epoch,
                        state={k: v.detach().clone() for k, v in model.state_dict().items()})
        elif epoch - best["epoch"] >= patience:
            break
    model.load_state_dict(best["state"])
    pred, test_loss = _score(model, test_prepared, test_rows, test_y, batch_size, device)
    drift: dict[int, list[float]] = {}  # per layer: (‖w − w0‖², ‖w0‖²), how far fine-tuning moved the trunk
    for name, p in model.trunk.named_parameters():
        d = drift.setdefault(layer_id("trunk." + name, depth), [0.0, 0.0])
        d[0] += (p.detach() - pretrained[name]).pow(2).sum().item()
        d[1] += pretrained[name].pow(2).sum().item()
    return dict(
        **(measure(model.trunk) if measure else {}),
        accuracy=accuracy(pred, test_y), macro_f1=macro_f1(pred, test_y, num_classes), test_loss=test_loss,
        val_accuracy=best["acc"], best_epoch=best["epoch"], epochs_run=epochs_run, history=history,
        lr=lr, layer_decay=layer_decay, weight_decay=weight_decay, batch_size=batch_size, patience=patience,
        freeze_blocks=freeze_blocks, l2sp=l2sp,
        relative_drift_by_layer={str(k): (a / b) ** 0.5 if b else 0.0 for k, (a, b) in sorted(drift.items())},
        max_epochs=max_epochs, train_examples=len(fit_idx), val_examples=len(val_idx), test_examples=len(test_y),
        protocol=(f"fine-tune: whole trunk + linear head on {inputs.describe(trunk)}; "
                  f"AdamW lr={lr:g} (6% linear warm-up, linear decay to 0 at {max_epochs} epochs), "
                  f"layer-wise lr decay {layer_decay:g} (embeddings lr·{layer_decay:g}^{trunk_depth(trunk) + 1}), "
                  f"weight decay {weight_decay:g} on matrices only, grad-norm clip 1.0, batch {batch_size}; "
                  + (f"embeddings and first {freeze_blocks} blocks frozen; " if freeze_blocks else "")
                  + (f"L2-SP alpha={l2sp:g} toward the pretrained trunk (no decay to zero there); " if l2sp else "")
                  + "early stopping on val accuracy of a seeded stratified "
                  f"{val_fraction:.0%} split of train (patience {patience}): ran {epochs_run} of {max_epochs} "
                  f"epochs, best epoch {best['epoch']} restored (seed {seed})"))
