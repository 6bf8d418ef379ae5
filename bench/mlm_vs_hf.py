"""selfsup's masked LM against Hugging Face BERT on CPU: training tokens/s, peak memory, masking collator cost.

Both sides train an encoder of the same size (hidden 256, 4 layers, 4 heads, MLP 1024 or its gated equivalent,
vocab 8192, length 128, batch 32) on the same batches of real tokens (Python standard-library docstrings, a BPE
tokenizer trained on them) with the same AdamW hyper-parameters and gradient clipping. Each step masks its batch
anew with that side's own masking (selfsup: `mask_tokens` inside the objective; HF:
`DataCollatorForLanguageModeling`), so masking is inside the timed step on both sides. Timed rounds alternate
between the two so that whatever else the machine does hits both alike; we report medians and the ratio
selfsup / HF. Peak memory comes from one fresh child process per setting. The masking alone is timed too.

    .venv/bin/python bench/mlm_vs_hf.py                                       # the full benchmark
    .venv/bin/python bench/mlm_vs_hf.py --steps 1 --rounds 1 --compile off    # a smoke test
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import (MIB, clip_and_step, describe_optimizer, hf_default_optim, hf_trainer_adamw, machine_info,
                    graphs_compiled, peak_rss_bytes, reset_peak_rss, rss_bytes, run_child, run_steps, training_args,
                    write_json)

B, T, VOCAB, DIM, DEPTH, HEADS, FFN = 32, 128, 8192, 256, 4, 4, 1024
P = 0.15  # share of non-special tokens chosen for prediction, both sides
LR, WD, BETAS, EPS, CLIP = 1e-3, 0.1, (0.9, 0.95), 1e-8, 1.0
IMPLS = ("selfsup", "hf")
WARMUP = {False: 2, True: 3}  # compiled: step 1 compiles forward and backward, 2-3 settle shapes and caches
MEMORY_STEPS = 3  # steps measured in a memory child after its warm-up
POOL = 4  # distinct batches the training steps cycle through; the same for both sides
COLLATE_POOL = 16  # distinct batches the masking timing cycles through (the first POOL are the training batches)
COLLATORS = ("selfsup", "hf lists", "hf dicts", "hf tensors", "hf torch_call")


# ------------------------------------------------------------------------------------------------------ data

def prepare_data(folder: Path) -> dict:
    """Train the BPE tokenizer and cut the token batches once, into folder, for this process and its children.

    The tokenizer is trained on all of the built-in corpus (the docstrings of the standard library, ~1.7 MB):
    the docstrings of a handful of modules give only ~4,500 distinct merges, short of a vocabulary of 8192.
    Batches: documents in a seeded shuffle, each followed by EOS as the shard builder packs them, cut into
    consecutive windows of T tokens."""
    from selfsup.data.builtin import stdlib_docs
    from selfsup.data.read.tokenizer import eos_id, train_bpe

    t0 = time.perf_counter()
    docs = [d for f in stdlib_docs.source_files() for d in stdlib_docs.docstrings(f)]
    tok = train_bpe(docs, VOCAB)
    tok.save(str(folder / "tokenizer.json"))
    random.Random(0).shuffle(docs)
    eos, ids, need = eos_id(tok), [], COLLATE_POOL * B * T
    for i in range(0, len(docs), 256):
        for enc in tok.encode_batch(docs[i:i + 256], add_special_tokens=False):
            ids += enc.ids
            ids.append(eos)
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise SystemExit(f"the built-in corpus gave {len(ids):,} tokens, fewer than the {need:,} needed")
    batches = torch.tensor(ids[:need], dtype=torch.long).view(COLLATE_POOL, B, T)
    torch.save(batches, folder / "batches.pt")
    return dict(documents=len(docs), chars=sum(map(len, docs)), vocab=tok.get_vocab_size(),
                seconds=time.perf_counter() - t0)


def load_data(folder: Path):
    """(selfsup's tokenizers.Tokenizer, its HF wrapper, (COLLATE_POOL, B, T) token ids)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from selfsup.data.read.tokenizer import EOS, MASK, PAD

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, mask_token=MASK, pad_token=PAD, eos_token=EOS)
    return tok, hf_tok, torch.load(folder / "batches.pt")


# ----------------------------------------------------------------------------------------------- training

def build(impl: str, precision: str, compiled: bool, tok, hf_tok):
    """A fresh model and optimizer (same seed every time). Returns one training step on a (B, T) batch of token
    ids (masking included), the parameter count and the optimizer in words."""
    torch.manual_seed(0)
    amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731
    if impl == "selfsup":
        from selfsup import config
        from selfsup.objectives.build import build_objective
        from selfsup.train import optim
        from selfsup.train.step import accumulate

        cfg = config.RunConfig(
            objective="mlm", mlm=config.MLMConfig(p=P),
            model=config.ModelConfig(dim=DIM, depth=DEPTH, heads=HEADS, context=T, vocab_size=VOCAB,
                                     mlp="geglu", norm="layernorm", mlp_ratio=FFN / DIM),
            optim=config.OptimConfig(lr=LR, weight_decay=WD, betas=BETAS, eps=EPS))
        model = build_objective(cfg, tok)  # MaskedLM(Encoder(...)), doc_mask on as data.doc_mask defaults
        opt = optim.build(model, cfg.optim, torch.device("cpu"))
        if compiled:
            model.compile()  # as the trainer does with train.compile=true: masking, encoder and loss

        def step(batch):  # the trainer's step: mask, summed loss backward, grads / target count, clip, step
            accumulate(model, [{"tokens": batch}], torch.device("cpu"), precision)
            clip_and_step(params, opt, CLIP)
    else:
        from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

        cfg = BertConfig(vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                         intermediate_size=FFN, max_position_embeddings=T, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, pad_token_id=hf_tok.pad_token_id,
                         attn_implementation="sdpa")
        model = BertForMaskedLM(cfg)
        collator = DataCollatorForLanguageModeling(hf_tok, mlm_probability=P)
        opt = hf_trainer_adamw(model, LR, WD, BETAS, EPS)
        if compiled:
            model.compile()  # the whole module, loss included (HF computes it in forward); the collator stays eager

        def step(batch):  # the usual HF loop: the collator masks a list of examples, then Trainer.training_step
            masked = collator(list(batch))  # 32 rows of 128 ids: stacked, no padding needed
            with amp():
                loss = model(input_ids=masked["input_ids"], labels=masked["labels"]).loss
            loss.backward()
            clip_and_step(params, opt, CLIP)

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]  # deduplicated: tied embeddings count once
    return step, sum(p.numel() for p in params), describe_optimizer(opt)


def memory_child(spec: str, folder: Path) -> dict:
    """In a fresh process: RSS just before the first step, then the RSS peak of MEMORY_STEPS steps after warm-up
    (the high-water mark is reset after warm-up so compilation's transient memory stays out of the figure)."""
    impl, precision, compiled = spec.split(",")
    tok, hf_tok, batches = load_data(folder)
    step, *_ = build(impl, precision, compiled == "1", tok, hf_tok)
    base = rss_bytes()
    run_steps(step, batches[:POOL], WARMUP[compiled == "1"], B * T)
    with_warmup = peak_rss_bytes()
    was_reset = reset_peak_rss()
    graphs = graphs_compiled()
    run_steps(step, batches[:POOL], MEMORY_STEPS, B * T)
    peak = peak_rss_bytes()
    return dict(peak_mib=(peak - base) / MIB, peak_with_warmup_mib=(with_warmup - base) / MIB,
                base_mib=base / MIB, peak_was_reset=was_reset,
                graphs_compiled_in_measured_steps=graphs_compiled() - graphs)


# ------------------------------------------------------------------------------------------------ masking

def collators(tok, hf_tok, batches: torch.Tensor) -> dict:
    """Each masking under test as a function of a batch index, with its input prepared beforehand in the form
    that side receives it. Each returns (inputs (B, T), labels (B, T) with -100 where nothing is predicted)."""
    from transformers import DataCollatorForLanguageModeling

    from selfsup.models.transformer import padded_vocab
    from selfsup.views.masking import MaskingTable, mask_tokens

    table = MaskingTable(tok, padded_vocab(VOCAB))
    hf = DataCollatorForLanguageModeling(hf_tok, mlm_probability=P)
    special = set(hf_tok.all_special_ids)
    lists = [[row.tolist() for row in b] for b in batches]  # what a tokenized dataset without a format yields
    # run_mlm.py's rows: tokenized with return_special_tokens_mask=True, so the collator need not compute it
    dicts = [[{"input_ids": ids, "special_tokens_mask": [int(i in special) for i in ids]} for ids in b]
             for b in lists]
    tensors = [list(b) for b in batches]  # a dataset formatted as torch; what the training step above passes

    def out(d):
        return d["input_ids"], d["labels"]

    return {"selfsup": lambda i: mask_tokens(batches[i], table, P),
            "hf lists": lambda i: out(hf(lists[i])),
            "hf dicts": lambda i: out(hf(dicts[i])),
            "hf tensors": lambda i: out(hf(tensors[i])),
            "hf torch_call": lambda i: out(hf.torch_call(batches[i]))}


def masking_ms(fns: dict, n_batches: int, rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds (the order rotates every round) of n_batches calls each: mean ms per batch per round."""
    names = list(fns)
    for fn in fns.values():  # warm-up: first calls build caches (tokenizer special ids, allocator)
        for i in range(3):
            fn(i)
    ms = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            t0 = time.perf_counter()
            for i in range(n_batches):
                fn(i % COLLATE_POOL)
            ms[name].append((time.perf_counter() - t0) * 1000 / n_batches)
    return ms


def masking_shares(fns: dict, batches: torch.Tensor, tok) -> dict[str, dict]:
    """Sanity check over the whole pool: share of candidates (non-special tokens) chosen, and of the chosen,
    the shares replaced by the mask token and left unchanged (expected 0.15, 0.8, 0.1)."""
    from selfsup.data.read.tokenizer import MASK

    mask_id = tok.token_to_id(MASK)
    special_ids = torch.tensor(sorted(tok.get_added_tokens_decoder()))
    candidates = ~torch.isin(batches, special_ids)
    shares = {}
    for name, fn in fns.items():
        torch.manual_seed(0)
        outs = [fn(i) for i in range(COLLATE_POOL)]
        inputs = torch.stack([o[0] for o in outs])
        chosen = torch.stack([o[1] for o in outs]) != -100
        n = chosen.sum().item()
        shares[name] = dict(chosen=n / candidates.sum().item(),
                            masked=((inputs == mask_id) & chosen).sum().item() / n,
                            unchanged=((inputs == batches) & chosen).sum().item() / n,
                            chosen_specials=(chosen & ~candidates).sum().item())
    return shares


# ---------------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = training_args(__doc__)
    ap.add_argument("--mask-batches", type=int, default=200,
                    help="batches per round when timing the masking alone (default 200)")
    ap.add_argument("--data", help=argparse.SUPPRESS)  # internal: the folder prepare_data wrote
    args = ap.parse_args()
    if args.child:
        print(json.dumps(memory_child(args.child, Path(args.data))))
        return
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"fp32", "bf16"} or min(args.steps, args.rounds, args.mask_batches) < 1:
        ap.error("--precisions takes fp32 and/or bf16; --steps, --rounds and --mask-batches at least 1")

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))  # the table needs ~100 columns, even in a log file
    machine = machine_info()
    console.print(f"torch {machine['torch']}, {machine['threads']} threads on {machine['cores']} cores, "
                  f"{machine['cpu']}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = prepare_data(folder)
        tok, hf_tok, batches = load_data(folder)
        console.print(f"data: BPE tokenizer of {data['vocab']} tokens trained on {data['documents']:,} stdlib "
                      f"docstrings ({data['chars'] / 1e6:.1f} MB) and {COLLATE_POOL} batches of {B} × {T} real "
                      f"tokens cut, in {data['seconds']:.1f} s")
        optim_name = hf_default_optim()
        built = {impl: build(impl, "fp32", False, tok, hf_tok)[1:] for impl in IMPLS}
        counts = {impl: b[0] for impl, b in built.items()}
        from selfsup.models.blocks import mlp_hidden
        gated = mlp_hidden(DIM, FFN / DIM, "geglu")
        console.print(f"parameters: selfsup {counts['selfsup']:,}, HF BERT {counts['hf']:,}  (selfsup: GeGLU MLP "
                      f"of width {gated} (2/3 of {FFN}, rounded up to x64), bias-free LayerNorm, RoPE, "
                      f"ModernBERT head, tied output with bias, no other biases; BERT: GELU MLP of width {FFN}, "
                      f"LayerNorm, learned positions and token types, biases, tied output with bias)")
        console.print(f"optimizer: selfsup {built['selfsup'][1]}; HF Trainer's default optim is {optim_name!r}, "
                      f"i.e. {built['hf'][1]}; both lr {LR}, wd {WD} (not on 1-D params), betas {BETAS}, "
                      f"clip {CLIP}")
        console.print("masking is inside every timed step on both sides: selfsup masks in its objective "
                      "(mask_tokens), HF in DataCollatorForLanguageModeling before the forward")

        fns = collators(tok, hf_tok, batches)
        shares = masking_shares(fns, batches, tok)
        mask_rounds = masking_ms(fns, args.mask_batches, args.rounds)
        mask_ms = {name: statistics.median(v) for name, v in mask_rounds.items()}
        console.print("masking ms/batch: " + ", ".join(f"{n} {v:.3f}" for n, v in mask_ms.items()))

        modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.compile]
        results = []
        for precision in precisions:
            for compiled in modes:
                label = f"{precision}, {'compiled' if compiled else 'eager'}"
                steps = {impl: build(impl, precision, compiled, tok, hf_tok)[0] for impl in IMPLS}
                warmup_s = {}
                for impl in IMPLS:  # compilation happens here, outside the timed rounds
                    t0 = time.perf_counter()
                    run_steps(steps[impl], batches[:POOL], WARMUP[compiled], B * T)
                    warmup_s[impl] = time.perf_counter() - t0
                speeds, recompiled = {impl: [] for impl in IMPLS}, dict.fromkeys(IMPLS, 0)
                for r in range(args.rounds):  # who goes first alternates too
                    for impl in IMPLS if r % 2 == 0 else IMPLS[::-1]:
                        graphs = graphs_compiled()
                        speeds[impl].append(run_steps(steps[impl], batches[:POOL], args.steps, B * T))
                        recompiled[impl] += graphs_compiled() - graphs
                del steps  # free both models before the memory children start
                tok_s = {impl: statistics.median(v) for impl, v in speeds.items()}
                memory = {impl: run_child(__file__, ["--child", f"{impl},{precision},{int(compiled)}",
                                                     "--data", tmp]) for impl in IMPLS}
                results.append(dict(precision=precision, compiled=compiled, tokens_per_s=tok_s, rounds=speeds,
                                    warmup_s=warmup_s, memory=memory, graphs_compiled_in_timed_steps=recompiled,
                                    speed_ratio=tok_s["selfsup"] / tok_s["hf"],
                                    memory_ratio=memory["selfsup"]["peak_mib"] / memory["hf"]["peak_mib"]))
                console.print(f"{label}: selfsup {tok_s['selfsup']:,.0f} tok/s, HF {tok_s['hf']:,.0f} tok/s")
                if any(recompiled.values()):  # a shape that changes every step, e.g. the count of masked tokens
                    console.print(f"[yellow]  torch.compile built graphs during the timed steps (recompilation): "
                                  f"selfsup {recompiled['selfsup']}, HF {recompiled['hf']}; those steps include "
                                  f"compile time")

    table = Table(title=f"selfsup MLM vs HF BERT: B={B}, T={T}, {args.rounds} rounds × {args.steps} steps, "
                        f"masking included")
    for col in ("precision", "mode", "selfsup tok/s", "HF tok/s", "speed ×", "selfsup MiB", "HF MiB", "memory ×"):
        table.add_column(col, justify="left" if col in ("precision", "mode") else "right")
    for r in results:
        table.add_row(r["precision"], "compiled" if r["compiled"] else "eager",
                      f"{r['tokens_per_s']['selfsup']:,.0f}", f"{r['tokens_per_s']['hf']:,.0f}",
                      f"{r['speed_ratio']:.2f}", f"{r['memory']['selfsup']['peak_mib']:.0f}",
                      f"{r['memory']['hf']['peak_mib']:.0f}", f"{r['memory_ratio']:.2f}")
    console.print(table)
    console.print("speed ×, memory ×: selfsup / HF (speed: higher is better; memory: lower is better). "
                  "MiB: RSS peak over steady-state steps minus RSS before the first step.")

    inputs = {"selfsup": "mask_tokens(tokens, table), tokens a (32, 128) tensor",
              "hf lists": "collator(32 lists of int)",
              "hf dicts": "collator(32 dicts: input_ids, special_tokens_mask), as run_mlm.py",
              "hf tensors": "collator(32 1-D tensors), as in the training step",
              "hf torch_call": "collator.torch_call((32, 128) tensor)"}
    mtable = Table(title=f"masking one batch of {B} × {T}: median of {args.rounds} rounds × {args.mask_batches} "
                         f"batches")
    for col in ("masking", "call", "ms/batch", "× selfsup", "chosen", "mask", "same"):
        mtable.add_column(col, justify="left" if col in ("masking", "call") else "right")
    for name in COLLATORS:
        s = shares[name]
        mtable.add_row(name, inputs[name], f"{mask_ms[name]:.3f}", f"{mask_ms[name] / mask_ms['selfsup']:.1f}",
                       f"{s['chosen']:.3f}", f"{s['masked']:.3f}", f"{s['unchanged']:.3f}")
    console.print(mtable)
    console.print("× selfsup: ms/batch / selfsup's ms/batch (above 1: slower than selfsup). chosen: share of "
                  "non-special tokens chosen; mask, same: share of the chosen replaced by the mask token, left "
                  f"unchanged (expected {P}, 0.8, 0.1; over all {COLLATE_POOL} batches once).")
    path = write_json("mlm_vs_hf.json", dict(
        machine=machine, settings=dict(batch=B, context=T, vocab=VOCAB, dim=DIM, depth=DEPTH, heads=HEADS,
                                       ffn=FFN, gated_ffn=gated, mlm_p=P, lr=LR, weight_decay=WD, betas=BETAS,
                                       clip=CLIP, steps=args.steps, rounds=args.rounds, warmup_steps=WARMUP,
                                       memory_steps=MEMORY_STEPS, mask_batches=args.mask_batches,
                                       pool=POOL, mask_pool=COLLATE_POOL),
        data=data, params=counts, hf_default_optim=optim_name, results=results,
        masking=dict(ms_per_batch=mask_ms, rounds=mask_rounds, shares=shares, calls=inputs)))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
