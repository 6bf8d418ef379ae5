"""Checkpoints: weights and optimizer tensors as safetensors, everything else as JSON. Nothing is pickled, so
loading a checkpoint never runs code from it.

    RUN_DIR/checkpoints/step-00000200/
        model.safetensors   the objective's state dict (heads, teachers and the backbone)
        optim.safetensors   optimizer tensors, keyed state/<param index>/<name>
        rng.safetensors     torch (and CUDA) generator states, of every process ('rank<r>/...' beyond rank 0), and
                            the masks' generator (batch_random.py)
        state.json          step, data position, optimizer hyper-parameters, Python/NumPy RNG, counters

With FSDP the model and optimizer are instead sharded/ (torch.distributed.checkpoint: each process writes its own
shards, which reload onto any number of processes), and the final model.safetensors is gathered from them.

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

from selfsup import batch_random
from selfsup.dist import barrier
from selfsup.train.parallel import is_sharded

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
    optim_json["names"] = _param_names(model, optimizer)  # lets a sharded run of another world size read it
    save_file(tensors, tmp / "optim.safetensors")
    _publish(tmp, final, root, keep, rng, dict(step=step, **extra), {"optimizer": optim_json})
    return final


def save_sharded(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict,
                 keep: int, rng: list[dict], procs) -> Path:
    """FSDP: every process writes its own shards of model and optimizer state with torch.distributed.checkpoint
    into sharded/ (which reloads onto any number of processes); rank 0 adds rng and state.json and publishes the
    folder by renaming it, once every shard is on disk."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = run_dir / "checkpoints"
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-sharded"  # one name every process agrees on
    if procs.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "sharded"))
    barrier()
    if procs.main:
        _publish(tmp, final, root, keep, rng, dict(step=step, sharded=True, **extra), {})
    barrier()
    return final


def save_final(path: Path, model: nn.Module, main: bool, sharded: bool) -> None:
    """The trained objective as one safetensors file, written by rank 0; FSDP's shards are gathered into it
    (consolidated, every process taking part)."""
    if not sharded:
        if main:
            save_model(model, str(path))  # stores a tensor shared by two modules once
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if main:
        save_file({k: v.contiguous().clone() for k, v in full.items()}, str(path))  # tied weights: one copy each


def _publish(tmp: Path, final: Path, root: Path, keep: int, rng: list[dict], state: dict, optim_json: dict) -> None:
    tensors = dict(rng[0]["torch"])
    for r, other in enumerate(rng[1:], 1):
        tensors.update({f"rank{r}/{k}": v for k, v in other["torch"].items()})
    save_file(tensors, tmp / "rng.safetensors")
    state = dict(state, python_rng=rng[0]["python"], numpy_rng=rng[0]["numpy"],
                 ranks_rng=[{"python": o["python"], "numpy": o["numpy"]} for o in rng[1:]], **optim_json)
    (tmp / "state.json").write_text(json.dumps(state))
    for f in tmp.rglob("*"):  # make the bytes durable before the rename publishes them
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / "checkpoints").glob(f"{PREFIX}*") if (p / "state.json").is_file())
    return done[-1] if done else None


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0) -> dict:
    """Restore model, optimizer and this process's RNG states (when the checkpoint has them: a run resumed with
    more processes has none for the new ones); return state.json (step, data position, counters)."""
    state = json.loads((path / "state.json").read_text())
    if state.get("sharded"):
        _load_sharded(path, model, optimizer)
    elif is_sharded(model):
        _load_whole_into_shards(path, state, model, optimizer)
    else:
        device = next(model.parameters()).device
        load_model(model, str(path / "model.safetensors"), device=str(device))
        optimizer.load_state_dict(_join_optimizer(load_file(path / "optim.safetensors"), state["optimizer"]))
    if not has_rng(path, rank):
        return state
    prefix = f"rank{rank}/" if rank else ""
    rng = {k[len(prefix):]: v for k, v in load_file(path / "rng.safetensors").items()
           if (k.startswith(prefix) if rank else "/" not in k)}
    torch.set_rng_state(rng["torch"])
    if "masks" in rng:  # checkpoints of older versions drew masks from the generator above
        batch_random.set_state(rng["masks"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        torch.cuda.set_rng_state_all(states[:torch.cuda.device_count()])  # fewer GPUs visible now: the first ones
    host = {"python": state["python_rng"], "numpy": state["numpy_rng"]} if rank == 0 else state["ranks_rng"][rank - 1]
    python, numpy = host["python"], host["numpy"]
    random.setstate(_tuples(python))
    np.random.set_state(tuple(numpy[:1]) + (np.array(numpy[1], dtype=np.uint32),) + tuple(numpy[2:]))
    return state


def _load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Shards written by save_sharded, read onto this run's sharding (any number of processes)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path / "sharded"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _load_whole_into_shards(path: Path, state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A one-process (or DDP) checkpoint read by an FSDP run: every process reads the whole state, keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = state["optimizer"].get("names")
    if names is None:
        raise ValueError(f"{path} predates sharded training (no parameter names): resume it with dist.strategy=ddp")
    flat = _join_optimizer(load_file(path / "optim.safetensors"), state["optimizer"])
    optim_state = {"state": {names[int(i)]: v for i, v in flat["state"].items()},
                   "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in flat["param_groups"]]}
    set_state_dict(model, optimizer, model_state_dict=load_file(path / "model.safetensors"),
                   optim_state_dict=optim_state, options=StateDictOptions(full_state_dict=True))


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter in the optimizer's numbering (its state-dict indices)."""
    name = {id(p): n for n, p in model.named_parameters()}
    return [name[id(p)] for g in optimizer.param_groups for p in g["params"]]


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
    rng = {"torch": torch.get_rng_state(), "masks": batch_random.get_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i:03d}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return rng


def _numpy_rng() -> list:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _tuples(x):
    """JSON turned Python's RNG state tuples into lists; turn them back."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x
