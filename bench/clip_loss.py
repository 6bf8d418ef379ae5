"""selfsup's media-text alignment losses (CLIP, SigLIP) against open_clip's ClipLoss and SigLipLoss on CPU: agreement
of losses and gradients, loss forward+backward time and peak memory by batch size, and a whole CLIP / SigLIP
training step of a small tower pair with each loss.

open_clip's package __init__ imports torchvision, which this project's CPU torch cannot run, so only
`open_clip/loss.py` (it imports torch alone) is loaded, by path: `pip install --no-deps open-clip-torch==3.3.0`.

Each side as its training code calls it, as a mean over the batch (ours return a sum and a count; the sum is
divided by B here, as our trainer divides the gradients): clip, ours `clip_loss(m, t, log_scale)` vs
`ClipLoss()(m, t, log_scale.exp())`; siglip, ours `siglip_loss(m, t, log_scale, bias)` whole and with `chunk=256`
(texts scored 256 at a time, gradients made in the forward, no B × B tensor kept) vs `SigLipLoss()(m, t,
log_scale.exp(), bias)` (its sum over pairs / B, as ours). Inputs: seeded unit (B, 256) fp32 leaves; the
log-scale and bias are leaves, so gradients are compared w.r.t. what both models train.

The training step: the recipe's towers from `build_objective` (ViT 128 × 4 on 16 × 16 grey images, text encoder
128 × 2, context 32, joint embedding 256), batch 128 of pre-made views and random ids; embed both, loss, backward,
clip, selfsup's AdamW (fused), the scale clamp, zero_grad. Only the loss call differs between the sides.

Timed rounds alternate between the sides (the order rotating); medians. Peak memory: RSS high-water above the RSS
before the first call, reset after warm-up, in a fresh child process per setting.

    .venv/bin/python bench/clip_loss.py            # the full benchmark (~4 min on 2 cores)
    .venv/bin/python bench/clip_loss.py --quick    # a smoke test (~40 s)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import MIB, machine_info, peak_rss_bytes, reset_peak_rss, rss_bytes, run_child, write_json

EMBED, CHUNK, THREADS = 256, 256, 2
IMPLS = {"clip": ("ours", "open_clip"), "siglip": ("ours", "ours chunked", "open_clip")}
STEP = dict(batch=128, context=32, vocab=4096, pool=4)
TOWERS = ["image.size=16", "image.channels=1", "image.mean=[0.5]", "image.std=[0.25]", "model.dim=128",
          "model.depth=4", "model.heads=4", "text.dim=128", "text.depth=2", "text.heads=4", "train.batch_size=128"]


def open_clip_losses():
    """open_clip/loss.py alone, loaded by path: the package's __init__ (torchvision) never runs."""
    package = importlib.util.find_spec("open_clip")  # finds the package without importing it
    if package is None:
        raise SystemExit("open_clip is not installed: .venv/bin/pip install --no-deps open-clip-torch==3.3.0")
    spec = importlib.util.spec_from_file_location("open_clip_loss", Path(package.origin).parent / "loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "open_clip" not in sys.modules and "torchvision" not in sys.modules
    return module


def loss_fn(kind: str, impl: str, oc, chunk: int = CHUNK):
    """(media, text, log_scale, bias) -> the mean loss over the batch, as each library computes it."""
    from selfsup.objectives.pair_losses import clip_loss, siglip_loss

    if impl == "open_clip":
        clip, sig = oc.ClipLoss(), oc.SigLipLoss()
        return ((lambda m, t, s, b: clip(m, t, s.exp())) if kind == "clip" else
                (lambda m, t, s, b: sig(m, t, s.exp(), b)))
    if kind == "clip":
        return lambda m, t, s, b: clip_loss(m, t, s)[0] / m.shape[0]
    c = chunk if impl == "ours chunked" else 0
    return lambda m, t, s, b: siglip_loss(m, t, s, b, chunk=c)[0] / m.shape[0]


def features(B: int, seed: int = 0, log_scale: float = 2.3026, bias: float = -10.0):
    """Seeded unit (B, E) media and text rows, text correlated with its pair; all leaves that want gradients."""
    g = torch.Generator().manual_seed(seed)
    media = F.normalize(torch.randn(B, EMBED, generator=g), dim=-1)
    text = F.normalize(media + torch.randn(B, EMBED, generator=g), dim=-1)
    return [x.requires_grad_() for x in (media, text, torch.tensor(log_scale), torch.tensor(bias))]


def fwd_bwd(fn, leaves) -> torch.Tensor:
    for x in leaves:
        x.grad = None
    loss = fn(*leaves)
    loss.backward()
    return loss.detach()


def check(oc) -> dict:
    """Loss and gradients (media, text, log-scale, bias) of ours vs open_clip's within 1e-5 (absolute, or relative
    to the value where that is above 1), at two scales; fails loudly otherwise."""
    worst = {}
    cases = [("clip", "ours", 0, 256), ("siglip", "ours", 0, 256), ("siglip", "ours chunked", 64, 256),
             ("siglip", "ours chunked", 64, 200)]  # 200: a ragged last block
    for (kind, impl, chunk, B), (log_scale, bias) in itertools.product(cases, [(2.3026, -10.0), (4.6052, -5.0)]):
        leaves = features(B, seed=1, log_scale=log_scale, bias=bias)  # at init (SigLIP's), and scale 100
        wanted = leaves if kind == "siglip" else leaves[:3]  # CLIP has no bias
        ours = [fwd_bwd(loss_fn(kind, impl, oc, chunk), leaves)] + [x.grad.clone() for x in wanted]
        ref = [fwd_bwd(loss_fn(kind, "open_clip", oc), leaves)] + [x.grad.clone() for x in wanted]
        names = ("loss", "d media", "d text", "d log_scale", "d bias")
        label = f"{kind} {impl}{f' chunk={chunk}' if chunk else ''} B={B} ln s={log_scale:.2f}"
        for name, a, b in zip(names, ours, ref):
            err = ((a - b).abs() / b.abs().clamp(min=1)).max().item()
            worst[f"{label}: {name}"] = err
            if not err <= 1e-5:
                raise SystemExit(f"MISMATCH {label}, {name}: ours {a.flatten()[:4].tolist()} vs open_clip "
                                 f"{b.flatten()[:4].tolist()}, error {err:.2e} > 1e-5")
    return worst


def cpu_snapshot() -> tuple[float, float, float]:
    """(CPU s busy machine-wide (all but idle and iowait), CPU s of this process and its finished children, wall)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy, own = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), sum(os.times()[:4])
    return busy, own, time.perf_counter()


def others_share(start: tuple) -> float:
    """Share of the cores other processes kept busy since `start`: the contention a setting ran under."""
    end = cpu_snapshot()
    return max(0.0, (end[0] - start[0] - end[1] + start[1]) / ((end[2] - start[2]) * (os.cpu_count() or 1)))


def timed_rounds(fns: dict, run, rounds: int, target_s: float) -> dict[str, list[float]]:
    """ms per call of each fn, per round; calls per round sized to ~target_s from warm-up, the order rotating."""
    names, n = list(fns), {}
    for name in names:
        run(fns[name])  # warm-up: allocator pools, lazy kernels
        n[name] = max(1, round(target_s / min(clock(run, fns[name], 1) for _ in range(2))))
    ms = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            ms[name].append(clock(run, fns[name], n[name]) * 1000 / n[name])
    return ms


def clock(run, fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        run(fn)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------- training step

def build_step(kind: str, impl: str, oc):
    """A fresh tower pair (same seed on both sides) and its training step on (views, ids, mask)."""
    from selfsup import config
    from selfsup.objectives.build import build_objective
    from selfsup.train import optim

    cfg = config.load(kind, TOWERS)
    torch.manual_seed(0)
    obj = build_objective(cfg).train()
    opt = optim.build(obj, cfg.optim, torch.device("cpu"))
    params = [p for p in obj.parameters() if p.requires_grad]
    fn = loss_fn(kind, impl, oc, cfg.align.chunk)
    bias = getattr(obj, "logit_bias", None)

    def step(batch) -> None:
        views, ids, mask = batch
        media = obj.project_media(obj.model(views))  # (B, E), the tower of embed_media behind pre-made views
        text = obj.embed_text(ids, mask)  # (B, E)
        fn(media, text, obj.logit_scale, bias).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad or float("inf"))
        opt.step()
        obj.after_step(0)  # the scale clamp, as the trainer (and open_clip's train loop) does
        opt.zero_grad(set_to_none=True)

    return step, obj, sum(p.numel() for p in params)


def step_batches(obj) -> list:
    """STEP['pool'] seeded batches: views made once by the objective's own view, ids with ragged lengths."""
    g = torch.Generator().manual_seed(0)
    B, L = STEP["batch"], STEP["context"]
    out = []
    for _ in range(STEP["pool"]):
        images = torch.randint(0, 256, (B, 1, 16, 16), dtype=torch.uint8, generator=g)
        with torch.no_grad():
            views = obj.view(images)[0]
        ids = torch.randint(1, STEP["vocab"], (B, L), generator=g)
        mask = torch.arange(L) < torch.randint(4, L + 1, (B, 1), generator=g)  # (B, L) True on tokens
        out.append((views, ids, mask))
    return out


# ------------------------------------------------------------------------------------------------- children

def child(spec: str) -> dict:
    """One setting in a fresh process: RSS before the first call, peak RSS over 3 calls after 2 of warm-up. A loss
    first runs once at B=64, so the code pages and thread pools it touches are in the baseline, not the peak."""
    what, kind, impl, B = spec.split(",")
    oc = open_clip_losses()
    if what == "loss":
        fn, leaves = loss_fn(kind, impl, oc), features(int(B))
        fwd_bwd(fn, features(64))
        call = lambda i: fwd_bwd(fn, leaves)  # noqa: E731
    else:
        step, obj, _ = build_step(kind, impl, oc)
        pool = step_batches(obj)
        call = lambda i: step(pool[i % len(pool)])  # noqa: E731
    base = rss_bytes()
    for i in range(2):
        call(i)
    was_reset = reset_peak_rss()
    for i in range(3):
        call(i)
    return dict(peak_mib=(peak_rss_bytes() - base) / MIB, base_mib=base / MIB, peak_was_reset=was_reset)


def memory(what: str, kind: str, impl: str, B: int) -> dict:
    return run_child(__file__, ["--child", f"{what},{kind},{impl},{B}"])


# ---------------------------------------------------------------------------------------------------- main

def bench_losses(oc, batches, rounds: int, target: float) -> list[dict]:
    rows = []
    for kind, impls in IMPLS.items():
        for B in batches:
            leaves, start = features(B), cpu_snapshot()
            fns = {i: loss_fn(kind, i, oc) for i in impls}
            ms = timed_rounds(fns, lambda fn: fwd_bwd(fn, leaves), rounds, target)
            busy = others_share(start)
            mem = {i: memory("loss", kind, i, B) for i in impls}
            rows += [dict(loss=kind, batch=B, impl=i, ms=statistics.median(ms[i]), rounds_ms=ms[i], memory=mem[i],
                          time_ratio=statistics.median(ms[i]) / statistics.median(ms["open_clip"]),
                          memory_ratio=mem[i]["peak_mib"] / mem["open_clip"]["peak_mib"], others_busy=busy)
                     for i in impls]
            print(f"{kind} B={B}: " + ", ".join(f"{r['impl']} {r['ms']:.2f} ms {r['memory']['peak_mib']:.0f} MiB"
                                                for r in rows[-len(impls):]) + f"; others busy {busy:.0%}", flush=True)
    return rows


def bench_steps(oc, rounds: int, target: float) -> list[dict]:
    rows = []
    for kind in IMPLS:
        built = {i: build_step(kind, i, oc) for i in ("ours", "open_clip")}
        pool, counter, start = step_batches(built["ours"][1]), [0], cpu_snapshot()

        def run(step):
            step(pool[counter[0] % len(pool)])
            counter[0] += 1

        ms = timed_rounds({i: b[0] for i, b in built.items()}, run, rounds, target)
        busy = others_share(start)
        rate = {i: STEP["batch"] * 1000 / statistics.median(ms[i]) for i in built}
        mem = {i: memory("step", kind, i, STEP["batch"]) for i in built}
        rows += [dict(objective=kind, impl=i, pairs_per_s=rate[i], rounds_ms=ms[i], memory=mem[i],
                      params=built[i][2], speed_ratio=rate[i] / rate["open_clip"], others_busy=busy,
                      memory_ratio=mem[i]["peak_mib"] / mem["open_clip"]["peak_mib"]) for i in built]
        print(f"{kind} step: " + ", ".join(f"{i} {r:.0f} pairs/s" for i, r in rate.items())
              + f"; others busy {busy:.0%}", flush=True)
        del built
    return rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A table that pastes into BENCHMARKS.md: the first column left, the rest right."""
    rule = "|" + "|".join(":--" if i < 2 else "--:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: B 256 and 1024, 2 short rounds")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds per setting (default 7)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one memory measurement in a fresh process
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    if args.child:
        print(json.dumps(child(args.child)))
        return
    rounds, target = (2, 0.1) if args.quick else (args.rounds, 0.6)
    batches = (256, 1024) if args.quick else (256, 1024, 4096)
    machine = dict(machine_info(), open_clip=importlib.metadata.version("open-clip-torch"))
    print(f"torch {machine['torch']}, {machine['threads']} threads on {machine['cores']} cores, {machine['cpu']}; "
          f"open_clip {machine['open_clip']} (loss.py only)")
    oc = open_clip_losses()
    worst = check(oc)
    print(f"agreement: {len(worst)} losses and gradients within 1e-5 of open_clip's (worst "
          f"{max(worst.values()):.1e}: {max(worst, key=worst.get)})")
    losses = bench_losses(oc, batches, rounds, target)
    steps = bench_steps(oc, rounds, 2 * target)
    machine["others_busy_max"] = max(r["others_busy"] for r in losses + steps)

    print(f"\nloss forward + backward, E={EMBED}, fp32, median of {rounds} interleaved rounds\n")
    print(markdown(["loss", "implementation", "B", "ms", "time ×", "peak MiB", "memory ×"], [
        [r["loss"], r["impl"], f"{r['batch']:,}", f"{r['ms']:.2f}", f"{r['time_ratio']:.2f}",
         f"{r['memory']['peak_mib']:.0f}", f"{r['memory_ratio']:.2f}"] for r in losses]))
    print(f"\n×: this row / open_clip's at the same loss and B. One B × B fp32 matrix: "
          + ", ".join(f"{B ** 2 * 4 / MIB:g} MiB at B={B}" for B in batches))
    print(f"\ntraining step, batch {STEP['batch']}, {steps[0]['params']:,} parameters\n")
    print(markdown(["objective", "loss", "pairs/s", "speed ×", "peak MiB", "memory ×"], [
        [r["objective"], r["impl"], f"{r['pairs_per_s']:,.0f}", f"{r['speed_ratio']:.2f}",
         f"{r['memory']['peak_mib']:.0f}", f"{r['memory_ratio']:.2f}"] for r in steps]))
    print(f"\nother processes kept at most {machine['others_busy_max']:.0%} of the cores busy during a timed setting")
    path = write_json("clip_loss.json", dict(machine=machine, quick=args.quick, agreement=worst, losses=losses,
                                             steps=steps, settings=dict(embed=EMBED, chunk=CHUNK, rounds=rounds,
                                                                        round_target_s=target, towers=TOWERS, **STEP)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
