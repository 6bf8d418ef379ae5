"""Which representation of a text encoder is worth using: probe accuracy along training, per layer, per pooling,
raw / centred / whitened, with the anisotropy beside each (issue 18, part 1).

For each run directory given (trained with checkpoints kept, e.g. train.checkpoint_every=140 train.keep_checkpoints=6)
and each checkpoint in it, plus the run's random init (step 0, `--baseline random`'s model), on each labeled set:
  * features: every layer's hidden states (0 = the normalised embedding, l = block l's output), each through the
    trunk's final norm (the last one is what eval reads), pooled as `cls` (the [EOS] that opens the text), `mean`
    (over real tokens), and `first-last` (the mean over real tokens of the average of layer 1 and the last layer,
    Su et al. 2021's "first-last-avg");
  * transforms fitted on the TRAIN split only: raw, centred (minus the training mean), whitened (BERT-whitening,
    Su et al. 2021: (x - mu) U diag(1/sqrt(s)), U s U^T the training covariance);
  * figures: kNN accuracy (k=20, cosine, T=0.07, probe/knn.py), linear-probe accuracy (probe/linear.py; it
    standardizes each feature, so centring changes nothing there and is not repeated) and the anisotropy: the mean
    cosine of 2,000 seeded random pairs of different test texts.
Along training: the last layer and first-last, every pooling and transform. Per layer: the final checkpoint and
the random init, kNN for every transform, linear on raw mean-pooled states.

    .venv/bin/selfsup data labeled-docstrings --out runs/labeled
    .venv/bin/selfsup data labeled-packages --out runs/labeled-pkgs
    .venv/bin/python bench/text_representation.py runs/bench/bert-mlm runs/bench/simcse \\
        --set docstrings=runs/labeled --set packages=runs/labeled-pkgs

Features are cached in bench/out/text_features/ (by run, step and set); one torch thread (the CPU is shared).
Writes bench/out/text_representation.json and prints one table per run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_model

from common import OUT_DIR, anisotropy, machine_info
from selfsup.data.labeled import read_labeled
from selfsup.eval.baseline import random_objective
from selfsup.probe.inputs import TextInputs
from selfsup.probe.knn import knn_eval
from selfsup.probe.linear import linear_probe
from selfsup.probe.whitening import fit_whitening, whiten
from selfsup.rundir import open_run
from selfsup.train.checkpoint import checkpoints

POOLS = ("cls", "mean")
TRANSFORMS = ("raw", "centred", "whitened")


@torch.no_grad()
def layer_features(trunk, inputs: TextInputs, texts: list[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """{'L<l>/cls', 'L<l>/mean', 'first-last'}: (N, D) float32 features, row i for texts[i]."""
    seqs = inputs.prepare(texts)
    order = inputs.order(seqs)
    taken: list[torch.Tensor] = []
    hooks = [trunk.drop.register_forward_hook(lambda m, a, out: taken.append(out))]
    hooks += [b.register_forward_hook(lambda m, a, out: taken.append(out)) for b in trunk.blocks]
    out: dict[str, list[torch.Tensor]] = {}
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            idx, mask = inputs.batch(seqs, rows, torch.device("cpu"))
            taken.clear()
            trunk(idx, pad_mask=mask)
            states = [trunk.norm(h) for h in taken]  # L+1 of (B, T, D), each through the final norm
            w = mask.float().unsqueeze(-1)  # (B, T, 1)
            mean = lambda h: (h * w).sum(1) / w.sum(1)  # noqa: E731  (B, D)
            for layer, h in enumerate(states):
                out.setdefault(f"L{layer}/cls", []).append(h[:, 0])
                out.setdefault(f"L{layer}/mean", []).append(mean(h))
            out.setdefault("first-last", []).append(mean((states[1] + states[-1]) / 2))
    finally:
        for h in hooks:
            h.remove()
    back = torch.tensor(order).argsort()  # batched longest first; rows back in input order
    return {k: torch.cat(v)[back].float() for k, v in out.items()}


def fit_transform(train: torch.Tensor, kind: str):
    """x -> transformed x, fitted on the training features."""
    if kind == "raw":
        return lambda x: x
    mu = train.double().mean(0)  # (D,)
    if kind == "centred":
        return lambda x: (x.double() - mu).float()
    mu, w = fit_whitening(train)
    return lambda x: whiten(x, mu, w)


def measure(train, train_y, test, test_y, n: int, transforms, linear_on) -> dict:
    res = {}
    for kind in transforms:
        f = fit_transform(train, kind)
        a, b = f(train), f(test)
        r = dict(knn=knn_eval(a, train_y, b, test_y, n)["accuracy"], aniso=anisotropy(b, pairs=2000))
        if kind in linear_on:
            r["linear"] = linear_probe(a, train_y, b, test_y, n)["accuracy"]
        res[kind] = r
    return res


def cached_features(key: str, trunk, inputs, texts) -> dict[str, torch.Tensor]:
    path = OUT_DIR / "text_features" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    if path.is_file():
        return torch.load(path)
    feats = layer_features(trunk, inputs, texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, path)
    return feats


def bench_run(run_dir: Path, sets: dict[str, Path], only: set[int] | None = None) -> dict:
    cfg, objective, tok = open_run(run_dir, torch.device("cpu"))
    labeled = {}
    for name, folder in sets.items():
        train = read_labeled(str(folder / "train.jsonl"))
        test = read_labeled(str(folder / "test.jsonl"), train.classes)
        labeled[name] = (train, test)
    steps = {0: None} | {int(p.name.split("-")[1]): p for p in checkpoints(run_dir)}
    steps = {s: p for s, p in steps.items() if only is None or s in only}
    tokens_per_step = cfg.train.batch_size * cfg.model.context
    out = {"recipe": cfg.recipe, "tokens_per_step": tokens_per_step, "steps": {}}
    last = max(steps)
    for step, ckpt in steps.items():
        if ckpt is None:
            objective = random_objective(cfg, tok, torch.device("cpu"))
        else:
            load_model(objective, str(ckpt / "model.safetensors"))
        trunk = objective.model.eval()
        inputs = TextInputs(tok, trunk)
        per_set = {}
        for name, (train, test) in labeled.items():
            key = f"{run_dir.resolve()}|{step}|{name}|{sets[name].resolve()}"
            fa = cached_features(key + "|train", trunk, inputs, train.items)
            fb = cached_features(key + "|test", trunk, inputs, test.items)
            n = len(train.classes)
            depth = trunk.cfg.depth
            reps = [f"L{depth}/cls", f"L{depth}/mean", "first-last"]
            per = {r: measure(fa[r], train.labels, fb[r], test.labels, n, TRANSFORMS, ("raw", "whitened"))
                   for r in reps}
            if step in (0, last):
                for layer in range(depth):
                    for pool in POOLS:
                        r = f"L{layer}/{pool}"
                        linear = ("raw",) if pool == "mean" else ()  # L-BFGS fits are the cost: one pooling
                        per[r] = measure(fa[r], train.labels, fb[r], test.labels, n, TRANSFORMS, linear)
            per_set[name] = per
            print(f"{run_dir.name} step {step} {name}: " + ", ".join(
                f"{r} knn {v['raw']['knn']:.3f}/{v['whitened']['knn']:.3f} lin {v['raw']['linear']:.3f}/"
                f"{v['whitened']['linear']:.3f} cos {v['raw']['aniso']:.2f}" for r, v in per.items() if r in reps),
                file=sys.stderr, flush=True)
        out["steps"][step] = per_set
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--set", action="append", required=True, help="NAME=FOLDER with train.jsonl and test.jsonl")
    p.add_argument("--out", type=Path, default=OUT_DIR / "text_representation.json")
    p.add_argument("--steps", type=int, nargs="*", help="only these checkpoints' steps (0: the random init)")
    args = p.parse_args()
    torch.set_num_threads(1)
    sets = {s.split("=", 1)[0]: Path(s.split("=", 1)[1]) for s in args.set}
    results = {"machine": machine_info(), "sets": {k: str(v) for k, v in sets.items()}, "runs": {}}
    for run in args.runs:
        results["runs"][str(run)] = bench_run(run, sets, set(args.steps) if args.steps else None)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
