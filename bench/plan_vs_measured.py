"""The planner (selfsup plan) against measurement on this CPU: for small configurations, the predicted memory of a
training step (weights + gradients + optimizer state + activations, plan/) against the peak private memory of two
real training steps in a child process, and the predicted FLOPs of a step against FlopCounterMode's count of the
real step (what the trainer's MFU reads).

Memory is measured as bench/ does (bench/common.py): each configuration in its own child process, one torch thread;
a one-row step first makes the library code a step runs resident, then the high-water mark of the resident set
(VmHWM) is reset, and the figure is that peak over two full steps (forward, backward, optimizer step; the second
has the optimizer's state) less the resident set at the reset. Allocator slack and autograd's transient gradient buffers
are in the measurement and not in the plan: hence a tolerance (TOLERANCE below), stated in BENCHMARKS.md.

    python bench/plan_vs_measured.py            # the table, and bench/out/plan_vs_measured.json
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_bytes, reset_peak_rss, rss_bytes, run_child, write_json  # noqa: E402

MIB = 1024 * 1024
TOLERANCE = 0.25  # |predicted − measured| / measured, memory; FLOPs must agree within 1%
SMALL = ["train.max_steps=2", "train.grad_accum=1", "data.workers=0"]
# (recipe, overrides): text, a ViT with a decoder, multi-crop self-distillation; bf16 and activation checkpointing
CONFIGS = [
    ("gpt-clm", ["train.batch_size=16"]),
    ("gpt-clm", ["train.batch_size=16", "train.activation_checkpointing=true"]),
    ("gpt-clm", ["train.batch_size=16", "train.precision=bf16"]),
    ("mae", ["train.batch_size=64", "image.size=64", "model.patch=8"]),
    ("dino", ["train.batch_size=32"]),
    ("simclr", ["train.batch_size=64"]),
]


def load(recipe: str, overrides: list[str]):
    from selfsup import config
    cfg = config.load(recipe, [*SMALL, *overrides])
    if cfg.is_image:
        cfg = cfg.with_measured([0.5] * cfg.image.channels, [0.25] * cfg.image.channels)
    return cfg


def predicted(recipe: str, overrides: list[str]) -> dict:
    from selfsup.plan.activations import micro_batch
    from selfsup.plan.state import objective_on_meta, state_memory
    cfg = load(recipe, overrides)
    state = state_memory(cfg, objective_on_meta(cfg), processes=1, per_node=1)
    mb = micro_batch(cfg, objective_on_meta(cfg), cfg.train.batch_size, cfg.train.activation_checkpointing)
    return dict(state=state.total, activations=mb.working, total=state.total + mb.working, flops=mb.flops)


def measure(recipe: str, overrides: list[str]) -> dict:
    """In a child process: the peak private memory of two real steps, and the FLOPs of one, counted."""
    import torch
    torch.set_num_threads(1)
    from selfsup.data.read.tokenizer import train_bpe
    from selfsup.objectives.build import build_objective
    from selfsup.seed import seed_everything
    from selfsup.train import optim
    from torch.utils.flop_counter import FlopCounterMode

    from selfsup.plan.activations import ATTENTION_FLOPS
    from selfsup.train.parallel import checkpoint_activations
    from selfsup.train.step import autocast

    cfg = load(recipe, overrides)
    tok = None if cfg.is_image else train_bpe(["the quick brown fox jumps over the lazy dog"] * 20,
                                              cfg.model.vocab_size)

    def build(B: int):
        seed_everything(0)
        objective = build_objective(cfg, tok)
        if cfg.is_image:
            S = cfg.image.size
            batch = {"images": torch.randint(0, 256, (B, cfg.image.channels, S, S), dtype=torch.uint8),
                     "index": torch.arange(B)}
        else:
            T = cfg.model.context + objective.window_overlap
            batch = {"tokens": torch.randint(0, cfg.model.vocab_size, (B, T))}
        if cfg.train.activation_checkpointing:
            checkpoint_activations(objective)
        return objective, batch, optim.build(objective, cfg.optim, torch.device("cpu"))

    def step(objective, batch, opt):
        with autocast(torch.device("cpu"), cfg.train.precision):
            out = objective(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # a step of one row first: the library code and thread pools a step touches are resident before the measurement
    step(*build(1))
    gc.collect()
    reset_peak_rss()
    start = rss_bytes()
    objective, batch, opt = build(cfg.train.batch_size)
    step(objective, batch, opt)
    step(objective, batch, opt)
    peak = peak_rss_bytes() - start
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter:  # attention's too, as on a GPU
        step(objective, batch, opt)
    flops = counter.get_total_flops()
    return dict(measured=peak, flops=flops)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], json.loads(sys.argv[3]))))
        return
    rows = []
    for recipe, overrides in CONFIGS:
        got = run_child(__file__, ["--child", recipe, json.dumps(overrides)])
        plan = predicted(recipe, overrides)
        row = dict(recipe=recipe, overrides=overrides, **plan, measured=got["measured"], counted_flops=got["flops"])
        row["memory_error"] = plan["total"] / got["measured"] - 1
        row["flops_error"] = plan["flops"] / got["flops"] - 1
        rows.append(row)
        print(f"{recipe:8s} {' '.join(overrides):60s} planned {plan['total'] / MIB:7.1f} MiB "
              f"(state {plan['state'] / MIB:.1f}, activations {plan['activations'] / MIB:.1f}) measured "
              f"{got['measured'] / MIB:7.1f} MiB ({row['memory_error']:+.1%}); FLOPs {plan['flops']:.3e} planned, "
              f"{got['flops']:.3e} counted ({row['flops_error']:+.2%})", flush=True)
    write_json("plan_vs_measured.json", dict(rows=rows, tolerance=TOLERANCE))


if __name__ == "__main__":
    main()
