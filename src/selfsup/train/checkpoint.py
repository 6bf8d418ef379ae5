"""Checkpoints: weights and optimizer tensors as safetensors, everything else as JSON. Nothing is pickled, so
loading a checkpoint never runs code from it.

    RUN_DIR/checkpoints/step-00000200/
        model.safetensors   the objective's state dict (heads, teachers and the backbone)
        optim.safetensors   optimizer tensors, keyed state/<param index>/<name>
        rng.safetensors     torch (and CUDA) generator states, of every process ('rank<r>/...' beyond rank 0)
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
         keep: int, rng: list[dict] | None = None) -> Path:
    """rng: every process's rng_state(), rank order (default: this process's alone)."""
    rng = rng or [rng_state()]
    root = run_dir / "checkpoints"
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # stores a tensor shared by two modules once
    tensors, optim_json = _split_optimizer(optimizer.state_dict())
    save_file(tensors, tmp / "optim.safetensors")
    tensors = dict(rng[0]["torch"])
    for r, other in enumerate(rng[1:], 1):
        tensors.update({f"rank{r}/{k}": v for k, v in other["torch"].items()})
    save_file(tensors, tmp / "rng.safetensors")
    state = dict(step=step, optimizer=optim_json, python_rng=rng[0]["python"], numpy_rng=rng[0]["numpy"],
                 ranks_rng=[{"python": o["python"], "numpy": o["numpy"]} for o in rng[1:]], **extra)
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


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0) -> dict:
    """Restore model, optimizer and this process's RNG states (when the checkpoint has them: a run resumed with
    more processes has none for the new ones); return state.json (step, data position, counters)."""
    state = json.loads((path / "state.json").read_text())
    device = next(model.parameters()).device
    load_model(model, str(path / "model.safetensors"), device=str(device))
    optimizer.load_state_dict(_join_optimizer(load_file(path / "optim.safetensors"), state["optimizer"]))
    if not has_rng(path, rank):
        return state
    prefix = f"rank{rank}/" if rank else ""
    rng = {k[len(prefix):]: v for k, v in load_file(path / "rng.safetensors").items()
           if (k.startswith(prefix) if rank else "/" not in k)}
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("cuda")])
    host = {"python": state["python_rng"], "numpy": state["numpy_rng"]} if rank == 0 else state["ranks_rng"][rank - 1]
    python, numpy = host["python"], host["numpy"]
    random.setstate(_tuples(python))
    np.random.set_state(tuple(numpy[:1]) + (np.array(numpy[1], dtype=np.uint32),) + tuple(numpy[2:]))
    return state


def has_rng(path: Path, rank: int) -> bool:
    """Whether the checkpoint holds process `rank`'s RNG states."""
    if rank == 0:
        return True
    return rank <= len(json.loads((path / "state.json").read_text()).get("ranks_rng", []))


def rng_state() -> dict:
    """This process's generator states, as save() takes them."""
    return {"torch": _torch_rng(), "python": random.getstate(), "numpy": _numpy_rng()}


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
