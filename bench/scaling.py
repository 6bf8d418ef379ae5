"""GPT-clm training throughput and peak memory per process with 1 and 2 processes (DDP, FSDP) on CPU, through
`selfsup train` itself; on a machine with CUDA also the 125M GPT on the visible GPUs (bf16, compile on/off, FSDP).

CPU section. Every setting is one `selfsup train gpt-clm` run in its own process tree (`dist.nproc_per_node=2`
starts 2 gloo workers through torch's elastic launcher): GPT of width 256, 4 layers, 4 heads, context 128,
vocabulary 4096 (4.26M parameters), fp32, eager, on the built-in stdlib-docstring corpus (tokenized once and
cached before timing). Each process gets OMP_NUM_THREADS = cores / processes, so every 2-process setting uses
the same cores as the 1-process × 2-thread reference; 1 process × 1 thread is run too, to show what one core
does alone. Scaling:

- weak: per-process batch 16, so 2 processes train a global batch of 32;
- strong: global batch 16, so 2 processes train 8 each (the 1-process rows, batch 16, are the reference).

tok/s: global tokens per second, the median of the throughputs the trainer logs (metrics.jsonl, every
`--log-every` steps) after the first `--warmup` steps, then the median over `--repeats` runs of each setting;
the runs of the settings are interleaved (the order rotating each round). MFU: tok/s × the trainer's FLOPs
per token over the fp32 matmul peak measured here (a 2048² matmul, best of ~1.5 s) at the threads per process,
times the processes: the peak of the cores in use (pinned as `train.peak_tflops`, so summary.json agrees).

Peak memory per process: VmHWM (the RSS high-water mark) of each worker (the launcher's children found through
/proc/<pid>/task/*/children; with 1 process, the `selfsup train` process itself), sampled every 0.1 s. The
high-water mark is reset (clear_refs) when the trainer logs the end of warm-up, and read when it logs step
`steps - log_every`: the steady peak covers training steps only (no start-up, final evaluation or
checkpoint). The whole-run peak (start-up to exit, as sampled) is kept beside it. The launcher process itself
(~380 MiB, no model) is not counted.

The machine should be quiet: before timing, other processes' CPU use is measured (as bench/clip_loss.py does);
above --quiet-threshold the script waits (up to --wait-quiet s) and notes what it found. Each run's share of
the cores used by others is recorded too.

GPU section (only where torch.cuda.is_available()): GPT 125M (width 768, 12 layers, 12 heads, context 1024,
vocabulary 50304), bf16, per-GPU batch --gpu-batch, compile off and on, 1 GPU and (with more than one visible)
FSDP on all visible GPUs; tokens/s and the trainer's MFU (against its measured bf16 matmul peak unless
--gpu-peak-tflops pins a data-sheet one).

    .venv/bin/python bench/scaling.py            # the CPU benchmark (~14 min on 2 cores); GPU section if CUDA
    .venv/bin/python bench/scaling.py --quick    # a smoke test (~1 min): tiny model, 1 round
    .venv/bin/python bench/scaling.py --plan     # print and validate every command (CPU and GPU), run nothing
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from clip_loss import cpu_snapshot, others_share
from common import MIB, machine_info, write_json

SELFSUP = Path(sys.executable).parent / "selfsup"  # the venv's console script
CPU_MODEL = dict(dim=256, depth=4, heads=4, context=128, vocab_size=4096)
QUICK_MODEL = dict(dim=128, depth=2, heads=4, context=64, vocab_size=4096)  # same vocabulary: same token cache
GPU_MODEL = dict(dim=768, depth=12, heads=12, context=1024, vocab_size=50304)


@dataclass
class Setting:
    name: str
    procs: int
    threads: int  # OMP_NUM_THREADS of each process (CPU); 0: left alone (GPU)
    batch: int  # per process
    strategy: str = "-"  # ddp / fsdp with 2+ processes
    scaling: str = "reference"  # reference (1 process), weak, strong
    compiled: bool = False
    precision: str = "fp32"
    model: dict = field(default_factory=lambda: dict(CPU_MODEL))

    @property
    def global_batch(self) -> int:
        return self.batch * self.procs


def cpu_settings(batch: int, cores: int, model: dict) -> list[Setting]:
    half = max(1, cores // 2)
    out = [Setting(f"1×{cores}", 1, cores, batch, model=model), Setting("1×1", 1, 1, batch, model=model)]
    for scaling, b in (("weak", batch), ("strong", batch // 2)):
        for strategy in ("ddp", "fsdp"):
            out.append(Setting(f"{strategy} 2×{half} {scaling}", 2, half, b, strategy, scaling, model=model))
    return out


def gpu_settings(batch: int, gpus: int) -> list[Setting]:
    out = []
    for compiled in (False, True):
        out.append(Setting(f"1 GPU {'compiled' if compiled else 'eager'}", 1, 0, batch, compiled=compiled,
                           precision="bf16", model=dict(GPU_MODEL)))
        if gpus > 1:
            out.append(Setting(f"fsdp {gpus} GPUs {'compiled' if compiled else 'eager'}", gpus, 0, batch, "fsdp",
                               "weak", compiled, "bf16", dict(GPU_MODEL)))
    return out


def overrides(s: Setting, out_dir: str, steps: int, log_every: int, peak_tflops: float | None, port: int) -> list[str]:
    o = [f"out_dir={out_dir}"] + [f"model.{k}={v}" for k, v in s.model.items()] + [
        f"train.batch_size={s.batch}", f"train.max_steps={steps}", f"train.log_every={log_every}",
        f"train.precision={s.precision}", f"train.compile={str(s.compiled).lower()}",
        f"train.eval_every={steps}", "train.eval_batches=1", f"train.checkpoint_every={steps}"]
    if peak_tflops:
        o.append(f"train.peak_tflops={peak_tflops:.6g}")
    if s.procs > 1:
        o += [f"dist.nproc_per_node={s.procs}", f"dist.strategy={s.strategy}", f"dist.rdzv_endpoint=127.0.0.1:{port}"]
    return o


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def matmul_peak(threads: int, seconds: float = 1.5, n: int = 2048) -> float:
    """FLOP/s of the best n × n fp32 matmul in `seconds` at `threads` threads (the trainer's method, longer)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    torch.set_num_threads(before)
    return best


def wait_quiet(threshold: float, max_wait: float, probe_s: float = 3.0) -> dict:
    """Other processes' share of the cores over probe_s, re-measured every 10 s while above threshold."""
    t0, readings = time.perf_counter(), []
    while True:
        start = cpu_snapshot()
        time.sleep(probe_s)
        readings.append(others_share(start))
        if readings[-1] <= threshold or time.perf_counter() - t0 > max_wait:
            break
        print(f"machine busy: others use {readings[-1]:.0%} of the cores; waiting", flush=True)
        time.sleep(10)
    return dict(others_busy=readings[-1], waited_s=round(time.perf_counter() - t0 - probe_s, 1), readings=readings)


# ------------------------------------------------------------------------------------------------ memory

def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(x) for x in task.read_text().split()]
        except OSError:
            pass
    return kids


def _last_step(path: Path) -> int:
    try:
        lines = path.read_text().strip().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


class MemorySampler(threading.Thread):
    """VmHWM of the worker processes of one run: reset at reset_at (a logged step), frozen at stop_at."""

    def __init__(self, proc: subprocess.Popen, procs: int, metrics: Path, reset_at: int, stop_at: int,
                 every: float = 0.1):
        super().__init__(daemon=True)
        self.proc, self.procs, self.metrics, self.every = proc, procs, metrics, every
        self.reset_at, self.stop_at = reset_at, stop_at
        self.whole: dict[int, int] = {}  # pid -> highest VmHWM seen (start-up to exit)
        self.at_reset: dict[int, int] = {}  # pid -> RSS when the mark was reset
        self.steady: dict[int, int] = {}  # pid -> VmHWM at stop_at, counted from the reset
        self.reset_ok = None

    def workers(self) -> list[int]:
        return [self.proc.pid] if self.procs == 1 else _children(self.proc.pid)

    def run(self) -> None:
        while self.proc.poll() is None:
            pids = self.workers()
            status = {pid: _status(pid) for pid in pids}
            for pid, s in status.items():
                if "VmHWM" in s:
                    self.whole[pid] = max(self.whole.get(pid, 0), s["VmHWM"])
            step = _last_step(self.metrics) if not self.steady else 0
            if self.reset_ok is None and step >= self.reset_at and len(pids) == self.procs:
                self.reset_ok = True
                for pid in pids:
                    try:
                        Path(f"/proc/{pid}/clear_refs").write_text("5")
                        self.at_reset[pid] = _status(pid).get("VmRSS", 0)
                    except OSError:
                        self.reset_ok = False
            elif self.reset_ok is not None and not self.steady and step >= self.stop_at:
                self.steady = {pid: _status(pid).get("VmHWM", 0) for pid in pids}
            time.sleep(self.every)

    def result(self) -> dict:
        steady = sorted(self.steady.values()) if self.reset_ok else []
        return dict(steady_peak_mib=[v / MIB for v in steady], whole_run_peak_mib=sorted(v / MIB for v in
                                                                                          self.whole.values()),
                    rss_at_reset_mib=sorted(v / MIB for v in self.at_reset.values()), reset_ok=self.reset_ok)


# ------------------------------------------------------------------------------------------------- runs

def run_setting(s: Setting, steps: int, warmup: int, log_every: int, peak_tflops: float | None,
                timeout: float = 1200) -> dict:
    """One `selfsup train` run of the setting: throughput after warm-up (from metrics.jsonl), memory, summary."""
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        run_dir = Path(tmp) / "run"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if s.threads:
            env["OMP_NUM_THREADS"] = str(s.threads)
        cmd = [str(SELFSUP), "train", "gpt-clm", *overrides(s, str(run_dir), steps, log_every, peak_tflops,
                                                             free_port())]
        start = cpu_snapshot()
        with open(Path(tmp) / "log.txt", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            sampler = MemorySampler(proc, s.procs, run_dir / "metrics.jsonl", warmup, steps - log_every)
            sampler.start()
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            sampler.join()
        busy = others_share(start)
        if rc != 0:
            raise RuntimeError(f"{s.name} failed (exit {rc}): {' '.join(cmd)}\n"
                               f"{(Path(tmp) / 'log.txt').read_text()[-3000:]}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
    after = [r for r in records if r["step"] > warmup]
    at = {r["step"]: r["time"] for r in records}
    tokens_per_step = s.global_batch * s.model["context"]
    return dict(tokens_per_s=statistics.median(r["tokens_per_s"] for r in after),
                windows_tokens_per_s=[r["tokens_per_s"] for r in after],
                mean_tokens_per_s=(steps - warmup) * tokens_per_step / (at[steps] - at[warmup]),
                mfu=statistics.median(r["mfu"] for r in after) if after[0].get("mfu") is not None else None,
                memory=sampler.result(), others_busy=busy, wall_s=summary["wall_time_s"],
                flops_per_token=summary["flops_per_token"], peak_tflops=summary["peak_tflops"],
                summary_batch=summary["batch"], params=summary["params"], command=cmd)


def interleaved(settings: list[Setting], repeats: int, **kw) -> dict[str, list[dict]]:
    """Rounds of one run per setting, the order rotating every round (A B C, B C A, ...)."""
    runs = {s.name: [] for s in settings}
    for r in range(repeats):
        for s in settings[r % len(settings):] + settings[:r % len(settings)]:
            res = run_setting(s, peak_tflops=kw["peaks"].get(s.threads), steps=kw["steps"], warmup=kw["warmup"],
                              log_every=kw["log_every"])
            runs[s.name].append(res)
            steady = res["memory"]["steady_peak_mib"]
            print(f"round {r + 1}/{repeats} {s.name:<18} {res['tokens_per_s']:8,.0f} tok/s  peak/process "
                  f"{', '.join(f'{m:.0f}' for m in steady) or '-'} MiB  others busy {res['others_busy']:.0%}",
                  flush=True)
    return runs


def aggregate(s: Setting, runs: list[dict]) -> dict:
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    return dict(setting=asdict(s), global_batch=s.global_batch, tokens_per_s=med([r["tokens_per_s"] for r in runs]),
                mean_tokens_per_s=med([r["mean_tokens_per_s"] for r in runs]),
                mfu=med([r["mfu"] for r in runs if r["mfu"] is not None]),
                steady_peak_mib=med([max(r["memory"]["steady_peak_mib"]) for r in runs
                                     if r["memory"]["steady_peak_mib"]]),
                whole_run_peak_mib=med([max(r["memory"]["whole_run_peak_mib"]) for r in runs
                                        if r["memory"]["whole_run_peak_mib"]]),
                others_busy_max=max(r["others_busy"] for r in runs), runs=runs)


def markdown(header: list[str], rows: list[list[str]], left: int) -> str:
    rule = "|" + "|".join(":--" if i < left else "--:" for i in range(len(header))) + "|"
    return "\n".join(["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows])


def cpu_table(results: list[dict]) -> str:
    ref = {r["setting"]["threads"]: r["tokens_per_s"] for r in results if r["setting"]["procs"] == 1}
    cores = max(ref)
    rows = []
    for r in results:
        s = r["setting"]
        fmt = lambda v, f: f.format(v) if v is not None else "-"  # noqa: E731
        rows.append([s["scaling"], f"{s['procs']} × {s['threads']}", s["strategy"], str(s["batch"]),
                     str(r["global_batch"]), f"{r['tokens_per_s']:,.0f}",
                     f"{r['tokens_per_s'] / ref[cores]:.2f}", f"{r['tokens_per_s'] / ref[1]:.2f}",
                     fmt(r["mfu"] and 100 * r["mfu"], "{:.0f}%"), fmt(r["steady_peak_mib"], "{:,.0f}"),
                     fmt(r["whole_run_peak_mib"], "{:,.0f}")])
    return markdown(["scaling", "processes × threads", "strategy", "batch/process", "global batch", "tok/s",
                     f"× 1×{cores}", "× 1×1", "MFU", "peak MiB/process", "whole-run MiB"], rows, left=3)


def gpu_table(results: list[dict]) -> str:
    rows = [[r["setting"]["name"], str(r["setting"]["procs"]), str(r["global_batch"]), f"{r['tokens_per_s']:,.0f}",
             f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"] for r in results]
    return markdown(["setting", "GPUs", "global batch", "tok/s", "MFU"], rows, left=1)


# ------------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny model, 12 steps, 1 round")
    ap.add_argument("--plan", action="store_true", help="print and validate the commands (CPU and GPU); run none")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved runs of each setting (default 5)")
    ap.add_argument("--steps", type=int, default=40, help="training steps per run (default 40)")
    ap.add_argument("--warmup", type=int, default=10, help="first steps left out of throughput (default 10)")
    ap.add_argument("--log-every", type=int, default=5, help="train.log_every: steps per throughput window")
    ap.add_argument("--batch", type=int, default=16, help="CPU per-process batch of the weak scaling (default 16)")
    ap.add_argument("--quiet-threshold", type=float, default=0.05,
                    help="other processes' share of the cores above which the machine counts as busy")
    ap.add_argument("--wait-quiet", type=float, default=300, help="seconds to wait for a quiet machine at most")
    ap.add_argument("--cpu", choices=("on", "off"), default="on", help="run the CPU section (default on)")
    ap.add_argument("--gpu", choices=("auto", "on", "off"), default="auto",
                    help="the GPU section: auto runs it when torch.cuda.is_available()")
    ap.add_argument("--gpu-batch", type=int, default=16, help="GPU per-GPU batch of 1024-token rows (default 16)")
    ap.add_argument("--gpu-peak-tflops", type=float, help="pin the MFU denominator per GPU (bf16 data-sheet peak)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.steps, args.warmup, args.log_every, args.batch = 1, 12, 4, 2, 4
    if args.warmup % args.log_every or args.steps - args.warmup < 2 * args.log_every:
        ap.error("--warmup must be a multiple of --log-every, with 2 or more windows after it")
    if min(args.repeats, args.batch) < 1 or args.batch < 2:
        ap.error("--repeats takes at least 1, --batch at least 2 (strong scaling halves it)")
    cuda = torch.cuda.is_available()
    if args.gpu == "on" and not cuda:
        ap.error("--gpu on: torch.cuda.is_available() is False here")
    gpu = args.gpu == "on" or (args.gpu == "auto" and cuda)
    gpus = torch.cuda.device_count() if cuda else 2  # --plan without CUDA shows the 2-GPU commands
    machine = machine_info()
    cores = machine["cores"]
    model = QUICK_MODEL if args.quick else CPU_MODEL
    cpu = cpu_settings(args.batch, cores, model) if args.cpu == "on" else []
    gpu_s = gpu_settings(args.gpu_batch, gpus) if gpu or args.plan else []

    if args.plan:
        from selfsup import config
        for s in cpu + gpu_s:
            o = overrides(s, "/tmp/scaling-plan", args.steps, args.log_every,  # CPU: + train.peak_tflops measured
                          args.gpu_peak_tflops if s.threads == 0 else None, 29500)
            cfg = config.load("gpt-clm", o)  # raises on an unknown key or a bad value
            env = f"OMP_NUM_THREADS={s.threads} " if s.threads else ""
            print(f"{s.name}: {env}selfsup train gpt-clm {' '.join(o)}  "
                  f"[{cfg.model.dim}×{cfg.model.depth}, global batch {s.global_batch}]")
        return

    print(f"torch {machine['torch']}, {cores} cores, {machine['cpu']}; cuda: {cuda}", flush=True)
    data = dict(machine=machine, quick=args.quick,
                settings=dict(repeats=args.repeats, steps=args.steps, warmup=args.warmup, log_every=args.log_every))
    if cpu:
        quiet = wait_quiet(args.quiet_threshold, args.wait_quiet)
        print(f"before timing: others kept {quiet['others_busy']:.1%} of the cores busy"
              + (f" (waited {quiet['waited_s']:.0f} s)" if quiet["waited_s"] > 0 else ""), flush=True)
        peaks = {t: matmul_peak(t) / 1e12 for t in sorted({1, cores // 2, cores})}
        print("fp32 matmul peak: " + ", ".join(f"{t} thread(s) {p * 1e3:.0f} GFLOP/s" for t, p in peaks.items()),
              flush=True)
        # the token cache (tokenizer, shards) and the page cache of the imports, outside any timed run
        run_setting(Setting("prepare", 1, cores, 2, model=model), steps=4, warmup=2, log_every=1,
                    peak_tflops=peaks[cores])
        runs = interleaved(cpu, args.repeats, peaks=peaks, steps=args.steps, warmup=args.warmup,
                           log_every=args.log_every)
        results = [aggregate(s, runs[s.name]) for s in cpu]
        machine["others_busy_max"] = max(r["others_busy_max"] for r in results)
        data.update(quiet_before=quiet, matmul_peak_tflops=peaks, cpu=results, cpu_model=model)
        print(f"\nGPT {model['dim']}×{model['depth']}, context {model['context']}, vocab {model['vocab_size']}, fp32, "
              f"eager; median of {args.repeats} interleaved runs; tok/s after {args.warmup} warm-up steps\n")
        print(cpu_table(results))
        print(f"\nothers kept at most {machine['others_busy_max']:.0%} of the cores busy during a run")
    if gpu:
        peak = args.gpu_peak_tflops
        run_setting(Setting("prepare", 1, 0, 2, precision="bf16", model=dict(GPU_MODEL)), steps=4, warmup=2,
                    log_every=1, peak_tflops=peak)  # the 50304-token tokenizer and shards, outside the timing
        runs = interleaved(gpu_s, args.repeats, peaks={0: peak}, steps=args.steps, warmup=args.warmup,
                           log_every=args.log_every)
        results = [aggregate(s, runs[s.name]) for s in gpu_s]
        data.update(gpu=results, gpu_model=GPU_MODEL, gpus=gpus, gpu_name=torch.cuda.get_device_name(0))
        print(f"\nGPT 125M ({GPU_MODEL}), bf16, {args.gpu_batch} rows per GPU, on {gpus} × "
              f"{torch.cuda.get_device_name(0)}\n")
        print(gpu_table(results))
    path = write_json("scaling_quick.json" if args.quick else "scaling.json", data)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
