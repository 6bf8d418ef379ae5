"""Continued pretraining from a Hugging Face model, measured: does the new domain improve, and how much of the old
one is forgotten, with and without replay (issue 15, part 6).

    python bench/continued_pretraining.py [--out bench/out/continued] [--steps 400] [--continue-steps 200]

1. The "public" model: a small Llama-shaped decoder pretrained by selfsup on domain A (docstrings of Python's
   standard library), exported with `selfsup export --format hf` to a transformers LlamaForCausalLM folder.
2. Continued from that folder (`model.init=`) on domain B (whole source files of installed Python packages, a
   document per file), without replay, and with 20% of every batch replayed from A (continual.old_data and
   continual.replay, when this selfsup has them for model.init runs).
3. Perplexity on held-out A and held-out B of the public model and of each continued run (`selfsup eval --task
   perplexity --data`). Held-out sets are whole source files that no run trained on.
Prints a table and writes it to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import selfsup_cli

SHAPE = ["model.dim=128", "model.depth=4", "model.heads=4", "model.context=128", "model.vocab_size=4096",
         "train.batch_size=16", "train.eval_every=100000", "train.checkpoint_every=100000", "train.log_every=50"]
B_PACKAGES = ("rich", "pydantic", "typer", "click", "yaml")


def write_domains(out: Path) -> dict[str, Path]:
    """A: stdlib docstrings (.jsonl, a document each); B: package source files (.jsonl, a file each); every 10th
    source file of each is held out."""
    import importlib.util

    from selfsup.data.builtin.stdlib_docs import docstrings, source_files

    paths = {k: out / f"{k}.jsonl" for k in ("a_train", "a_test", "b_train", "b_test")}
    rows = {k: [] for k in paths}
    for i, f in enumerate(source_files()):
        rows["a_test" if i % 10 == 0 else "a_train"] += [{"text": d} for d in docstrings(f)]
    files = []
    for name in B_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec and spec.origin:
            files += sorted(Path(spec.origin).parent.rglob("*.py"))
    for i, f in enumerate(files):
        text = f.read_text(errors="replace")
        if 200 < len(text) < 100_000:
            rows["b_test" if i % 10 == 0 else "b_train"].append({"text": text})
    for k, p in paths.items():
        p.write_text("".join(json.dumps(r) + "\n" for r in rows[k]))
    return paths


def perplexity(run: Path, data: Path) -> float:
    selfsup_cli("eval", str(run), "--task", "perplexity", "--data", str(data))
    return float(json.loads((run / "eval" / "perplexity.json").read_text())["perplexity"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/out/continued"))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--continue-steps", type=int, default=200)
    ap.add_argument("--replay", type=float, default=0.2)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    d = write_domains(a.out)
    public, hf = a.out / "public-run", a.out / "public-hf"
    if not (public / "model.safetensors").is_file():
        selfsup_cli("train", "gpt-clm", f"data.path={d['a_train']}", f"out_dir={public}", f"train.max_steps={a.steps}",
                *SHAPE)
    if not (hf / "config.json").is_file():
        selfsup_cli("export", str(public), "--format", "hf", "--out", str(hf))
    runs = {"public model (A only)": public}
    plain = a.out / "continued"
    if not (plain / "model.safetensors").is_file():
        selfsup_cli("train", "gpt-clm", f"model.init={hf}", f"data.path={d['b_train']}", f"out_dir={plain}",
                f"train.max_steps={a.continue_steps}", *SHAPE[5:])
    runs["continued on B"] = plain
    replay = a.out / "continued-replay"
    try:
        if not (replay / "model.safetensors").is_file():
            selfsup_cli("train", "gpt-clm", f"model.init={hf}", f"data.path={d['b_train']}", f"out_dir={replay}",
                    f"continual.old_data={d['a_train']}", f"continual.replay={a.replay}",
                    f"train.max_steps={a.continue_steps}", *SHAPE[5:])
        runs[f"continued on B, {a.replay:.0%} replay of A"] = replay
    except SystemExit as e:
        print(f"(no replay run: {str(e).splitlines()[-1]})")
    results = {name: {"A": perplexity(run, d["a_test"]), "B": perplexity(run, d["b_test"])}
               for name, run in runs.items()}
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print("| model | perplexity, held-out A (docstrings) | perplexity, held-out B (package source) |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['A']:.2f} | {r['B']:.2f} |")


if __name__ == "__main__":
    main()
