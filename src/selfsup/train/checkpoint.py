"""Checkpoints: weights and optimizer tensors as safetensors, everything else as JSON. Nothing is pickled, so
loading a checkpoint never runs code from it.

    RUN_DIR/checkpoints/step-00000200/
        model.safetensors   the objective's state dict (heads, teachers and the backbone)
        optim.safetensors   optimizer tensors, keyed state/<param index>/<name>
        rng.safetensors     torch (and CUDA) generator states
        state.json          step, data position, optimizer hyper-parameters, Python/NumPy RNG, counters

A checkpoint is written into a hidden temporary folder and renamed into place, so a run killed while saving
leaves the previous checkpoint intact; only the newest `keep` are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

PREFIX = "step-"


def save(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict,
         keep: int) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # stores a tensor shared by two modules once
    tensors, optim_json = _split_optimizer(optimizer.state_dict())
    save_file(tensors, tmp / "optim.safetensors")
    save_file(_torch_rng(), tmp / "rng.safetensors")
    state = dict(step=step, optimizer=optim_json, python_rng=random.getstate(), numpy_rng=_numpy_rng(), **extra)
    (tmp / "state.json").write_text(json.dumps(state))
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / "checkpoints").glob(f"{PREFIX}*") if (p / "state.json").is_file())
    return done[-1] if done else None


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG states; return state.json (step, data position, counters)."""
    state = json.loads((path / "state.json").read_text())
    device = next(model.parameters()).device
    load_model(model, str(path / "model.safetensors"), device=str(device))
    optimizer.load_state_dict(_join_optimizer(load_file(path / "optim.safetensors"), state["optimizer"]))
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("cuda")])
    random.setstate(_tuples(state["python_rng"]))
    np.random.set_state(tuple(state["numpy_rng"][:1]) + (np.array(state["numpy_rng"][1], dtype=np.uint32),)
                        + tuple(state["numpy_rng"][2:]))
    return state


def _split_optimizer(sd: dict) -> tuple[dict, dict]:
    """Optimizer state dict -> (flat tensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{idx}/{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}/{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict, rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, idx, name = key.split("/", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in rest["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _torch_rng() -> dict:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i:03d}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return rng


def _numpy_rng() -> list:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _tuples(x):
    """JSON turned Python's RNG state tuples into lists; turn them back."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x
