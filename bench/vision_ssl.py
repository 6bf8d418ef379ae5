"""selfsup's SimCLR and DINO against lightly (or a plain-PyTorch reference) on CPU: training images/s, peak memory,
and augmentation throughput beside what training consumes.

Both sides train a ViT-Tiny-like backbone (patch 4 on 32 × 32 RGB, width 192, depth 6, 3 heads, MLP 768, class
token) with the recipes' heads (SimCLR: projector 2048 → 128, NT-Xent at τ 0.2; DINO: head 2048-2048-256 →
4096 prototypes, EMA teacher on a cosine momentum schedule from 0.996, centre EMA 0.9) on batches of 128 images,
two views each, with the recipes' AdamW hyper-parameters (no decay on 1-D parameters) and gradient clipping.

The peer is chosen at start and named in the output and the JSON (`peer`):

- `lightly` (when `import lightly` works; it needs torchvision): lightly's SimCLRProjectionHead + NTXentLoss,
  DINOProjectionHead + DINOLoss + update_momentum, around the plain-PyTorch ViT below (lightly ships no backbone of
  its own; its tutorials plug in a torchvision/timm model, whose blocks are the same nn.MultiheadAttention kind).
- `torch` (otherwise, or with `--peer torch`): a reference written here as a user would from the papers and the
  usual tutorials: a ViT of 6 × nn.TransformerEncoderLayer(192, 3, 768, gelu, batch_first, norm_first) with a
  conv patch embedding, class token and learned positions; SimCLR's Linear-BN-ReLU-Linear projector and NT-Xent
  as F.cross_entropy over the masked 2B × 2B cosine matrix; DINO's student/teacher with a head of our sizes
  (weight-normalised last layer, g fixed to 1), the centred/sharpened loss over the two global views, the teacher
  EMA as the usual per-parameter loop and the centre EMA.

Either peer steps torch.optim.AdamW with torch's defaults, the recipe's lr, weight decay (not on 1-D parameters,
as DINO's code), betas and clipping. On CPU the default (foreach=None) is the per-parameter for-loop: torch picks
the multi-tensor kernel only on CUDA/XPU. `--peer-optim foreach` gives the peer that kernel; selfsup's optimizer
is what the trainer builds, AdamW(fused=True).

Fairness: both sides train on the SAME pre-augmented views. The two views of each pool batch are made once with
the recipe's kornia MultiView and fed to both; on the selfsup side `objective.views` is replaced by a module that
returns the views carried in the batch, so the timed step is model + loss + optimizer + EMA/centre on both
sides. A selfsup step is the trainer's: `accumulate` (summed loss backward, grads ÷ count), clip_grad_norm_,
the objective's before_step, optimizer.step, after_step (DINO: teacher EMA), zero_grad. DINO runs with
views.local_crops=0 (both sides see exactly the two 32 × 32 global views); its step counter starts after the
recipe's freeze_last_layer_steps, so the timed steps are the bulk of a run (every parameter updated).

The augmentation is timed on its own: source images/s of the recipe's MultiView on uint8 128 × 3 × 32 × 32
batches (SimCLR's two views; DINO's two global views; DINO with its recipe's local crops), printed beside the
training consumption (the fastest training images/s measured for that objective). In selfsup the views are
made inside the objective's forward, in the training process, so on CPU they add to every step: the share
column says how much of a real step they would take. Source images are seeded uniform uint8 noise (the cost of
every stage is independent of the pixel values).

Timed rounds alternate between the two sides (the order too) so that whatever else the machine does hits both
alike; we report medians and the ratio selfsup / peer. Peak memory (RSS) comes from one fresh child process per
objective, side and setting, with its high-water mark reset after warm-up.

    .venv/bin/python bench/vision_ssl.py                          # the full benchmark (eager, fp32 and bf16)
    .venv/bin/python bench/vision_ssl.py --compile both           # eager and torch.compile on both sides
    .venv/bin/python bench/vision_ssl.py --peer-optim foreach     # the peer on torch's multi-tensor AdamW
    .venv/bin/python bench/vision_ssl.py --steps 1 --rounds 1 --batch 16 --aug-batches 2   # a smoke test (~1 min)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import (MIB, graphs_compiled, machine_info, peak_rss_bytes, reset_peak_rss, rss_bytes, run_child, run_steps,
                    training_args, write_json)

SIZE, CHANNELS, PATCH, DIM, DEPTH, HEADS, MLP = 32, 3, 4, 192, 6, 3, 768
B = 128  # images per step (--batch changes it, for smoke tests only)
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's, as a 32 × 32 RGB recipe would measure
OBJECTIVES = ("simclr", "dino")
IMPLS = ("selfsup", "peer")
WARMUP = {False: 2, True: 3}  # compiled: step 1 compiles forward and backward, 2-3 settle shapes and caches
MEMORY_STEPS = 3  # steps measured in a memory child after its warm-up
POOL = 4  # distinct batches (of two views each) the training steps cycle through; the same for both sides
AUG_POOL = 4  # distinct uint8 batches the augmentation timing cycles through


def cpu() -> torch.device:
    return torch.device("cpu")


def amp(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


# ----------------------------------------------------------------------------------------------- selfsup

def overrides(batch: int) -> list[str]:
    """What both objectives override in their recipes: the benchmark's image and backbone, the recipes' mlp/norm."""
    return [f"image.size={SIZE}", f"image.channels={CHANNELS}", f"image.mean={list(MEAN)}", f"image.std={list(STD)}",
            f"model.dim={DIM}", f"model.depth={DEPTH}", f"model.heads={HEADS}", f"model.patch={PATCH}",
            "model.backbone=vit", f"train.batch_size={batch}"]


def load_config(objective: str, batch: int, local_crops: bool = False):
    """The recipe with the benchmark's overrides; DINO without local crops unless asked (augmentation timing)."""
    from selfsup import config

    extra = [] if objective != "dino" or local_crops else ["views.local_crops=0"]
    return config.load(objective, overrides(batch) + extra)


class PremadeViews(nn.Module):
    """Stands in for the objective's MultiView: the batch's "images" already hold the views, (V, B, C, S, S)."""

    def forward(self, views: torch.Tensor) -> list[torch.Tensor]:
        return list(views.unbind(0))  # V × (B, C, S, S)


def build_selfsup(objective: str, precision: str, compiled: bool, batch: int):
    """The objective as `selfsup train` builds it, its views replaced; returns (step, trained params, optimizer,
    config)."""
    from selfsup.objectives.build import build_objective
    from selfsup.train import optim
    from selfsup.train.step import accumulate

    cfg = load_config(objective, batch)
    model = build_objective(cfg)
    model.views = PremadeViews()
    opt = optim.build(model, cfg.optim, cpu())
    if compiled:
        model.compile()  # as the trainer does with train.compile=true: backbone, heads, loss
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    clip = cfg.train.clip_grad or float("inf")
    before, after = getattr(model, "before_step", None), getattr(model, "after_step", None)
    counter = [start_step(cfg)]

    def step(views: torch.Tensor) -> None:  # the trainer's step, less logging and checkpoints
        counter[0] += 1
        loss, _, _ = accumulate(model, [{"images": views}], cpu(), precision)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).item()
        if math.isfinite(loss) and math.isfinite(grad_norm):
            if before is not None:
                before(counter[0])
            opt.step()
            if after is not None:
                after(counter[0])
        opt.zero_grad(set_to_none=True)

    return step, params, opt, cfg


def start_step(cfg) -> int:
    """DINO's first timed step comes after the frozen-last-layer phase, on both sides."""
    return cfg.dino.freeze_last_layer_steps if cfg.objective == "dino" else 0


# ---------------------------------------------------------------------------------- plain-PyTorch reference

class RefViT(nn.Module):
    """The ViT a user writes with torch's own encoder layer: conv patches, class token, learned positions."""

    def __init__(self):
        super().__init__()
        self.out_dim = DIM
        self.embed = nn.Conv2d(CHANNELS, DIM, PATCH, stride=PATCH)  # (B, C, H, W) -> (B, D, H/P, W/P)
        self.cls = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos = nn.Parameter(torch.zeros(1, 1 + (SIZE // PATCH) ** 2, DIM))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(DIM, HEADS, MLP, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, DEPTH, norm=nn.LayerNorm(DIM), enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, D)
        x = self.embed(x).flatten(2).transpose(1, 2)  # (B, T, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos  # (B, 1 + T, D)
        return self.encoder(x)[:, 0]


class RefDINOHead(nn.Module):
    """DINO's head: 3-layer GELU MLP, L2-normalised bottleneck, weight-normalised last layer with g fixed to 1."""

    def __init__(self, dim_in: int, out_dim: int, hidden: int, bottleneck: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1)
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


class RefSimCLR(nn.Module):
    def __init__(self, proj_hidden: int, proj_dim: int, temperature: float):
        super().__init__()
        self.backbone = RefViT()
        self.projector = nn.Sequential(nn.Linear(DIM, proj_hidden), nn.BatchNorm1d(proj_hidden), nn.ReLU(),
                                       nn.Linear(proj_hidden, proj_dim))
        self.temperature = temperature

    def forward(self, views: torch.Tensor) -> torch.Tensor:  # views: (2, B, C, S, S)
        x1, x2 = views
        z = F.normalize(self.projector(self.backbone(torch.cat([x1, x2]))), dim=1)  # (2B, E)
        n = z.shape[0]
        sim = (z @ z.t() / self.temperature).masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
        labels = torch.cat([torch.arange(n // 2, n), torch.arange(0, n // 2)])  # the other view of each image
        return F.cross_entropy(sim, labels)


class RefDINO(nn.Module):
    def __init__(self, out_dim: int, hidden: int, bottleneck: int, student_temp: float, teacher_temp: float,
                 center_momentum: float):
        super().__init__()
        self.student = nn.Sequential(RefViT(), RefDINOHead(DIM, out_dim, hidden, bottleneck))
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.student_temp, self.teacher_temp, self.center_momentum = student_temp, teacher_temp, center_momentum

    def forward(self, views: torch.Tensor) -> torch.Tensor:  # views: (2, B, C, S, S), the two global crops
        x = torch.cat(list(views))  # (2B, C, S, S)
        with torch.no_grad():
            t_out = self.teacher(x)
        s_out = self.student(x)
        s_chunks = (s_out / self.student_temp).chunk(2)
        t_chunks = F.softmax((t_out - self.center) / self.teacher_temp, dim=-1).detach().chunk(2)
        total, n = 0, 0
        for i, q in enumerate(t_chunks):
            for v, s in enumerate(s_chunks):
                if v == i:
                    continue
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                n += 1
        self.update_center(t_out)
        return total / n

    @torch.no_grad()
    def update_center(self, t_out: torch.Tensor) -> None:
        self.center.mul_(self.center_momentum).add_(t_out.mean(dim=0, keepdim=True), alpha=1 - self.center_momentum)

    def cancel_last_layer_gradients(self, step: int, freeze: int) -> None:
        if step <= freeze:
            for p in self.student[1].last.parameters():
                p.grad = None

    @torch.no_grad()
    def update_teacher(self, m: float) -> None:
        for p_s, p_t in zip(self.student.parameters(), self.teacher.parameters()):
            p_t.data.mul_(m).add_(p_s.data, alpha=1 - m)


# ------------------------------------------------------------------------------------------------ lightly

def lightly_available() -> bool:
    try:
        import lightly  # noqa: F401
        return True
    except Exception:  # ImportError, or torchvision failing underneath
        return False


class LightlySimCLR(nn.Module):
    """lightly's SimCLR tutorial around the reference ViT, both views in one pass (BatchNorm over 2B, as ours).
    SimCLRProjectionHead's defaults put a BatchNorm after its last linear layer too."""

    def __init__(self, proj_hidden: int, proj_dim: int, temperature: float):
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = RefViT()
        self.projector = SimCLRProjectionHead(DIM, proj_hidden, proj_dim)
        self.criterion = NTXentLoss(temperature=temperature)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.backbone(torch.cat(list(views)))).chunk(2)
        return self.criterion(z1, z2)


class LightlyDINO(nn.Module):
    """lightly's DINO tutorial around the reference ViT: student/teacher backbone and DINOProjectionHead, DINOLoss
    (its centre EMA runs inside the loss), update_momentum after the step."""

    def __init__(self, out_dim: int, hidden: int, bottleneck: int, student_temp: float, teacher_temp: float,
                 center_momentum: float, freeze: int):
        super().__init__()
        import inspect

        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.student_backbone = RefViT()
        self.student_head = DINOProjectionHead(DIM, hidden, bottleneck, out_dim, batch_norm=False,
                                               freeze_last_layer=freeze)
        self.teacher_backbone = copy.deepcopy(self.student_backbone)
        self.teacher_head = DINOProjectionHead(DIM, hidden, bottleneck, out_dim, batch_norm=False)  # as lightly's
        self.teacher_head.load_state_dict(self.student_head.state_dict())  # example: its weight_norm can't deepcopy
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=out_dim, warmup_teacher_temp=teacher_temp, teacher_temp=teacher_temp,
                                  student_temp=student_temp, center_momentum=center_momentum)
        takes_temp = "teacher_temp" in inspect.signature(self.criterion.forward).parameters
        self.loss_kwargs = {"teacher_temp": teacher_temp} if takes_temp else {"epoch": 0}  # older lightly: epoch

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        x = torch.cat(list(views))
        with torch.no_grad():
            t_out = self.teacher_head(self.teacher_backbone(x)).chunk(2)
        s_out = self.student_head(self.student_backbone(x)).chunk(2)
        return self.criterion(list(t_out), list(s_out), **self.loss_kwargs)

    def cancel_last_layer_gradients(self, step: int, freeze: int) -> None:
        self.student_head.cancel_last_layer_gradients(step - 1)  # lightly counts from 0: frozen while step <= freeze

    @torch.no_grad()
    def update_teacher(self, m: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.student_backbone, self.teacher_backbone, m)
        update_momentum(self.student_head, self.teacher_head, m)


# -------------------------------------------------------------------------------------------------- peer

def build_peer(peer: str, objective: str, precision: str, compiled: bool, batch: int, foreach: bool | None):
    """The peer's module, AdamW and loop with the recipe's hyper-parameters; returns (step, params, optimizer)."""
    from selfsup.objectives.teacher import momentum_at

    cfg = load_config(objective, batch)
    s, d = cfg.ssl, cfg.dino
    lightly = peer == "lightly"
    if objective == "simclr":
        model = (LightlySimCLR if lightly else RefSimCLR)(s.proj_hidden, s.proj_dim, s.temperature)
    else:
        args = (d.out_dim, s.proj_hidden, d.bottleneck, d.student_temp, d.teacher_temp, d.center_momentum)
        model = LightlyDINO(*args, freeze=d.freeze_last_layer_steps) if lightly else RefDINO(*args)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},  # as DINO's code
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, foreach=foreach)  # None: torch's default
    if compiled:
        model.compile()  # the whole forward: backbone, heads, loss (and DINO's centre update)
    model.train()
    clip = cfg.train.clip_grad or float("inf")
    counter = [start_step(cfg)]

    def step(views: torch.Tensor) -> None:
        counter[0] += 1
        with amp(precision):
            loss = model(views)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        if objective == "dino":
            model.cancel_last_layer_gradients(counter[0], d.freeze_last_layer_steps)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if objective == "dino":
            model.update_teacher(momentum_at(counter[0], cfg.train.max_steps, s.momentum))

    return step, params, opt


def build(impl: str, peer: str, objective: str, precision: str, compiled: bool, batch: int,
          foreach: bool | None = None):
    """A fresh model and optimizer (same seed every time): (step on (2, B, C, S, S) views, parameter count,
    optimizer in words)."""
    torch.manual_seed(0)
    if impl == "selfsup":
        step, params, opt, _ = build_selfsup(objective, precision, compiled, batch)
    else:
        step, params, opt = build_peer(peer, objective, precision, compiled, batch, foreach)
    return step, sum(p.numel() for p in params), describe_adamw(opt)


def describe_adamw(opt: torch.optim.Optimizer) -> str:
    """The AdamW implementation that actually runs: fused, foreach (multi-tensor) or the per-parameter loop. With
    foreach=None (the default) torch picks foreach only where every parameter is on CUDA/XPU: a for-loop on CPU."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    if opt.defaults.get("fused"):
        return "torch.optim.AdamW(fused=True)"
    foreach = opt.defaults.get("foreach")
    params = [p for g in opt.param_groups for p in g["params"]]
    runs = foreach if foreach is not None else _default_to_fused_or_foreach(params, False, False)[1]
    return f"torch.optim.AdamW(foreach={foreach}): {'multi-tensor foreach' if runs else 'per-parameter for-loop'}"


# ------------------------------------------------------------------------------------------------- data

def source_images(batch: int) -> torch.Tensor:
    """(AUG_POOL, B, C, S, S) uint8, seeded noise."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (AUG_POOL, batch, CHANNELS, SIZE, SIZE), dtype=torch.uint8, generator=g)


def make_views(objective: str, images: torch.Tensor, batch: int) -> torch.Tensor:
    """(POOL, 2, B, C, S, S): each pool batch's two views, made once with the recipe's MultiView."""
    from selfsup.objectives.build import image_views

    views = image_views(load_config(objective, batch))
    torch.manual_seed(1)
    with torch.no_grad():
        return torch.stack([torch.stack(views(images[i % len(images)])[:2]) for i in range(POOL)])


def augmentations(batch: int) -> dict:
    """The MultiViews under test: name -> (module, what it makes)."""
    from selfsup.objectives.build import image_views

    simclr, dino, dino_local = (load_config("simclr", batch), load_config("dino", batch),
                                load_config("dino", batch, local_crops=True))
    local = image_views(dino_local)
    return {"simclr": (image_views(simclr), f"2 × {SIZE}²"),
            "dino": (image_views(dino), f"2 × {SIZE}²"),
            "dino+local": (local, f"2 × {SIZE}² + {local.n_local} × {local.local.settings['size']}²")}


def augment_rate(fns: dict, images: torch.Tensor, n_batches: int, rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds (the order rotates every round) of n_batches calls each: source images/s per round."""
    names = list(fns)
    with torch.no_grad():
        for fn in fns.values():  # warm-up: kornia builds its parameter generators, the allocator its pools
            for i in range(2):
                fn(images[i % len(images)])
        rates = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn = fns[name]
                t0 = time.perf_counter()
                for i in range(n_batches):
                    fn(images[i % len(images)])
                rates[name].append(n_batches * images.shape[1] / (time.perf_counter() - t0))
    return rates


# ---------------------------------------------------------------------------------------------- timing

def memory_child(spec: str, folder: Path) -> dict:
    """In a fresh process: RSS just before the first step, then the RSS peak of MEMORY_STEPS steps after warm-up
    (the high-water mark is reset after warm-up so compilation's transient memory stays out of the figure)."""
    impl, peer, objective, precision, compiled, batch, foreach = spec.split(",")
    compiled, batch, foreach = compiled == "1", int(batch), {"default": None, "foreach": True}[foreach]
    views = torch.load(folder / f"{objective}.pt")
    step, *_ = build(impl, peer, objective, precision, compiled, batch, foreach)
    base = rss_bytes()
    run_steps(step, views, WARMUP[compiled], views.shape[2])
    with_warmup = peak_rss_bytes()
    was_reset = reset_peak_rss()
    graphs = graphs_compiled()
    run_steps(step, views, MEMORY_STEPS, views.shape[2])
    peak = peak_rss_bytes()
    return dict(peak_mib=(peak - base) / MIB, peak_with_warmup_mib=(with_warmup - base) / MIB,
                base_mib=base / MIB, peak_was_reset=was_reset,
                graphs_compiled_in_measured_steps=graphs_compiled() - graphs)


# ------------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = training_args(__doc__)
    ap.set_defaults(compile="off")  # compiling on a small CPU takes minutes per setting; --compile on/both
    ap.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma-separated, of simclr and dino")
    ap.add_argument("--peer", choices=("auto", "lightly", "torch"), default="auto",
                    help="auto: lightly when importable, else the plain-PyTorch reference (default auto)")
    ap.add_argument("--peer-optim", choices=("default", "foreach"), default="default",
                    help="the peer's AdamW: torch's default (foreach=None, a per-parameter loop on CPU) or "
                         "foreach=True (the multi-tensor kernel); default: default")
    ap.add_argument("--batch", type=int, default=B, help=f"images per step (default {B}; smaller for smoke tests)")
    ap.add_argument("--aug-batches", type=int, default=20,
                    help="batches per round when timing the augmentation alone (default 20)")
    ap.add_argument("--data", help=argparse.SUPPRESS)  # internal: the folder the views were saved in
    args = ap.parse_args()
    if args.child:
        print(json.dumps(memory_child(args.child, Path(args.data))))
        return
    precisions, objectives = args.precisions.split(","), args.objectives.split(",")
    if not set(precisions) <= {"fp32", "bf16"} or not set(objectives) <= set(OBJECTIVES):
        ap.error("--precisions takes fp32 and/or bf16, --objectives simclr and/or dino")
    if min(args.steps, args.rounds, args.batch, args.aug_batches) < 1:
        ap.error("--steps, --rounds, --batch and --aug-batches take at least 1")
    has_lightly = lightly_available()
    if args.peer == "lightly" and not has_lightly:
        ap.error("--peer lightly: `import lightly` fails here (it needs torchvision)")
    peer = "lightly" if args.peer != "torch" and has_lightly else "torch"
    peer_name = {"lightly": "lightly", "torch": "plain PyTorch"}[peer]
    batch = args.batch
    foreach = {"default": None, "foreach": True}[args.peer_optim]

    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))  # the tables need ~100 columns, even in a log file
    machine = machine_info()
    console.print(f"torch {machine['torch']}, {machine['threads']} threads on {machine['cores']} cores, "
                  f"{machine['cpu']}")
    if peer == "lightly":
        import lightly
        peer_desc = (f"lightly {lightly.__version__}: SimCLRProjectionHead + NTXentLoss, DINOProjectionHead + "
                     "DINOLoss + update_momentum, around the reference ViT (nn.TransformerEncoderLayer)")
    else:
        peer_desc = ("plain PyTorch reference (lightly not importable" + ("" if not has_lightly else ", --peer torch")
                     + "): ViT of nn.TransformerEncoderLayer, heads, NT-Xent / DINO loss, EMA loops written here")
    console.print(f"peer: {peer_desc}")
    if batch != B:
        console.print(f"[yellow]batch {batch} instead of {B}: a smoke test, not the benchmark")

    settings = {}
    for o in objectives:
        cfg = load_config(o, batch)
        settings[o] = dict(clip=cfg.train.clip_grad, **cfg.optim.model_dump(include={"lr", "weight_decay", "betas",
                                                                                      "eps"}))
    dino_cfg = load_config("dino", batch)
    counts, optimizers = {}, {}
    for o in objectives:
        built = {impl: build(impl, peer, o, "fp32", False, batch, foreach)[1:] for impl in IMPLS}
        counts[o] = {impl: b[0] for impl, b in built.items()}
        optimizers[o] = {impl: b[1] for impl, b in built.items()}
        console.print(f"{o}: trained parameters selfsup {counts[o]['selfsup']:,}, {peer_name} {counts[o]['peer']:,}; "
                      f"optimizer selfsup {optimizers[o]['selfsup']}, {peer_name} {optimizers[o]['peer']}; "
                      f"lr {settings[o]['lr']}, wd {settings[o]['weight_decay']} (not on 1-D params), "
                      f"betas {tuple(settings[o]['betas'])}, clip {settings[o]['clip']}")
    console.print("backbones: selfsup ViT (bias-free LayerNorm and linears, fixed sin-cos positions, SDPA); "
                  "peer nn.TransformerEncoderLayer (biases, learned positions); same width, depth, heads, MLP, "
                  "patch, class token")
    if "dino" in objectives:
        console.print(f"dino: local_crops=0, {dino_cfg.dino.out_dim} prototypes, steps counted from "
                      f"{dino_cfg.dino.freeze_last_layer_steps} (after the last layer's freeze) on both sides")

    # augmentation alone, then the views both sides train on
    images = source_images(batch)
    augs = augmentations(batch)
    aug_rounds = augment_rate({n: a[0] for n, a in augs.items()}, images, args.aug_batches, args.rounds)
    aug_rate = {n: statistics.median(v) for n, v in aug_rounds.items()}
    console.print("augmentation, source images/s: " + ", ".join(f"{n} ({augs[n][1]}) {r:,.0f}"
                                                                 for n, r in aug_rate.items()))

    modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.compile]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pools = {}
        for o in objectives:
            pools[o] = make_views(o, images, batch)  # (POOL, 2, B, C, S, S)
            torch.save(pools[o], folder / f"{o}.pt")
        for o in objectives:
            for precision in precisions:
                for compiled in modes:
                    label = f"{o}, {precision}, {'compiled' if compiled else 'eager'}"
                    steps = {impl: build(impl, peer, o, precision, compiled, batch, foreach)[0] for impl in IMPLS}
                    warmup_s = {}
                    for impl in IMPLS:  # compilation happens here, outside the timed rounds
                        t0 = time.perf_counter()
                        run_steps(steps[impl], pools[o], WARMUP[compiled], pools[o].shape[2])
                        warmup_s[impl] = time.perf_counter() - t0
                    speeds, recompiled = {impl: [] for impl in IMPLS}, dict.fromkeys(IMPLS, 0)
                    for r in range(args.rounds):  # who goes first alternates too
                        for impl in IMPLS if r % 2 == 0 else IMPLS[::-1]:
                            graphs = graphs_compiled()
                            speeds[impl].append(run_steps(steps[impl], pools[o], args.steps, pools[o].shape[2]))
                            recompiled[impl] += graphs_compiled() - graphs
                    del steps  # free both models before the memory children start
                    img_s = {impl: statistics.median(v) for impl, v in speeds.items()}
                    spec = f"{peer},{o},{precision},{int(compiled)},{batch},{args.peer_optim}"
                    memory = {impl: run_child(__file__, ["--child", f"{impl},{spec}", "--data", tmp]) for impl in IMPLS}
                    results.append(dict(objective=o, precision=precision, compiled=compiled, images_per_s=img_s,
                                        rounds=speeds, warmup_s=warmup_s, memory=memory,
                                        graphs_compiled_in_timed_steps=recompiled,
                                        speed_ratio=img_s["selfsup"] / img_s["peer"],
                                        memory_ratio=memory["selfsup"]["peak_mib"] / memory["peer"]["peak_mib"]))
                    console.print(f"{label}: selfsup {img_s['selfsup']:,.1f} img/s, {peer_name} "
                                  f"{img_s['peer']:,.1f} img/s")
                    if any(recompiled.values()):
                        console.print(f"[yellow]  torch.compile built graphs during the timed steps (recompilation):"
                                      f" selfsup {recompiled['selfsup']}, peer {recompiled['peer']}; those steps "
                                      f"include compile time")

    console.print(f"[bold]selfsup vs {peer_name} (peer): ViT {DIM}×{DEPTH}, {HEADS} heads, patch {PATCH}, "
                  f"{SIZE}×{SIZE}, batch {batch} × 2 views, {args.rounds} rounds × {args.steps} steps, the same "
                  "pre-made views")
    table = Table(box=box.MARKDOWN)  # pastes into BENCHMARKS.md as it is
    for col in ("objective", "precision", "mode", "selfsup img/s", "peer img/s", "speed ×", "selfsup MiB",
                "peer MiB", "memory ×"):
        table.add_column(col, justify="left" if col in ("objective", "precision", "mode") else "right")
    for r in results:
        table.add_row(r["objective"], r["precision"], "compiled" if r["compiled"] else "eager",
                      f"{r['images_per_s']['selfsup']:,.1f}", f"{r['images_per_s']['peer']:,.1f}",
                      f"{r['speed_ratio']:.2f}", f"{r['memory']['selfsup']['peak_mib']:.0f}",
                      f"{r['memory']['peer']['peak_mib']:.0f}", f"{r['memory_ratio']:.2f}")
    console.print(table)
    console.print(f"speed ×, memory ×: selfsup / {peer_name} (speed: higher is better, target ≥ 1.2; memory: lower "
                  "is better). img/s: source images per second, two views each. MiB: RSS peak over steady-state "
                  "steps minus RSS before the first step.")

    consumption = {o: max(max(r["images_per_s"].values()) for r in results if r["objective"] == o)
                   for o in objectives}
    augmentation = {}
    console.print(f"[bold]augmentation (the recipe's MultiView on uint8 {batch}×{CHANNELS}×{SIZE}×{SIZE}, median of "
                  f"{args.rounds} rounds × {args.aug_batches} batches) beside training consumption")
    atable = Table(box=box.MARKDOWN)
    for col in ("augmentation", "views", "aug img/s", "fastest training img/s", "aug / training", "share of a step"):
        atable.add_column(col, justify="left" if col in ("augmentation", "views") else "right")
    for name, rate in aug_rate.items():
        o = name.split("+")[0]
        used = consumption.get(o)
        row = dict(images_per_s=rate, views=augs[name][1], describe=augs[name][0].describe())
        if used is not None:
            row.update(training_images_per_s=used, ratio=rate / used, step_share=used / (used + rate))
        augmentation[name] = row
        atable.add_row(name, augs[name][1], f"{rate:,.0f}", f"{used:,.1f}" if used else "-",
                       f"{rate / used:,.1f}" if used else "-", f"{used / (used + rate):.1%}" if used else "-")
    console.print(atable)
    console.print("aug / training: augmentation images/s over the fastest training images/s measured for that "
                  "objective (far above 1: never the bottleneck). dino+local is compared with DINO trained on two "
                  "views, a lower bound of its headroom. share of a step: selfsup makes the views inside the "
                  "objective's forward, in the training process, so on CPU this share of a real step would be "
                  "augmentation.")
    path = write_json("vision_ssl.json", dict(
        machine=machine, peer=peer, peer_description=peer_desc, lightly_importable=has_lightly,
        peer_optim=args.peer_optim,
        settings=dict(batch=batch, image=SIZE, channels=CHANNELS, patch=PATCH, dim=DIM, depth=DEPTH, heads=HEADS,
                      mlp=MLP, mean=MEAN, std=STD, steps=args.steps, rounds=args.rounds, warmup_steps=WARMUP,
                      memory_steps=MEMORY_STEPS, pool=POOL, aug_pool=AUG_POOL, aug_batches=args.aug_batches,
                      optim=settings, dino_start_step=dino_cfg.dino.freeze_last_layer_steps,
                      source_images="seeded uniform uint8 noise"),
        params=counts, optimizers=optimizers, results=results,
        augmentation=dict(rates=aug_rate, rounds=aug_rounds, pipelines=augmentation)))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
