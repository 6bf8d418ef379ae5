"""Continued pretraining of an image model from its Hugging Face export, measured: kNN accuracy on the old and the
new domain before and after, with and without replay (issue 15, part 6, the image half).

    python bench/continued_pretraining_images.py [--out bench/out/continued-images] [--steps 300] [--continue-steps 150]

1. The "public" model: a small ViT pretrained by selfsup (SimCLR) on domain A, scikit-learn's bundled digits,
   exported with `selfsup export --format hf` to a transformers ViTModel folder.
2. Domain B: the same digit classes drawn otherwise (intensities inverted, turned a quarter), written as PNGs.
3. Continued from that folder (`model.init=`) on B, without replay and with 20% of every batch replayed from A
   (continual.old_data, continual.replay).
4. kNN accuracy (`selfsup eval --task knn`, k=20 cosine) on held-out A and held-out B for each model, and for a
   random init of the same shape (`--baseline random`) as the floor.
Prints a table and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import selfsup_cli

SHAPE = ["model.dim=96", "model.depth=4", "model.heads=3", "train.batch_size=64", "train.eval_every=100000",
         "train.checkpoint_every=100000", "train.log_every=50"]


def domain_b(a: Path, b: Path) -> None:
    """Every PNG of `a` inverted and turned a quarter, at the same relative path under `b`."""
    from PIL import Image, ImageOps

    for f in sorted(a.rglob("*.png")):
        out = b / f.relative_to(a)
        out.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.invert(Image.open(f).convert("RGB")).rotate(90).save(out)


def knn(run: Path, data: Path, baseline: bool = False) -> dict[str, float]:
    extra = ["--baseline", "random"] if baseline else []
    selfsup_cli("eval", str(run), "--task", "knn", "--train", str(data / "train"), "--test", str(data / "test"), *extra)
    r = json.loads((run / "eval" / "knn.json").read_text())
    return {m: r[m]["accuracy"] for m in ("pretrained", "random") if isinstance(r.get(m), dict)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/out/continued-images"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--continue-steps", type=int, default=150)
    ap.add_argument("--replay", type=float, default=0.2)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    A, B = a.out / "digits", a.out / "digits-b"
    if not (A / "train").is_dir():
        selfsup_cli("data", "digits", "--out", str(A))
    if not (B / "train").is_dir():
        domain_b(A, B)
    public, hf = a.out / "public-run", a.out / "public-hf"
    if not (public / "model.safetensors").is_file():
        selfsup_cli("train", "simclr", f"data.path={A / 'train'}", f"out_dir={public}", f"train.max_steps={a.steps}",
                *SHAPE)
    if not (hf / "config.json").is_file():
        selfsup_cli("export", str(public), "--format", "hf", "--out", str(hf))
    runs = {"public model (A only)": (public, [])}
    runs["continued on B"] = (a.out / "continued", [])
    runs[f"continued on B, {a.replay:.0%} replay of A"] = (a.out / "continued-replay", [
        f"continual.old_data={A / 'train'}", f"continual.replay={a.replay}"])
    for name, (run, extra) in runs.items():
        if run != public and not (run / "model.safetensors").is_file():
            selfsup_cli("train", "simclr", f"model.init={hf}", f"data.path={B / 'train'}", f"out_dir={run}",
                    f"train.max_steps={a.continue_steps}", *SHAPE[3:], *extra)
    results = {}
    for name, (run, _) in runs.items():
        on_a, on_b = knn(run, A, baseline=run == public), knn(run, B, baseline=run == public)
        results[name] = {"A": on_a["pretrained"], "B": on_b["pretrained"]}
        if "random" in on_a:
            results["random init (same shape)"] = {"A": on_a["random"], "B": on_b["random"]}
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print("| model | kNN accuracy, held-out A (digits) | kNN accuracy, held-out B (inverted, turned) |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {100 * r['A']:.1f}% | {100 * r['B']:.1f}% |")


if __name__ == "__main__":
    main()
