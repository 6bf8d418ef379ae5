"""`selfsup embed`: a run's pooled features of texts, images, audio or video, read as training reads them, saved as
an (N, D) float32 .npy (row i for the i-th item read) and, for texts, optionally a .jsonl of text and embedding."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfsup.config import BUILTIN_CORPUS, ConfigError
from selfsup.data.errors import DataError
from selfsup.data.labeled import Clips
from selfsup.data.read.text import read_documents, source_files
from selfsup.eval.joint import JointMedia
from selfsup.probe.inputs import encode, run_inputs
from selfsup.rundir import open_run, refuse_run_file


@dataclass
class Embedded:
    items: int
    what: str  # 'texts', 'images', 'audio clips', 'video clips'
    shape: tuple[int, ...]
    out: Path  # the .npy written (np.save adds the suffix a name lacks)
    jsonl: Path | None  # the .jsonl written, if any
    protocol: str
    skipped: dict


def embed(run_dir: Path, input: str, out: Path, jsonl: Path | None, joint: bool, batch_size: int,
          device: torch.device, progress=None) -> Embedded:
    """Embed `input` with the run's trunk (`joint`: its unit vectors in the joint media-text space) and write `out`
    (and `jsonl` for a text run); `progress` wraps the iterable of batches."""
    out = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")  # the name np.save writes
    for path, option in ((out, "--out"), (jsonl, "--jsonl")):
        if path is not None:
            _check_output(path, option, input)
    cfg, objective, tok = open_run(run_dir, device)
    if joint and not cfg.pairs:
        raise ConfigError(f"--joint needs a joint media-text space (clip or siglip runs); '{run_dir}' "
                          f"trained '{cfg.objective}'")
    trunk = JointMedia(objective) if joint else objective.model
    if cfg.modality == "image":
        from selfsup.data.cache.images import prepare_images

        im = cfg.image
        data = prepare_images(input, im.size, im.channels, 0.0, cfg.data.cache_dir, log=lambda s: None,
                              image_field=cfg.data.image_field, allow_outside=cfg.data.allow_outside)
        items, skipped, what = data.train, data.meta["skipped"], "images"
    elif cfg.modality in ("audio", "video"):
        from selfsup.data.cache.media import prepare_media, settings

        data = prepare_media(input, cfg.modality, settings(cfg.modality, cfg), 0.0, cfg.data.cache_dir,
                             log=lambda s: None, allow_outside=cfg.data.allow_outside)
        items = Clips(data.train.rows, data.train.lengths)
        skipped, what = data.meta["skipped"], f"{cfg.modality} clips"
    else:
        counts: Counter = Counter()
        d = cfg.data  # read as the run read its corpus: the same suffixes, field and document mode
        items = list(read_documents(source_files(input, d.extensions), counts, d.max_doc_chars,
                                    builtin=input == BUILTIN_CORPUS, field=d.text_field, document=d.document))
        if not items:
            raise DataError(f"'{input}' holds no usable texts (skipped: {dict(counts) or 'none'})")
        skipped, what = dict(sorted(counts.items())), "texts"
    inputs = run_inputs(cfg, objective, tok)  # text runs: trunk is objective.model (--joint is for media)
    emb = encode(trunk, inputs, items, batch_size, device, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb.numpy())
    if jsonl is not None and cfg.modality == "text":
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(jsonl, "w", encoding="utf-8") as f:
            for text, row in zip(items, emb.tolist()):
                f.write(json.dumps({"text": text, "embedding": row}) + "\n")
    else:
        jsonl = None
    protocol = inputs.describe(objective.model) + ("; projected into the joint space, L2-normalised" if joint else "")
    return Embedded(len(items), what, tuple(emb.shape), out, jsonl, protocol, skipped)


def _check_output(path: Path, option: str, input: str) -> None:
    """Neither a file selfsup reads in a run directory nor the input (read whole, then lost), in one line, before
    anything is read."""
    refuse_run_file(path, option)
    if Path(input).expanduser().exists() and path.expanduser().resolve() == Path(input).expanduser().resolve():
        raise DataError(f"{option} '{path}' is the input '{input}', which it would overwrite; expected a file "
                        "elsewhere")
