"""Opening a finished (or checkpointed) run directory: its config, tokenizer and trained objective."""

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
    mode = quantize.mode_of(run_dir)
    if mode is not None:  # an export with --quantize: inference on the CPU
        return cfg, quantize.load_quantized(objective, weights, mode).eval(), tok
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
