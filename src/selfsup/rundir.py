"""Opening a finished (or checkpointed) run directory: its config, tokenizer and trained objective; and refusing an
output file that would write over what selfsup reads there."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_model
from tokenizers import Tokenizer
from torch import nn

from selfsup import config as config_mod, quantize
from selfsup.config import RunConfig
from selfsup.data.read import tokenizer as toks
from selfsup.objectives.build import build_objective
from selfsup.train import checkpoint


class RunDirError(ValueError):
    """A run directory that cannot be used; the message is one line meant for the user."""


# what selfsup reads in a run directory or an export (resuming, eval, embed, export, report, compare): an output
# file written over one of them breaks the run
READ = ("config.yaml", "model.safetensors", "tokenizer.json", quantize.MARKER, "checkpoints", "metrics.jsonl",
        "summary.json", "loggers.json", "metrics.csv")


def refuse_run_file(path: str | Path, option: str) -> None:
    """An output file `path` (`option`: --out, --jsonl) that would overwrite what selfsup reads in a run directory
    (config.yaml beside model.safetensors or checkpoints/) is refused in one line; links are followed."""
    target = Path(path).expanduser().resolve()
    for folder in target.parents:
        run = (folder / "config.yaml").is_file() and ((folder / "model.safetensors").is_file()
                                                     or (folder / "checkpoints").is_dir())
        top = target.relative_to(folder).parts[0]
        if run and top in READ:
            how = "over" if target == folder / top else "into"
            raise RunDirError(f"{option} '{path}' would write {how} {folder / top}, which selfsup reads in the run "
                              f"directory '{folder}'; expected a file elsewhere, or another name there")


def open_run(run_dir: str | Path, device: torch.device) -> tuple[RunConfig, nn.Module, Tokenizer | None]:
    """The run's objective (backbone and heads) in eval mode with its final weights, or its latest checkpoint's;
    the tokenizer for text and media-text runs, None otherwise."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"'{run_dir}' is not a run directory: expected config.yaml inside "
                          f"(made by `selfsup train ... out_dir={run_dir}`)")
    cfg = config_mod.validate(config_mod.load_yaml(run_dir / "config.yaml"))
    has_text = cfg.modality == "text" or cfg.pairs
    tok = toks.load(run_dir / "tokenizer.json") if has_text else None
    objective = build_objective(cfg, tok)
    weights = run_dir / "model.safetensors"
    try:  # an export with --quantize: inference on the CPU
        mode = quantize.mode_of(run_dir)
        if mode is not None:
            return cfg, quantize.load_quantized(objective, weights, mode).eval(), tok
    except ValueError as e:  # quantize's one-line messages: a marker or weights that are not what it wrote
        raise RunDirError(str(e)) from None
    if not weights.is_file():
        try:  # the newest checkpoint that verifies; a damaged newer one is named on stderr
            last = checkpoint.latest(run_dir, say=lambda line: print(line, file=sys.stderr))
        except checkpoint.CheckpointError as e:
            raise RunDirError(str(e)) from None
        if last is None:
            raise RunDirError(f"'{run_dir}' has neither model.safetensors nor a checkpoint yet")
        weights = last / "model.safetensors"
    load_model(objective, str(weights))
    return cfg, objective.to(device).eval(), tok
