"""Checkpoints: weights and optimizer tensors as safetensors, everything else as JSON. Nothing is pickled, so
loading a checkpoint never runs code from it.

    RUN_DIR/checkpoints/step-00000200/
        model.safetensors   the objective's state dict (heads, teachers and the backbone)
        optim.safetensors   optimizer tensors, keyed state/<param index>/<name>
        rng.safetensors     torch (and CUDA) generator states, of every process ('rank<r>/...' beyond rank 0), and
                            the masks' generator (batch_random.py)
        state.json          step, data position, optimizer hyper-parameters, Python/NumPy RNG, counters
        manifest.json       the size and sha256 of every other file, written last

With FSDP the model and optimizer are instead sharded/ (torch.distributed.checkpoint: each process writes its own
shards, which reload onto any number of processes), and the final model.safetensors is gathered from them.

A checkpoint is written into a hidden temporary folder and renamed into place, so a run killed while saving
leaves the previous checkpoint intact (the next start removes the temporary folder); only the newest `keep` are
kept. A write that fails (disk full, quota, I/O error) removes its temporary folder and raises CheckpointError,
on every process at once.

Resuming takes the newest checkpoint whose files match their manifest (`latest`): a damaged one (a file missing,
truncated or changed, state.json unreadable) is named with the reason and the one before it is used. Checkpoints
of older versions have no manifest and are taken as they are.

Only a healthy state is checkpointed (the trainer's rule, `finite` here): the last step's loss and gradient were
finite, and so is every weight, buffer and optimizer tensor. A checkpoint that falls due inside a streak of
skipped (non-finite) steps waits for the first finite step after it, so rotation never deletes the last good
checkpoint of a run that is diverging, and a run stopped for diverging can resume from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from selfsup import batch_random
from selfsup.dist import gather_objects
from selfsup.train.parallel import is_sharded

PREFIX = "step-"
MANIFEST = "manifest.json"
_PUBLISHED = re.compile(r"step-\d{8}")
_TEMPORARY = re.compile(r"\.tmp-step-\d{8}-(\d+|sharded)")  # as save() and save_sharded() name them
# a write that failed: the OS's error, safetensors' (its I/O errors are not OSError), torch.distributed.checkpoint's
_WRITE_ERRORS = (OSError, SafetensorError, CheckpointException)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, or none intact to read; one line, which the caller raises again as its
    own one-line error (TrainingError, RunDirError)."""


def save(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict,
         keep: int, rng: list[dict] | None = None, main: bool = True) -> Path:
    """Rank 0 (`main`) writes; every process calls it and returns once the checkpoint is on disk, or raises
    CheckpointError with the others. rng: every process's rng_state(), rank order (default: this process's alone)."""
    rng = rng or [rng_state()]
    root = run_dir / "checkpoints"
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"

    def write():
        _fresh(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # stores a tensor shared by two modules once
        tensors, optim_json = _split_optimizer(optimizer.state_dict())
        optim_json["names"] = _param_names(model, optimizer)  # lets a sharded run of another world size read it
        save_file(tensors, tmp / "optim.safetensors")
        _publish(tmp, final, keep, rng, dict(step=step, **extra), {"optimizer": optim_json})

    _together(write if main else None, tmp, final, model, optimizer, main)
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
    main = procs.main
    _together((lambda: _fresh(tmp)) if main else None, tmp, final, model, optimizer, main)
    model_state, optim_state = get_state_dict(model, optimizer)
    _together(lambda: dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "sharded")),
              tmp, final, model, optimizer, main)
    publish = lambda: _publish(tmp, final, keep, rng, dict(step=step, sharded=True, **extra), {})  # noqa: E731
    _together(publish if main else None, tmp, final, model, optimizer, main)
    return final


def save_final(path: Path, model: nn.Module, main: bool, sharded: bool) -> None:
    """The trained objective as one safetensors file, written by rank 0; FSDP's shards are gathered into it
    (consolidated, every process taking part). Written beside and renamed into place: a run killed meanwhile leaves
    no half-written model for eval or export to open."""
    tmp = path.with_name(f".{path.name}.tmp")
    if not sharded:
        if main:
            save_model(model, str(tmp))  # stores a tensor shared by two modules once
            os.replace(tmp, path)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if main:
        save_file({k: v.contiguous().clone() for k, v in full.items()}, str(tmp))  # tied weights: one copy each
        os.replace(tmp, path)


def _fresh(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)


def _publish(tmp: Path, final: Path, keep: int, rng: list[dict], state: dict, optim_json: dict) -> None:
    tensors = dict(rng[0]["torch"])
    for r, other in enumerate(rng[1:], 1):
        tensors.update({f"rank{r}/{k}": v for k, v in other["torch"].items()})
    save_file(tensors, tmp / "rng.safetensors")
    state = dict(state, python_rng=rng[0]["python"], numpy_rng=rng[0]["numpy"], checksums=MANIFEST,
                 ranks_rng=[{"python": o["python"], "numpy": o["numpy"]} for o in rng[1:]], **optim_json)
    (tmp / "state.json").write_text(json.dumps(state))
    names = [f.relative_to(tmp).as_posix() for f in sorted(tmp.rglob("*")) if f.is_file()]
    (tmp / MANIFEST).write_text(json.dumps({"files": _describe(tmp, names)}))
    for name in (*names, MANIFEST):  # make the bytes durable before the rename publishes them
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoints(final.parent.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _together(write, tmp: Path, final: Path, model: nn.Module, optimizer: torch.optim.Optimizer, main: bool) -> None:
    """Run `write` where this process has one (None: it only takes part), then learn from every process whether
    theirs failed; this is also the barrier after it. On a failure rank 0 removes the temporary folder and every
    process raises the same CheckpointError, so none waits for one that has given up."""
    error = None
    if write is not None:
        try:
            write()
        except _WRITE_ERRORS as e:
            error = str(next(iter(e.failures.values()))[0]) if isinstance(e, CheckpointException) else str(e)
    failed = [e for e in gather_objects(error) if e]
    if failed:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_write_failed(final, failed[0], model, optimizer))


def _write_failed(final: Path, reason: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """What failed, about how much room a checkpoint takes, and what is left to resume from."""
    run_dir = final.parent.parent
    before = checkpoints(run_dir)
    if before:
        size = sum(f.stat().st_size for f in before[-1].rglob("*") if f.is_file())
        room, left = (f"{_megabytes(size)} free (the size of the previous checkpoint)",
                      f"the previous checkpoint {before[-1]} is intact: make room, then resume from it with "
                      f"`selfsup train {run_dir}`")
    else:
        tensors = [*model.state_dict().values(), *(v for s in optimizer.state.values() for v in s.values())]
        size = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))  # DTensor: whole
        room, left = (f"{_megabytes(size)} free (the model and optimizer state)",
                      f"there is no earlier checkpoint: make room, then start again with `selfsup train {run_dir}`")
    return f"could not write checkpoint {final} ({reason}); a checkpoint needs about {room}; {left}"


def _megabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _describe(folder: Path, names: list[str]) -> dict:
    """Size and sha256 of each file `names` in `folder`, hashed in threads (hashlib lets go of the GIL)."""
    def sha256(name: str) -> str:
        with open(folder / name, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(sha256, names))
    return {n: {"bytes": (folder / n).stat().st_size, "sha256": d} for n, d in zip(names, digests)}


def checkpoints(run_dir: Path) -> list[Path]:
    """The published checkpoint folders of a run, oldest first, intact or not (`verify` tells)."""
    root = run_dir / "checkpoints"
    return sorted(p for p in root.glob(f"{PREFIX}*") if _PUBLISHED.fullmatch(p.name) and p.is_dir())


def verify(path: Path) -> str | None:
    """None when the checkpoint folder `path` is whole; else what is wrong with it, in a few words. Checkpoints
    of older versions (state.json without `checksums`) have no manifest: a readable state.json is all they show."""
    try:
        state = _json(path / "state.json")
        if not (path / MANIFEST).is_file():
            return f"{MANIFEST} is missing" if state.get("checksums") else None
        listed = {n: (int(f["bytes"]), f["sha256"]) for n, f in _json(path / MANIFEST)["files"].items()}
        for name, (size, _) in listed.items():
            if not (path / name).is_file():
                return f"{name} is missing"
            if (path / name).stat().st_size != size:
                return f"{name} has {(path / name).stat().st_size:,} bytes, {size:,} were written"
        found = _describe(path, list(listed))
    except _Unreadable as e:
        return str(e)
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"{MANIFEST} does not list files as a checkpoint writes them"
    except OSError as e:
        return f"unreadable: {e}"
    changed = [n for n, (_, digest) in listed.items() if found[n]["sha256"] != digest]
    return f"{changed[0]} is not what was written: its sha256 differs" if changed else None


class _Unreadable(Exception):
    """A checkpoint's JSON file that is missing or not a JSON object; the message says which."""


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise _Unreadable(f"{path.name} is missing") from None
    except ValueError:  # not UTF-8 or not JSON
        raise _Unreadable(f"{path.name} is not JSON") from None
    if not isinstance(value, dict):
        raise _Unreadable(f"{path.name} is not a JSON object")
    return value


def latest(run_dir: Path, say=None) -> Path | None:
    """The newest checkpoint that verifies (None: no checkpoint yet). The newer ones that do not are named with
    why, and the one used instead, in one line through `say`; CheckpointError when none of them verifies."""
    bad = []
    for path in reversed(checkpoints(run_dir)):
        why = verify(path)
        if why is None:
            if bad and say is not None:
                say(f"{'; '.join(bad)}: using {path.name}, the newest intact checkpoint")
            return path
        bad.append(f"checkpoint {path} is damaged ({why})")
    if bad:
        raise CheckpointError(f"no intact checkpoint in {run_dir / 'checkpoints'}: {'; '.join(bad)}. Move that folder "
                              "aside to train the run again from step 0, or put an intact checkpoint back into it")
    return None


def agreed_latest(run_dir: Path, main: bool, say=None) -> Path | None:
    """`latest`, chosen by rank 0 (one reading of the files, one choice) and given to every process; the same
    CheckpointError on every process when none is intact."""
    choice = None
    if main:
        try:
            choice = latest(run_dir, say)
        except CheckpointError as e:
            choice = e
    choice = gather_objects(choice)[0]
    if isinstance(choice, CheckpointError):
        raise choice
    return choice


def remove_unfinished(run_dir: Path) -> None:
    """Remove what saves killed half-way left (rank 0, before training): only the temporary folders save() and
    save_sharded() make inside RUN/checkpoints."""
    for path in (run_dir / "checkpoints").glob(".tmp-*"):
        if _TEMPORARY.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def finite(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether every weight, buffer and optimizer tensor of this process (its shards, under FSDP) is finite: the
    state a checkpoint may be written from."""
    tensors = [*model.state_dict().values(), *(v for s in optimizer.state.values() for v in s.values())]
    local = (t.to_local() if hasattr(t, "to_local") else t for t in tensors if isinstance(t, torch.Tensor))
    return all(bool(torch.isfinite(t).all()) for t in local)


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
