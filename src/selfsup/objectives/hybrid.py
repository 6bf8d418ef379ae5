"""Several objectives trained together on one backbone (e.g. MAE + SimCLR, MLM + SimCSE): the loss is
Σ_i w_i(step) · mean_i, where mean_i is term i's loss per its own unit (masked patch, anchor, chosen token), so a
weight means the same whatever a term counts. Each term runs its own forward pass on the batch, with its own
views, heads and teacher; only the backbone is shared.

Across processes mean_i is the global batch's: each term's summed loss is divided by its count summed over the
processes (one all-reduce of every term's loss and count), and the hybrid reports count 1 per process, so the
trainer's × world / (global count) leaves the gradient of Σ_i w_i · mean_i. Under gradient accumulation each
micro-batch is weighted equally (a term's count can differ between micro-batches, e.g. MLM's chosen tokens).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from selfsup.data.batch import Batch
from selfsup.dist import all_reduce, rank_and_world
from selfsup.objectives.contract import Objective
from selfsup.objectives.output import LossOutput


def weight_at(step: int, max_steps: int, start: float, end: float, schedule: str) -> float:
    """A term's weight at `step`: from `start` at step 0 to `end` at max_steps, linearly or on a half cosine."""
    progress = min(step / max(max_steps, 1), 1.0)
    if schedule == "cosine":
        progress = (1 - math.cos(math.pi * progress)) / 2
    return start + (end - start) * progress


class Hybrid(nn.Module, Objective):
    def __init__(self, backbone: nn.Module, terms: dict[str, Objective], weights: list[tuple[float, float]],
                 schedule: str, max_steps: int):
        """terms: objective name -> objective built around `backbone`; weights: (at step 0, at the last step)."""
        super().__init__()
        self.model = backbone
        for term in terms.values():
            # the backbone is registered once, here: a term keeps it as a plain attribute, so parameters, state
            # dicts and parallel wrapping see one copy (the terms' teachers are their own copies)
            delattr(term, "model")  # nn.Module's delattr: no longer a submodule of the term
            object.__setattr__(term, "model", backbone)  # bypasses nn.Module's registration on purpose
        self.terms = nn.ModuleDict(terms)
        self.weights, self.schedule, self.max_steps = weights, schedule, max_steps
        first = next(iter(terms.values()))
        self.unit = first.unit
        self.window_overlap = first.window_overlap
        self.validates = all(t.validates for t in terms.values())
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # the weights' schedule, checkpointed

    def current_weights(self) -> list[float]:
        step = int(self.step)
        return [weight_at(step, self.max_steps, a, b, self.schedule) for a, b in self.weights]

    def forward(self, batch: Batch) -> LossOutput:
        outs = [term(batch) for term in self.terms.values()]
        sums = torch.stack([o.loss.float() for o in outs])  # (K,) each term's summed loss on this process
        counts = torch.stack([torch.as_tensor(o.count, dtype=torch.float32, device=sums.device) for o in outs])
        totals = all_reduce(torch.cat([sums.detach(), counts]))  # (2K,) over all processes
        global_sums, global_counts = totals.chunk(2)
        weights = self.current_weights()
        loss = sum(w * s / c for w, s, c in zip(weights, sums, global_counts))  # this process's share
        metrics = {}
        for name, w, s, c, out in zip(self.terms, weights, global_sums, global_counts, outs):
            metrics[f"{name}_loss"] = s / c
            metrics[f"{name}_weight"] = w
            metrics.update({f"{name}_{k}": v for k, v in out.metrics.items()})
        watched = next((o for o in outs if o.projections), next((o for o in outs if o.embeddings), outs[0]))
        _, world = rank_and_world()
        return LossOutput(loss * world, 1, units=outs[0].units, metrics=metrics, embeddings=watched.embeddings,
                          projections=watched.projections)

    def before_step(self, step: int) -> None:
        for term in self.terms.values():
            term.before_step(step)

    def after_step(self, step: int) -> None:
        for term in self.terms.values():
            term.after_step(step)
        self.step.fill_(step)

    def reinitialised(self, step: int) -> list[nn.Parameter]:
        return [p for term in self.terms.values() for p in term.reinitialised(step)]

    def flops_per_token(self) -> float:
        """Text: every term's forward passes (the trunk once per pass)."""
        return sum(term.flops_per_token() for term in self.terms.values())
