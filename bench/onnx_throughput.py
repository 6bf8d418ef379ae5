"""Embedding throughput on the CPU: onnxruntime on `selfsup export --format onnx`'s graph vs our eager PyTorch trunk,
for a text encoder and a ViT, at the same batch and the same number of threads.

    python bench/onnx_throughput.py [--threads 2] [--batch 32] [--rounds 7] [--which text vit]

Builds the bert-mlm recipe's encoder (dim 256, depth 4, 128 tokens) and the simclr recipe's ViT (dim 192, depth 6,
32×32×3, patch 4) with random weights (speed does not depend on them), exports each with selfsup's ONNX writer
(fp32, and int8 through onnxruntime's quantize_dynamic), and times four ways of computing the same pooled features
of one batch: eager fp32 (what `selfsup embed` runs: the trunk under no_grad, then the pooling), onnxruntime fp32,
eager int8 (`--format safetensors --quantize int8`: torch's dynamically quantized Linear) and onnxruntime int8.
Rounds interleave the four (rotating which goes first); each figure is the median over rounds of items per second
over --iters batches. Writes bench/out/onnx_throughput.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_json  # noqa: E402

from selfsup import config  # noqa: E402
from selfsup.models.encoder import Encoder  # noqa: E402
from selfsup.models.vit import ViT  # noqa: E402
from selfsup.onnx_export import graphs, write_onnx  # noqa: E402
from selfsup.quantize import load_quantized, quantized_state  # noqa: E402

NORM = ["image.mean=[0.5,0.5,0.5]", "image.std=[0.25,0.25,0.25]"]


class Holder(nn.Module):
    """An objective's shape as the exporters read it: the trunk under `.model`."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.model = trunk


def build(which: str, batch: int) -> tuple[config.RunConfig, Holder, tuple[torch.Tensor, ...]]:
    if which == "text":
        cfg = config.load("bert-mlm", [])
        torch.manual_seed(0)
        holder = Holder(Encoder(cfg.model)).eval()
        T = cfg.model.context
        ids = torch.randint(3, cfg.model.vocab_size, (batch, T))
        return cfg, holder, (ids, torch.ones(batch, T, dtype=torch.long))  # full windows: no padding
    cfg = config.load("simclr", NORM)
    torch.manual_seed(0)
    holder = Holder(ViT(cfg.model, cfg.image.size, cfg.image.channels)).eval()
    return cfg, holder, (torch.randn(batch, cfg.image.channels, cfg.image.size, cfg.image.size),)


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # its threads otherwise spin-wait after each run, taking the cores from the eager rounds interleaved with it
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(which: str, threads: int, batch: int, rounds: int, iters: int) -> dict:
    cfg, holder, inputs = build(which, batch)
    graph = graphs(cfg, holder)[0]
    feeds = {name: x.numpy() for name, x in zip(graph.inputs, inputs)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for mode in ("fp32", "int8"):
            (tmp / mode).mkdir()
            write_onnx(cfg, holder, None if mode == "fp32" else "int8", tmp / mode, tmp)
        sessions = {mode: session(tmp / mode / "model.onnx", threads) for mode in ("fp32", "int8")}
        int8 = Holder(build(which, batch)[1].model)  # the same random weights, quantized as --quantize int8 does
        state = quantized_state(int8, "int8")
        from safetensors.torch import save_file

        save_file(state, tmp / "int8.safetensors")
        load_quantized(int8, tmp / "int8.safetensors", "int8").eval()
        eager = {"fp32": graph.module, "int8": graphs(cfg, int8)[0].module}

        def run_eager(mode):
            with torch.no_grad():
                return eager[mode](*inputs)

        ways = {"eager fp32": lambda: run_eager("fp32"),
                "onnxruntime fp32": lambda: sessions["fp32"].run(None, feeds),
                "eager int8": lambda: run_eager("int8"),
                "onnxruntime int8": lambda: sessions["int8"].run(None, feeds)}
        torch.set_num_threads(threads)
        got = sessions["fp32"].run(None, feeds)[0]
        gap = float(np.abs(got - run_eager("fp32").numpy()).max())
        for f in ways.values():  # warm-up: first-call allocations and oneDNN/ORT kernel choices
            f()
        times: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                for _ in range(iters):
                    ways[name]()
                times[name].append(batch * iters / (time.perf_counter() - start))
    speed = {name: statistics.median(v) for name, v in times.items()}
    return {"which": which, "shape": _shape(cfg, which), "batch": batch, "threads": threads,
            "items_per_s": speed, "max_abs_gap_fp32": gap,
            "ratio_fp32": speed["onnxruntime fp32"] / speed["eager fp32"],
            "ratio_int8": speed["onnxruntime int8"] / speed["eager int8"],
            "ratio_ort_int8_vs_eager_fp32": speed["onnxruntime int8"] / speed["eager fp32"]}


def _shape(cfg: config.RunConfig, which: str) -> str:
    m = cfg.model
    if which == "text":
        return f"encoder dim {m.dim}, depth {m.depth}, {m.context} tokens, vocab {m.vocab_size}"
    im = cfg.image
    return f"ViT dim {m.dim}, depth {m.depth}, patch {m.patch}, {im.size}x{im.size}x{im.channels}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--which", nargs="+", choices=["text", "vit"], default=["text", "vit"])
    args = ap.parse_args()
    results = []
    for which in args.which:
        r = measure(which, args.threads, args.batch, args.rounds, args.iters)
        results.append(r)
        print(f"{which}: {r['shape']}, batch {r['batch']}, {r['threads']} threads (fp32 max |gap| "
              f"{r['max_abs_gap_fp32']:.1e})")
        for name, v in r["items_per_s"].items():
            print(f"  {name:<18} {v:>10.1f} items/s")
        print(f"  onnxruntime / eager: fp32 {r['ratio_fp32']:.2f}x, int8 {r['ratio_int8']:.2f}x; onnxruntime int8 / "
              f"eager fp32 {r['ratio_ort_int8_vs_eager_fp32']:.2f}x", flush=True)
    print(write_json("onnx_throughput.json", {"machine": machine_info(), "args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
