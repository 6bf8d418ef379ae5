"""selfsup's causal LM against Hugging Face GPT-2 on CPU: training tokens/s, peak memory, data-loader headroom.

Both sides train a GPT of the same size (width 256, 4 layers, 4 heads, vocab 8192, context 128, batch 32) on the
same random token batches with the same AdamW hyper-parameters and gradient clipping. Timed rounds alternate
between the two so that whatever else the machine does (other jobs, turbo, heat) hits both alike; we report
medians and the ratio selfsup / HF. Peak memory comes from one fresh child process per setting.

    .venv/bin/python bench/clm_vs_hf.py                                       # the full benchmark
    .venv/bin/python bench/clm_vs_hf.py --steps 2 --rounds 1 --compile off    # a smoke test
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import (MIB, clip_and_step, describe_optimizer, hf_default_optim, hf_trainer_adamw, machine_info,
                    peak_rss_bytes, reset_peak_rss, rss_bytes, run_child, run_steps, training_args, write_json)

B, T, VOCAB, DIM, DEPTH, HEADS = 32, 128, 8192, 256, 4, 4
LR, WD, BETAS, EPS, CLIP = 1e-3, 0.1, (0.9, 0.95), 1e-8, 1.0
IMPLS = ("selfsup", "hf")
WARMUP = {False: 2, True: 3}  # compiled: step 1 compiles forward and backward, 2-3 settle optimizer and caches
MEMORY_STEPS = 3  # steps measured in a memory child after its warm-up
POOL = 4  # distinct batches cycled through; the same for both sides


def build(impl: str, precision: str, compiled: bool):
    """A fresh model and optimizer (same seed every time). Returns one training step on a (B, T + 1) batch,
    the parameter count and the optimizer in words."""
    torch.manual_seed(0)
    amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731
    if impl == "selfsup":
        from selfsup.config import ModelConfig, OptimConfig
        from selfsup.models.gpt import GPT
        from selfsup.objectives.clm import CausalLM
        from selfsup.train import optim

        model = CausalLM(GPT(ModelConfig(dim=DIM, depth=DEPTH, heads=HEADS, context=T, vocab_size=VOCAB)),
                         eos_id=0, doc_mask=True)
        opt = optim.build(model, OptimConfig(lr=LR, weight_decay=WD, betas=BETAS, eps=EPS), torch.device("cpu"))
        from selfsup.train.step import accumulate

        if compiled:
            model.compile()  # as the trainer does with train.compile=true: model and loss

        def step(batch):  # the trainer's step: summed loss backward, grads / token count, clip, step
            accumulate(model, [{"tokens": batch}], torch.device("cpu"), precision)
            clip_and_step(params, opt, CLIP)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        # use_cache=False: a training loop has no use for a KV cache, so HF gets its best case
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=T, n_embd=DIM, n_layer=DEPTH, n_head=HEADS,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                         bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
        model = GPT2LMHeadModel(cfg)
        model.loss_type = "ForCausalLM"  # what HF falls back to for GPT-2 anyway, minus a warning each build
        opt = hf_trainer_adamw(model, LR, WD, BETAS, EPS)
        if compiled:
            model.compile()  # the whole module, loss included (HF computes it in forward)

        def step(batch):  # the usual HF loop (what Trainer.training_step does, minus the bookkeeping)
            x = batch[:, :-1]
            with amp():
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            clip_and_step(params, opt, CLIP)

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]  # deduplicated: tied embeddings count once
    return step, sum(p.numel() for p in params), describe_optimizer(opt)


def make_batches() -> torch.Tensor:
    """(POOL, B, T + 1) random tokens: selfsup takes the T + 1 window, HF the first T tokens as input and labels."""
    return torch.randint(0, VOCAB, (POOL, B, T + 1), generator=torch.Generator().manual_seed(0))


def memory_child(spec: str) -> dict:
    """In a fresh process: RSS just before the first step, then the RSS peak of MEMORY_STEPS steps after warm-up
    (the high-water mark is reset after warm-up so compilation's transient memory stays out of the figure)."""
    impl, precision, compiled = spec.split(",")
    step, *_ = build(impl, precision, compiled == "1")
    batches = make_batches()
    base = rss_bytes()
    run_steps(step, batches, WARMUP[compiled == "1"], B * T)
    with_warmup = peak_rss_bytes()
    was_reset = reset_peak_rss()
    run_steps(step, batches, MEMORY_STEPS, B * T)
    peak = peak_rss_bytes()
    return dict(peak_mib=(peak - base) / MIB, peak_with_warmup_mib=(with_warmup - base) / MIB,
                base_mib=base / MIB, peak_was_reset=was_reset)


def loader_tokens_per_s(n_batches: int = 100, repeats: int = 5) -> float:
    """PackedWindows.next_batch(B) over a real uint16 shard of ~2M random tokens: median input tokens/s."""
    from selfsup.data.load.windows import PackedWindows

    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "train_000.bin"
        np.random.default_rng(0).integers(0, VOCAB, 2_000_000, dtype=np.uint16).tofile(shard)
        loader = PackedWindows([shard], np.dtype(np.uint16), T, seed=0)
        loader.next_batch(B)  # first touch of the memory map
        speeds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n_batches):
                loader.next_batch(B)
            speeds.append(n_batches * B * T / (time.perf_counter() - t0))
        return statistics.median(speeds)


def main() -> None:
    ap = training_args(__doc__)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(memory_child(args.child)))
        return
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"fp32", "bf16"} or args.steps < 1 or args.rounds < 1:
        ap.error("--precisions takes fp32 and/or bf16; --steps and --rounds at least 1")

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))  # the table needs ~110 columns, even in a log file
    machine = machine_info()
    console.print(f"torch {machine['torch']}, {machine['threads']} threads on {machine['cores']} cores, "
                  f"{machine['cpu']}")
    optim_name = hf_default_optim()
    built = {impl: build(impl, "fp32", False)[1:] for impl in IMPLS}
    counts = {impl: b[0] for impl, b in built.items()}
    console.print(f"parameters: selfsup {counts['selfsup']:,}, HF GPT-2 {counts['hf']:,}  "
                  f"(selfsup: SwiGLU, RMSNorm, RoPE, tied head, no biases; GPT-2: GELU, LayerNorm, "
                  f"learned positions, biases, tied head)")
    console.print(f"optimizer: selfsup {built['selfsup'][1]}; HF Trainer's default optim is {optim_name!r}, "
                  f"i.e. {built['hf'][1]}; both lr {LR}, wd {WD} (not on 1-D params), betas {BETAS}, clip {CLIP}")
    loader_tok_s = loader_tokens_per_s()
    console.print(f"data loader: PackedWindows.next_batch({B}) at {loader_tok_s:,.0f} tokens/s")

    modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.compile]
    batches = make_batches()
    results = []
    for precision in precisions:
        for compiled in modes:
            label = f"{precision}, {'compiled' if compiled else 'eager'}"
            steps = {impl: build(impl, precision, compiled)[0] for impl in IMPLS}
            warmup_s = {}
            for impl in IMPLS:  # compilation happens here, outside the timed rounds
                t0 = time.perf_counter()
                run_steps(steps[impl], batches, WARMUP[compiled], B * T)
                warmup_s[impl] = time.perf_counter() - t0
            speeds = {impl: [] for impl in IMPLS}
            for r in range(args.rounds):  # who goes first alternates too
                for impl in IMPLS if r % 2 == 0 else IMPLS[::-1]:
                    speeds[impl].append(run_steps(steps[impl], batches, args.steps, B * T))
            del steps  # free both models before the memory children start
            tok_s = {impl: statistics.median(v) for impl, v in speeds.items()}
            memory = {impl: run_child(__file__, ["--child", f"{impl},{precision},{int(compiled)}"])
                      for impl in IMPLS}
            results.append(dict(precision=precision, compiled=compiled, tokens_per_s=tok_s, rounds=speeds,
                                warmup_s=warmup_s, memory=memory,
                                speed_ratio=tok_s["selfsup"] / tok_s["hf"],
                                memory_ratio=memory["selfsup"]["peak_mib"] / memory["hf"]["peak_mib"],
                                loader_headroom=loader_tok_s / tok_s["selfsup"]))
            console.print(f"{label}: selfsup {tok_s['selfsup']:,.0f} tok/s, HF {tok_s['hf']:,.0f} tok/s")

    table = Table(title=f"selfsup CLM vs HF GPT-2: B={B}, T={T}, {args.rounds} rounds × {args.steps} steps")
    for col in ("precision", "mode", "selfsup tok/s", "HF tok/s", "speed ×", "selfsup MiB", "HF MiB",
                "memory ×", "loader ×"):
        table.add_column(col, justify="left" if col in ("precision", "mode") else "right")
    for r in results:
        table.add_row(r["precision"], "compiled" if r["compiled"] else "eager",
                      f"{r['tokens_per_s']['selfsup']:,.0f}", f"{r['tokens_per_s']['hf']:,.0f}",
                      f"{r['speed_ratio']:.2f}", f"{r['memory']['selfsup']['peak_mib']:.0f}",
                      f"{r['memory']['hf']['peak_mib']:.0f}", f"{r['memory_ratio']:.2f}",
                      f"{r['loader_headroom']:.0f}")
    console.print(table)
    console.print("speed ×, memory ×: selfsup / HF (speed: higher is better; memory: lower is better). "
                  "MiB: RSS peak over steady-state steps minus RSS before the first step. "
                  "loader ×: data-loader tokens/s / selfsup training tokens/s.")
    path = write_json("clm_vs_hf.json", dict(
        machine=machine, settings=dict(batch=B, context=T, vocab=VOCAB, dim=DIM, depth=DEPTH, heads=HEADS, lr=LR,
                                       weight_decay=WD, betas=BETAS, clip=CLIP, steps=args.steps,
                                       rounds=args.rounds, warmup_steps=WARMUP, memory_steps=MEMORY_STEPS),
        params=counts, hf_default_optim=optim_name, loader_tokens_per_s=loader_tok_s, results=results))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
