"""What an audio-mask (HuBERT) encoder's features are worth, and where: kNN and linear-probe accuracy on the
synthetic speech set's held-out voices (`selfsup data speech`) against training steps, per layer, per pooling,
raw / centred / whitened, with the anisotropy of each, beside the random init of the same shape.

One run per invocation: audio-mask with the Makefile demo's settings (dim 128 × 4 blocks, 4 heads, batch 64,
300 steps, warm-up 30, lr 1e-3) plus any `--set key=value`, trained on DATA/train with a checkpoint every
`--every` steps (all kept); or `--run DIR`, a run already trained that way. Then each checkpoint, and the random
init (`selfsup eval --baseline random`'s: the run's objective built from its seed, step 0 of the curve), is probed:

- representations: the mean over real tokens of each layer's output (L0 the front end, before any block; L1 ... the
  blocks' outputs, the last through the final norm, which is what `selfsup eval` and `embed` use), and
  first+last: the mean of L1's and the last layer's means (BERT-whitening's first-last average);
- transforms, fitted on the probe's training split (training speakers) alone: raw; centred (minus the mean);
  whitened (BERT-whitening, Su et al. 2021: centred, then rotated and scaled by the inverse square root of the
  covariance's eigenvalues, floored at 1e-6 of the largest);
- kNN: probe/knn.py's (k=20, cosine, T=0.07), as `selfsup eval --task knn`; linear: probe/linear.py's (features
  standardized per dimension first, so raw and centred give the same number: reported once, as raw);
- anisotropy: the mean cosine similarity of 4,000 seeded random pairs of distinct test clips, after the transform
  (0: directions spread; 1: every clip points the same way);
- what the last layer's mean varies with, on the speech set: the share of its variance the vowels' means explain
  and the speakers' (from the file names), and its first principal direction's share of the variance, the share of
  that the vowel and the speaker explain, and its correlation with the background level (the mean log power of each
  clip's quietest 20 frames); and how the run's k-means units cover the background tokens (more than 17 dB below
  their clip's loudest frame): how many units are mostly background, and how much of those tokens' level the units
  tell.

Single-threaded torch; the probes take about 2 minutes a run on a quiet core, training 5-10 on 2 shared cores.

    selfsup data speech --out runs/speech
    .venv/bin/python bench/audio_representation.py --data runs/speech --out runs/audio-bench/shipped
    .venv/bin/python bench/audio_representation.py --data runs/speech --out runs/audio-bench/mfcc \\
        --set hubert.targets=mfcc
    .venv/bin/python bench/audio_representation.py --tables A/probes.json B/probes.json   # one run probed in parts
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_model
from torch import Tensor

from common import anisotropy, selfsup_cli

DEMO = ["model.dim=128", "model.depth=4", "model.heads=4", "train.max_steps=300", "sched.warmup_steps=30",
        "optim.lr=0.001", "train.batch_size=64"]
TRANSFORMS = ("raw", "centred", "whitened")
PAIRS = 4000


@torch.no_grad()
def layer_features(model, inputs, items, batch: int = 128) -> dict[str, Tensor]:
    """{representation: (N, D)} for every clip: each layer's mean over real tokens, and first+last."""
    prepared = inputs.prepare(items)
    n = len(prepared[0])
    out: dict[str, list[Tensor]] = {}
    for start in range(0, n, batch):
        x, lengths = inputs.batch(prepared, list(range(start, min(start + batch, n))), torch.device("cpu"))
        h = model.embed(x)  # (b, T, D)
        B, T, _ = h.shape
        real = model.token_mask(lengths, T)  # (b, T)
        mask = real[:, None, None, :].expand(B, 1, T, T)
        w = real.unsqueeze(-1).float()  # (b, T, 1)
        means = [(h * w).sum(1) / w.sum(1)]  # L0: the front end
        if model.rotary is None:  # audio.positions=conv: added once before the blocks, as AudioEncoder.encode
            h = h.masked_fill(~real[..., None], 0.0)
            h = model.norm_in(h + model.positions(h))
            rope = None
        else:
            rope = model.rotary(T, None)
        for i, block in enumerate(model.blocks):
            h = block(h, rope, mask, causal=False)
            hl = model.norm(h) if i == len(model.blocks) - 1 else h  # the last through the final norm
            means.append((hl * w).sum(1) / w.sum(1))  # (b, D)
        reps = {f"L{i}": m for i, m in enumerate(means)}
        reps["first+last"] = (means[1] + means[-1]) / 2
        for key, value in reps.items():
            out.setdefault(key, []).append(value.float())
    return {key: torch.cat(parts) for key, parts in out.items()}


def transform(kind: str, train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """(train, test) after a transform fitted on train alone."""
    if kind == "raw":
        return train, test
    mean = train.mean(dim=0, keepdim=True)  # (1, D)
    if kind == "centred":
        return train - mean, test - mean
    x = (train - mean).double()
    values, vectors = torch.linalg.eigh(x.t() @ x / len(x))  # (D,), (D, D)
    w = vectors / values.clamp(min=values.max() * 1e-6).sqrt()  # (D, D): x @ w has identity covariance
    return ((train - mean).double() @ w).float(), ((test - mean).double() @ w).float()


def variance_shares(x: Tensor, groups: Tensor) -> float:
    """Share of the total variance of x (N, D) that the means of `groups` (N,) explain (between-group / total)."""
    x = x - x.mean(dim=0)
    between = sum((groups == g).sum() * x[groups == g].mean(dim=0).pow(2).sum() for g in groups.unique())
    return (between / x.pow(2).sum()).item()


def what_dominates(x: Tensor, vowel: Tensor, speaker: Tensor, floor: Tensor) -> dict:
    """The test features' variance explained by vowel and by speaker, and the first principal direction: its share
    of the variance, the share of it vowel and speaker explain, and its correlation with the background level."""
    centred = x - x.mean(dim=0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    pc1 = centred @ v[0]  # (N,)
    return dict(vowel=variance_shares(x, vowel), speaker=variance_shares(x, speaker),
                pc1=(s[0] ** 2 / s.pow(2).sum()).item(), pc1_vowel=variance_shares(pc1[:, None], vowel),
                pc1_speaker=variance_shares(pc1[:, None], speaker),
                pc1_floor=torch.corrcoef(torch.stack([pc1, floor]))[0, 1].abs().item())


@torch.no_grad()
def background_units(objective, clips, energy: Tensor) -> dict:
    """How the run's k-means units cover the background (tokens over 17 dB below their clip's loudest frame): the
    share of tokens that are background, the units at least 90% background, and the share of the background tokens'
    level variance that their units explain (1: the units are a level meter)."""
    from selfsup.objectives.kmeans import nearest

    x, _ = objective.view(torch.from_numpy(clips.rows[:].astype("float32")), torch.from_numpy(clips.lengths[:]))
    T = objective.model.tokens_per_clip
    units = nearest(objective.frames(x, T).flatten(0, 1), objective.centroids).view(-1, T)  # (N, T)
    level = energy[:, :objective.frame_stride * T:objective.frame_stride]  # (N, T) each token's first frame
    background = level < energy.max(dim=1, keepdim=True).values - 4  # (N, T)
    u = units[background]
    quiet = sum((background[units == k].float().mean() > 0.9).item() for k in units.unique())
    return dict(background_tokens=background.float().mean().item(), background_units=quiet,
                units=len(units.unique()), level_explained=variance_shares(level[background][:, None], u))


def speech_speakers(test_dir: Path, test_set) -> Tensor | None:
    """(N,) speaker ids of the test rows, from the speech set's file names (<speaker>-<i>.wav) in the order the
    cache reads them (sorted); None for a set that is not laid out so."""
    from selfsup.data.cache.media import source_files

    files = source_files(str(test_dir), "audio")
    if [f.parent.name for f in files] != [test_set.classes[i] for i in test_set.labels] or \
            not all("-" in f.stem for f in files):
        return None
    names = sorted({f.stem.split("-")[0] for f in files})
    return torch.tensor([names.index(f.stem.split("-")[0]) for f in files])


def probe(train: dict[str, Tensor], test: dict[str, Tensor], y_train: Tensor, y_test: Tensor, classes: int,
          linear_reps: set[str] | None) -> dict:
    """{rep: {transform: {knn, linear (raw, whitened), anisotropy}}}; linear only for the reps in linear_reps
    (None: all)."""
    from selfsup.probe.knn import knn_eval
    from selfsup.probe.linear import linear_probe

    result = {}
    for rep in train:
        result[rep] = {}
        for kind in TRANSFORMS:
            a, b = transform(kind, train[rep], test[rep])
            row = dict(knn=knn_eval(a, y_train, b, y_test, classes)["accuracy"], anisotropy=anisotropy(b, PAIRS))
            if kind != "centred" and (linear_reps is None or rep in linear_reps):
                row["linear"] = linear_probe(a, y_train, b, y_test, classes)["accuracy"]
            result[rep][kind] = row
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", nargs="+", help="only print the tables of these probes.json files of one run (their "
                   "steps merged: probes of a run's steps made in parts)")
    p.add_argument("--data", help="a `selfsup data speech` folder (train/, test/)")
    p.add_argument("--out", help="folder for the run (out/run) and the figures (out/probes.json)")
    p.add_argument("--run", help="probe this trained run instead of training one")
    p.add_argument("--set", action="append", default=[], help="a config key=value on top of the demo's settings")
    p.add_argument("--every", type=int, default=50, help="steps between the probed checkpoints")
    p.add_argument("--steps", help="probe only these steps, e.g. 0,150,300 (default: the random init and every "
                   "checkpoint)")
    args = p.parse_args()
    if args.tables:
        parts = [json.loads(Path(f).read_text()) for f in args.tables]
        print(tables({**parts[0], "steps": {k: v for part in parts for k, v in part["steps"].items()}}))
        return
    if not args.data or not args.out:
        p.error("--data and --out are needed to train and probe a run")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else out / "run"
    if not args.run and not (run / "model.safetensors").is_file():
        t0 = time.perf_counter()
        selfsup_cli("train", "audio-mask", f"out_dir={run}", f"data.path={Path(args.data) / 'train'}", *DEMO,
                    *args.set, f"train.checkpoint_every={args.every}", "train.keep_checkpoints=1000")
        print(f"trained {run} in {time.perf_counter() - t0:.0f} s")

    from selfsup.eval.baseline import random_objective
    from selfsup.eval.labeled import labeled_set
    from selfsup.rundir import open_run
    from selfsup.train.checkpoint import checkpoints

    cpu = torch.device("cpu")
    cfg, objective, tok = open_run(run, cpu)
    train_set, inputs = labeled_set(cfg, objective, tok, str(Path(args.data) / "train"))
    test_set, _ = labeled_set(cfg, objective, tok, str(Path(args.data) / "test"), train_set.classes)
    n = len(train_set.classes)
    speaker = None if cfg.audio.input == "waveform" else speech_speakers(Path(args.data) / "test", test_set)
    energy = torch.from_numpy(test_set.items.rows[:].astype("float32")).exp().mean(dim=1).log()  # (N, F) log power
    floor = energy.sort(dim=1).values[:, :20].mean(dim=1)  # (N,) the quietest 20 frames: the background's level
    steps = {0: None, **{int(c.name.split("-")[-1]): c / "model.safetensors" for c in checkpoints(run)}}
    if args.steps:
        steps = {s: steps[s] for s in map(int, args.steps.split(","))}
    figures = dict(run=str(run), settings=DEMO + args.set, train=len(train_set.labels), test=len(test_set.labels),
                   steps={})
    last = max(steps)
    for step, weights in steps.items():
        t0 = time.perf_counter()
        model = random_objective(cfg, tok, cpu) if weights is None else objective
        if weights is not None:
            load_model(model, str(weights))
        trunk = model.model.eval()
        train_f = layer_features(trunk, inputs, train_set.items)
        test_f = layer_features(trunk, inputs, test_set.items)
        final = f"L{cfg.model.depth}"
        linear = None if step in (0, last) else {final, "first+last"}  # every rep at the ends; the curve's two
        figures["steps"][step] = probe(train_f, test_f, train_set.labels, test_set.labels, n, linear)
        if speaker is not None:
            figures["steps"][step]["dominates"] = what_dominates(test_f[final], test_set.labels, speaker, floor)
            if weights is not None:
                figures["steps"][step]["dominates"]["units"] = background_units(model, test_set.items, energy)
        (out / "probes.json").write_text(json.dumps(figures, indent=1))
        f = figures["steps"][step][final]
        print(f"step {step:4d}: final mean kNN raw {f['raw']['knn']:.3f} centred {f['centred']['knn']:.3f} "
              f"whitened {f['whitened']['knn']:.3f}; linear raw {f['raw'].get('linear', 0):.3f} whitened "
              f"{f['whitened'].get('linear', 0):.3f}; anisotropy {f['raw']['anisotropy']:.2f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(tables(figures))


def tables(figures: dict) -> str:
    """Markdown: the curve (final layer's mean and first+last, each transform) and the layers at init and end."""
    steps = figures["steps"]
    keys = sorted(steps, key=int)
    final = max((r for r in steps[keys[0]] if r.startswith("L")), key=lambda r: int(r[1:]))
    lines = ["| step | " + " | ".join(f"{rep} {t} kNN / lin" for rep in (final, "first+last") for t in TRANSFORMS)
             + " | anisotropy raw |", "|---:" * 8 + "|"]
    for s in keys:
        cells = []
        for rep in (final, "first+last"):
            for t in TRANSFORMS:
                row = steps[s][rep][t]
                lin = steps[s][rep]["raw" if t == "centred" else t].get("linear")
                cells.append(f"{row['knn']:.3f} / " + ("–" if lin is None else f"{lin:.3f}"))
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {steps[s][final]['raw']['anisotropy']:.2f} |")
    for s in (keys[0], keys[-1]):
        lines += ["", f"step {s}:", "", "| representation | " + " | ".join(f"{t} kNN" for t in TRANSFORMS)
                  + " | raw linear | whitened linear | anisotropy raw / centred |", "|---" + "|---:" * 6 + "|"]
        for rep, row in steps[s].items():
            if rep == "dominates":
                continue
            lin = [f"{row[t]['linear']:.3f}" if "linear" in row[t] else "–" for t in ("raw", "whitened")]
            lines.append(f"| {rep} | " + " | ".join(f"{row[t]['knn']:.3f}" for t in TRANSFORMS)
                         + f" | {lin[0]} | {lin[1]} | "
                         f"{row['raw']['anisotropy']:.2f} / {row['centred']['anisotropy']:.2f} |")
    explained = [s for s in keys if "dominates" in steps[s]]
    if explained:
        lines += ["", f"what the {final} mean's variance is (test clips, raw):", "",
                  "| step | vowel share | speaker share | PC1 share | PC1: vowel / speaker share, |corr| with background "
                  "level |", "|---:|---:|---:|---:|---|"]
        for s in explained:
            d = steps[s]["dominates"]
            lines.append(f"| {s} | {d['vowel']:.2f} | {d['speaker']:.2f} | {d['pc1']:.2f} | {d['pc1_vowel']:.2f} / "
                         f"{d['pc1_speaker']:.2f}, {d['pc1_floor']:.2f} |")
            if "units" in d:
                u = d["units"]
                lines.append(f"|  | units: {u['background_tokens']:.0%} of the tokens are background, "
                             f"{u['background_units']} of {u['units']} units are (>90%), their units explain "
                             f"{u['level_explained']:.2f} of its level's variance | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
