"""The memory of a run's training state on each device, before any activation: weights, gradients and optimizer
state, from the objective a config builds (heads, teachers, queues and prototypes included) on the meta device, so
a billion-parameter recipe is sized without a byte of it allocated.

Per device, for P parameters of which P' are trained (teachers and frozen copies are not), and S processes sharing
each shard (1 under ddp, all of them under fsdp, a machine's under hsdp):

    weights    4 P / S + buffers              fp32 master weights (bf16 is autocast: the weights stay fp32)
    gradients  4 P' / S  (+ 4 P' under ddp)   DDP keeps its reduction buckets beside the gradients
    optimizer  8 P' / S (adamw, lamb)  4 P' / S (lars)

Under fsdp and hsdp with bf16 the largest transformer block is also gathered in bf16 for compute, twice (one block
prefetched while the other computes): `gathered`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.fx.experimental import _config as fx_config

from selfsup.config import RunConfig
from selfsup.data.read.tokenizer import train_bpe
from selfsup.models.blocks import Block
from selfsup.objectives.build import build_objective

OPTIMIZER_FLOATS = {"adamw": 2, "lamb": 2, "lars": 1}  # fp32 tensors of state per trained parameter


@dataclass(frozen=True)
class StateMemory:
    """Bytes per device."""
    weights: int
    gradients: int
    optimizer: int
    gathered: int  # fsdp/hsdp: unsharded blocks in flight

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.gathered


def objective_on_meta(cfg: RunConfig) -> nn.Module:
    """The objective a config trains, built on the meta device without its data: normalisation statistics are
    stand-ins and text objectives get a stand-in tokenizer (only its special tokens are read)."""
    channels = cfg.image.channels
    if cfg.modality == "audio":
        cfg = cfg.with_measured(0.0, 1.0)
    elif cfg.modality in ("image", "video"):
        cfg = cfg.with_measured([0.5] * channels, [0.25] * channels)
    tok = None if cfg.is_image or cfg.modality == "audio" and not cfg.pairs else train_bpe(["a b c"], 260)
    # the masking table lists the ordinary token ids with nonzero(), which has no shape on meta tensors: which ids they
    # are does not change a byte of the state
    with torch.device("meta"), fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        return build_objective(cfg, tok)


def state_memory(cfg: RunConfig, objective: nn.Module, processes: int, per_node: int) -> StateMemory:
    """The training state of `objective` per device for `processes` processes, `per_node` on each machine."""
    shard = {"ddp": 1, "fsdp": processes, "hsdp": per_node}[cfg.dist.strategy] if processes > 1 else 1
    params = sum(p.numel() for p in objective.parameters())
    trained = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in objective.buffers())
    ddp_buckets = 4 * trained if cfg.dist.strategy == "ddp" and processes > 1 else 0
    gathered = 0
    if shard > 1 and cfg.train.precision == "bf16":
        largest = max((sum(p.numel() for p in b.parameters()) for b in objective.modules() if isinstance(b, Block)),
                      default=0)
        gathered = 2 * 2 * largest
    return StateMemory(weights=4 * params // shard + buffers, gradients=4 * trained // shard + ddp_buckets,
                       optimizer=4 * OPTIMIZER_FLOATS[cfg.optim.name] * trained // shard, gathered=gathered)
