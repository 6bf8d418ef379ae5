"""The activation memory of one micro-batch per device, and its FLOPs: the objective's trainable passes (the
trunk on each view, heads, decoders, the language model's output layer) and their backward run on fake tensors
(FakeTensorMode: shapes, dtypes and devices without a byte of data), under the run's autocast and activation
checkpointing (train/parallel.py's, recomputation included), while a dispatch mode follows every tensor made until
it is freed and FlopCounterMode counts the matmuls and convolutions as the trainer does (train/mfu.py).

A whole objective cannot run on fake tensors: views draw crop sizes with .item(), masking lists positions with
nonzero(). So the passes below are each objective's forward without its data-dependent parts, with the mask shares
of its config (MAE's visible patches, MLM's chosen tokens); teachers, momentum encoders and targets run without
gradient (their FLOPs are counted, and their transient tensors are freed before the student's backward).

The peak of the tensors alive at once, parameters apart, holds the saved activations, the temporaries of the
largest op and the gradients made so far; `working` is that peak less the trained parameters' fp32 gradients,
which plan/state.py counts: weights + gradients + optimizer state + working is the peak of a step.
"""

from __future__ import annotations

import gc
import math
import weakref
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from selfsup.config import RunConfig
from selfsup.objectives.align import Towers
from selfsup.objectives.beit import BEiT
from selfsup.objectives.byol import BYOL
from selfsup.objectives.clm import CausalLM
from selfsup.objectives.deepcluster import DeepCluster
from selfsup.objectives.dino import DINO
from selfsup.objectives.hubert import HuBERT
from selfsup.objectives.hybrid import Hybrid
from selfsup.objectives.losses import linear_cross_entropy
from selfsup.objectives.mae import MAE
from selfsup.objectives.mlm import MaskedLM
from selfsup.objectives.mocov2 import MoCoV2
from selfsup.objectives.mocov3 import MoCoV3
from selfsup.objectives.plm import PermutationLM
from selfsup.objectives.simclr import SimCLR
from selfsup.objectives.simcse import SimCSE
from selfsup.objectives.swav import SwAV
from selfsup.train.mfu import ATTENTION_FLOPS
from selfsup.train.parallel import checkpoint_activations

CPU = torch.device("cpu")


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of `rows` on one device, with or without activation checkpointing."""
    rows: int
    working: int  # bytes at the step's peak beyond the training state: activations, temporaries
    flops: float  # forward and backward of the trainable passes (recomputation included), no-grad forwards


def fake_objective(objective: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """`objective` (built on the meta device) with every parameter and buffer replaced, in place, by a fake CPU
    tensor of its shape: it can then run forward under `mode`."""
    made: dict[int, torch.Tensor] = {}  # one fake tensor per meta tensor: tied weights stay tied

    def fake(t: torch.Tensor, parameter: bool) -> torch.Tensor:
        if id(t) not in made:
            # a few small tensors are made on the CPU whatever the default device (step counters, schedules)
            f = mode.fake_tensor_converter.from_meta_and_device(mode, t, CPU) if t.is_meta else mode.from_tensor(t)
            made[id(t)] = nn.Parameter(f, t.requires_grad) if parameter else f
        return made[id(t)]

    for module in objective.modules():
        for table, parameter in ((module._parameters, True), (module._buffers, False)):
            for name, t in table.items():
                if t is not None:
                    table[name] = fake(t, parameter)
    return objective


class LiveBytes(TorchDispatchMode):
    """The bytes of the storages that ops make, from their making until they are freed, and their peak."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        self.owned = {t.untyped_storage()._cdata for t in [*objective.parameters(), *objective.buffers()]}
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.owned and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.now += self.live[key]
                    weakref.finalize(storage, self.free, key)
        self.peak = max(self.peak, self.now)
        return out

    def free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)


def micro_batch(cfg: RunConfig, objective: nn.Module, rows: int, checkpointing: bool) -> MicroBatch:
    """The working memory and FLOPs of one micro-batch of `rows` samples of `objective` (built on the meta device by
    plan/state.objective_on_meta; its tensors are made fake here, so build one per call)."""
    mode = FakeTensorMode()
    objective = fake_objective(objective, mode)
    if checkpointing:
        checkpoint_activations(objective)
    grads = sum(4 * p.numel() for p in objective.parameters() if p.requires_grad)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.train.precision == "bf16" else nullcontext()
    # checkpointing's recomputed tensors are freed by the garbage collector, as in a real run: when it runs moves the
    # peak by a few percent; starting from a collected heap makes that the same for the same config (a full collection
    # of a large heap takes a second: only where it matters)
    if checkpointing:
        gc.collect()
    with mode, FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter, LiveBytes(objective) as live:
        with torch.no_grad(), cast:
            untrained_passes(cfg, objective, rows)
        with cast:
            losses = trainable_passes(cfg, objective, rows)
        sum(loss.float().sum() for loss in losses).backward()
        del losses
    return MicroBatch(rows, max(live.peak - grads, 0), float(counter.get_total_flops()))


def images(rows: int, cfg: RunConfig, size: int | None = None) -> torch.Tensor:
    """(rows, C, S, S) float: a view as the trunk receives it (normalised, after the no-grad augmentations)."""
    s = size or cfg.image.size
    return torch.randn(rows, cfg.image.channels, s, s)


def tokens(rows: int, length: int) -> torch.Tensor:
    return torch.zeros(rows, length, dtype=torch.long)


def trainable_passes(cfg: RunConfig, obj: nn.Module, B: int) -> list[torch.Tensor]:
    """Each objective's forward with gradient, without its data-dependent parts; returns what backward starts from."""
    if isinstance(obj, Hybrid):
        return [out for term in obj.terms.values() for out in trainable_passes(cfg, term, B)]
    if isinstance(obj, CausalLM):
        T = obj.model.cfg.context
        hidden = obj.model(tokens(B, T), tokens(B, T) if obj.doc_mask else None)  # (B, T, D); one document a row
        return [linear_cross_entropy(hidden.flatten(0, 1), obj.model.out_weight, tokens(B * T, 1).flatten())[0]]
    if isinstance(obj, MaskedLM):
        T = obj.model.cfg.context
        hidden = obj.model(tokens(B, T), tokens(B, T) if obj.doc_mask else None)  # (B, T, D)
        n = math.ceil(obj.p * B * T)  # the chosen tokens
        h = obj.head(hidden.flatten(0, 1)[:n])  # (n, D)
        return [linear_cross_entropy(h, obj.model.embed.weight, tokens(n, 1).flatten(), obj.head.bias)[0]]
    if isinstance(obj, PermutationLM):
        T = obj.model.cfg.context
        order = torch.arange(T).expand(B, T).clone()  # every position a target: M at its most
        _, hidden, _, valid = obj.two_stream(tokens(B, T), order)  # (B, M, D)
        h = obj.head(hidden.flatten(0, 1))
        return [linear_cross_entropy(h, obj.model.embed.weight, tokens(h.shape[0], 1).flatten(), obj.head.bias)[0]]
    if isinstance(obj, SimCSE):
        return [obj.model(tokens(2 * B, obj.model.cfg.context))]  # two dropout views
    if isinstance(obj, (SimCLR, MoCoV2, DeepCluster)):
        head = obj.classifier if isinstance(obj, DeepCluster) else nn.Identity()
        views = 1 if isinstance(obj, DeepCluster) else 2
        return [head(obj.projector(obj.model(images(views * B, cfg))))]
    if isinstance(obj, (BYOL, MoCoV3)):
        return [obj.predictor(obj.projector(obj.model(images(2 * B, cfg))))]
    if isinstance(obj, DINO):
        outs = [obj.head(obj.model(images(obj.n_global * B, cfg)))]
        if obj.views.n_local:  # the local crops at the size the objective's views make them
            outs.append(obj.head(obj.model(images(obj.views.n_local * B, cfg, obj.views.local.settings["size"]))))
        return outs
    if isinstance(obj, SwAV):
        outs = [obj.scores(images(obj.n_global * B, cfg))[2]]
        if obj.views.n_local:
            outs.append(obj.scores(images(obj.views.n_local * B, cfg, obj.views.local.settings["size"]))[2])
        return outs
    if isinstance(obj, MAE):
        return [mae_pass(obj, images(B, cfg))]
    if isinstance(obj, BEiT):
        T = obj.model.grid ** 2
        x = obj.model.embed(images(B, cfg)).flatten(2).transpose(1, 2)  # (B, T, D)
        h = obj.model.encode(x + obj.model.positions(obj.model.grid, obj.model.grid).to(x.dtype))  # (B, 1 + T, D)
        return [obj.head(h[:, 1:1 + round(obj.mask_ratio * T)])]  # the masked patches
    if isinstance(obj, Towers):
        media = obj.project_media(obj.model(*media_input(cfg, obj, B)))
        L = obj.text.cfg.context
        return [media, obj.embed_text(tokens(B, L), torch.ones(B, L, dtype=torch.bool))]
    if isinstance(obj, HuBERT):
        x = obj.model.embed(media_input(cfg, obj, B)[0])  # (B, T, D)
        h = obj.model.encode(x, torch.ones(x.shape[:2], dtype=torch.bool))  # (B, T, D)
        n = math.ceil(obj.mask_prob * obj.mask_length * h.shape[0] * h.shape[1])  # spans' tokens, before overlaps
        return [obj.proj(h.flatten(0, 1)[:n])]
    raise TypeError(f"no plan for {type(obj).__name__}")


def mae_pass(obj: MAE, x: torch.Tensor) -> torch.Tensor:
    """MAE's forward: the encoder on the visible patches, the decoder on all of them."""
    B, T = x.shape[0], obj.model.grid ** 2
    keep = torch.arange(T - round(obj.mask_ratio * T)).expand(B, -1)  # (B, T')
    y = obj.decoder_embed(obj.model.tokens(x, keep))  # (B, 1 + T', E)
    y = torch.cat([y, obj.mask_token.expand(B, T - keep.shape[1], -1).to(y.dtype)], dim=1)  # (B, 1 + T, E)
    for block in obj.decoder:
        y = block(y, None, None, causal=False)
    return obj.decoder_pred(obj.decoder_norm(y)[:, 1:])  # (B, T, P·P·C)


def media_input(cfg: RunConfig, obj: nn.Module, B: int) -> tuple:
    """What a media tower's forward takes for B rows (images, clips, videos), after the no-grad view."""
    if cfg.pairs and cfg.align.modality == "image":
        return (images(B, cfg),)
    if cfg.pairs and cfg.align.modality == "video":
        return (torch.randn(B, cfg.video.frames, cfg.image.channels, cfg.image.size, cfg.image.size),)
    samples = round(cfg.audio.sample_rate * cfg.audio.seconds)
    if cfg.audio.input == "waveform":
        return torch.randn(B, samples), torch.full((B,), samples)
    frames = samples // cfg.audio.hop + 1
    return torch.randn(B, cfg.audio.n_mels, frames), torch.full((B,), frames)  # (B, M, F)


def untrained_passes(cfg: RunConfig, obj: nn.Module, B: int) -> None:
    """The forwards without gradient whose FLOPs a step spends: teachers and momentum encoders on the global views."""
    if isinstance(obj, Hybrid):
        for term in obj.terms.values():
            untrained_passes(cfg, term, B)
    elif isinstance(obj, DINO):
        obj.teacher.head(obj.teacher.model(images(obj.n_global * B, cfg)))
    elif isinstance(obj, (MoCoV2, MoCoV3)):
        encoder = obj.key_encoder if isinstance(obj, MoCoV2) else obj.momentum_encoder
        encoder.projector(encoder.model(images(2 * B, cfg)))
    elif isinstance(obj, BYOL):
        obj.target.projector(obj.target.model(images(2 * B, cfg)))
