"""Helpers shared by the scripts in bench/: machine description, process memory on CPU, child processes, output.

CPU allocators keep no peak-memory statistics (there is no torch.cuda.max_memory_allocated for CPU), so memory
is measured as process RSS from /proc: the resident size now (VmRSS) and its high-water mark (VmHWM, the
figure getrusage reports as ru_maxrss). The high-water mark can be reset (Linux clear_refs), which lets a
benchmark leave compilation and warm-up out of a peak. Each setting runs in its own child process so that
peaks of different settings never mix.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

OUT_DIR = Path(__file__).resolve().parent / "out"  # git-ignored
MIB = 1024 * 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(torch=torch.__version__, python=platform.python_version(), threads=torch.get_num_threads(),
                cores=cores, cpu=cpu_model(), platform=platform.platform())


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def anonymous_bytes() -> int:
    """Resident private (anonymous) memory: what a copy of data in the process costs. File pages a library maps
    (safetensors) are page cache, shared and evictable, and not counted."""
    kib = _status_kib("RssAnon")
    if kib is None:
        raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")
    return kib * 1024


def selfsup_cli(*args: str) -> str:
    """`python -m selfsup ARGS` in a child process, its output; a failure stops the benchmark with the child's tail."""
    done = subprocess.run([sys.executable, "-m", "selfsup", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"selfsup {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout + done.stderr


def rss_bytes() -> int:
    """Resident set size now (second field of /proc/self/statm, in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """High-water mark of the RSS since start or since the last reset_peak_rss()."""
    kib = _status_kib("VmHWM")
    if kib is None:  # no /proc/self/status: ru_maxrss (KiB on Linux), which cannot be reset
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (writing 5 to clear_refs, Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_child(script: str, args: list[str], timeout: float = 900) -> dict:
    """Run `python script *args` and parse the JSON object its last stdout line holds."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def graphs_compiled() -> int:
    """Graphs torch.compile has built so far in this process (a recompilation builds one more)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def run_steps(step, pool, n: int, units_per_step: int) -> float:
    """Run n steps, step i on pool[i % len(pool)]; units (tokens, images) per second."""
    t0 = time.perf_counter()
    for i in range(n):
        step(pool[i % len(pool)])
    return n * units_per_step / (time.perf_counter() - t0)


def write_json(name: str, data: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / name
    path.write_text(json.dumps(data, indent=1))
    return path


def hf_default_optim() -> str:
    """The optimizer the HF Trainer uses when none is named: the dataclass default of TrainingArguments.optim
    (read from the field, as instantiating TrainingArguments requires accelerate)."""
    from transformers import TrainingArguments
    name = next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == "optim")
    return getattr(name, "value", name)


def hf_trainer_adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas, eps: float):
    """The optimizer HF's Trainer builds by default: its default AdamW (checked, so a change in transformers stops
    the benchmark instead of silently comparing something else), decaying all but biases and LayerNorm weights,
    which for GPT-2 and BERT are exactly the 1-D parameters."""
    name = hf_default_optim()
    if name not in ("adamw_torch", "adamw_torch_fused"):
        raise SystemExit(f"HF's default optimizer is now {name!r}; update bench/common.py to match it")
    groups = [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=name == "adamw_torch_fused")


def clip_and_step(params: list, opt: torch.optim.Optimizer, clip: float) -> None:
    """The end of every training step on both sides: clip the global gradient norm, step, free the gradients."""
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def describe_optimizer(opt: torch.optim.Optimizer) -> str:
    return f"torch.optim.{type(opt).__name__}(fused={opt.defaults['fused']})"


def training_args(doc: str) -> argparse.ArgumentParser:
    """The options every side-by-side training benchmark takes."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per round (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per implementation (default 5)")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated, of fp32 and bf16")
    ap.add_argument("--compile", choices=("both", "off", "on"), default="both", help="eager, compiled or both")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one memory measurement in a fresh process
    return ap


def anisotropy(x: torch.Tensor, pairs: int, seed: int = 0) -> float:
    """Mean cosine of `pairs` seeded random pairs of distinct rows of x (N, D): how narrow a cone features sit in."""
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(len(x), (pairs,), generator=g)
    j = (i + torch.randint(1, len(x), (pairs,), generator=g)) % len(x)  # never i itself
    return torch.nn.functional.cosine_similarity(x[i], x[j], dim=1).mean().item()
