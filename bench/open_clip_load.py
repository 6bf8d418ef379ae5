"""A `selfsup export --format open_clip` folder loaded by open_clip itself (issue 16, part 3); not part of make test.

open_clip imports torchvision, which this project's CPU torch cannot load, so open_clip runs in a separate
environment (a python with the registry's torch and open_clip_torch) and this script runs twice: here it trains a
small clip run with the shipped recipe (RGB digit pairs; or takes RUN), exports it with --format open_clip, and saves
a batch of normalised images, captions and selfsup's joint embeddings of both (.npy); then it runs itself under
--open-clip-python, which builds open_clip's CLIP from the exported model_cfg, loads the state dict strictly, and
also opens the folder as the model card says (create_model_and_transforms and get_tokenizer on "local-dir:"). It
prints the largest difference of each against selfsup's embeddings, and whether open_clip's tokenizer gives the
run's caption ids.

    .venv/bin/python bench/open_clip_load.py --open-clip-python /tmp/ocenv/bin/python [--run RUN]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "open_clip"  # git-ignored
CAPTIONS = ["a handwritten seven", "the digit 3, written by hand", "a bold one", "zero"]


def ours(run: Path | None, python: str) -> None:
    """Train (unless given), export, embed with selfsup; then the open_clip half in its own environment."""
    import torch

    from selfsup.data.read.captions import caption_arrays
    from selfsup.rundir import open_run

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import selfsup_cli

    if run is None:
        run = OUT / "run"
        subprocess.run(["rm", "-rf", str(run)], check=True)
        selfsup_cli("train", "clip", f"out_dir={run}", "model.dim=64", "model.depth=2", "model.heads=2",
                    "text.dim=64", "text.depth=2", "text.heads=2", "image.size=16", "train.max_steps=30",
                    "train.batch_size=32", "sched.warmup_steps=5", "train.eval_every=30")
    folder = OUT / "export"
    selfsup_cli("export", str(run), "--format", "open_clip", "--out", str(folder), "--force")
    cfg, objective, tok = open_run(run, torch.device("cpu"))
    objective.eval()
    pixels = torch.randn(5, 3, cfg.image.size, cfg.image.size, generator=torch.Generator().manual_seed(0))
    ids, mask = caption_arrays(tok, CAPTIONS, cfg.text.context)  # (N, L)
    with torch.no_grad():
        media = objective.project_media(objective.model(pixels))  # (5, E): pixels normalised already, no view
        text = objective.embed_text(torch.from_numpy(ids).long(), torch.from_numpy(mask))  # (N, E)
    for name, array in (("pixels", pixels.numpy()), ("ids", ids), ("media", media.numpy()), ("text", text.numpy())):
        np.save(OUT / f"{name}.npy", array)
    subprocess.run([python, __file__, "--theirs", str(folder)], check=True)


def theirs(folder: Path) -> None:
    """In open_clip's environment: its CLIP from the config with a strict load, and the model card's way."""
    import open_clip
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import load_file

    model_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    built = CLIP(**model_cfg)
    built.load_state_dict(load_file(str(folder / "open_clip_model.safetensors")), strict=True)
    card, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    pixels, ids = (torch.from_numpy(np.load(OUT / f"{n}.npy")) for n in ("pixels", "ids"))
    media, text = (torch.from_numpy(np.load(OUT / f"{n}.npy")) for n in ("media", "text"))
    print(f"open_clip {open_clip.__version__}, torch {torch.__version__}")
    try:  # open_clip's HFTokenizer is transformers' AutoTokenizer, which open_clip does not require
        tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(CAPTIONS)  # (N, context_length)
        print(f"open_clip's tokenizer gives the run's caption ids: {torch.equal(tokens, ids.long())}")
    except ImportError as e:
        print(f"open_clip's tokenizer not tried ({e}); the captions are the run's ids")
    for how, model in (("CLIP(**model_cfg) + load_state_dict(strict=True)", built),
                       ("create_model_and_transforms('local-dir:')", card)):
        model.eval()
        with torch.no_grad():
            image = model.encode_image(pixels, normalize=True)  # (5, E)
            caption = model.encode_text(ids.long(), normalize=True)  # (N, E)
        print(f"{how}: max |image - selfsup| {(image - media).abs().max().item():.2e}, "
              f"max |text - selfsup| {(caption - text).abs().max().item():.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--open-clip-python", help="a python whose environment imports open_clip")
    p.add_argument("--run", type=Path, help="a clip run with RGB images (default: one trained here)")
    p.add_argument("--theirs", type=Path, help=argparse.SUPPRESS)  # the half that runs under open_clip's python
    args = p.parse_args()
    if args.theirs is not None:
        theirs(args.theirs)
    elif args.open_clip_python is None:
        p.error("--open-clip-python: expected a python that imports open_clip")
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        ours(args.run, args.open_clip_python)


if __name__ == "__main__":
    main()
