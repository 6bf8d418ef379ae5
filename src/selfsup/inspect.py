"""`selfsup inspect PATH`: what selfsup sees at a path, before a long run starts or after one. A data path is read
cheaply by data/inspect.py; a run directory is read from the files it holds (config.yaml, tokenizer.json,
identity.json, history.jsonl, summary.json, the checkpoints' manifests); a Hugging Face model folder (or hf: id) from
its config.json, tokenizer.json and the safetensors headers, as model.init would take it; nothing is loaded onto a
device.

    title, rows = inspect_path("runs/a")      # rows: [(name, value)], value a short string
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from selfsup import config as config_mod
from selfsup.data.inspect import inspect_data
from selfsup.data.read.jsonl import json_line
from selfsup.data.read.tokenizer import EOS
from selfsup.hub import DATASETS, commit
from selfsup.models.hf.folder import Unsupported, described, eos_token, read_config, resolve, token_ids, weight_files
from selfsup.models.hf.init import FAMILIES


def inspect_path(path: str, kind: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    """A title and (name, value) rows for a run directory or a data path (read as `kind`, or guessed)."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / "config.yaml").is_file() and kind is None:
        return f"run directory {path}", inspect_run(p)
    hub_model = path.startswith("hf:") and not path.startswith("hf:" + DATASETS)
    if kind is None and (hub_model or p.is_dir() and (p / "config.json").is_file()):
        return f"Hugging Face model {path}", inspect_model(path)
    return f"data {path}", inspect_data(path, kind)


def inspect_model(source: str) -> list[tuple[str, str]]:
    """What model.init would make of a model folder or hf: id (an id's weights are not downloaded for this: they
    are counted when its cache holds them)."""
    folder = resolve(source, weights=False)
    hf = read_config(folder)
    kind, names = hf.get("model_type"), ", ".join(map(str, hf.get("architectures") or [])) or "not named"
    rows = [("architecture", f"{names} (model_type {kind})")]
    if source.startswith("hf:"):
        rows.append(("snapshot", f"commit {commit(folder)} in {folder.parent.parent}"))
    family = next((f for f in FAMILIES if kind in f.MODEL_TYPES), None)
    if family is None:
        known = ", ".join(t for f in FAMILIES for t in f.MODEL_TYPES)
        rows.append(("model.init", f"not supported: model_type {kind}; selfsup maps {known}"))
    else:
        try:
            v = family.config_values(hf)
            rows += [("model.init", f"maps onto objective {' or '.join(family.OBJECTIVES)} ({family.ARCHITECTURE})"),
                     ("model", f"dim {v['model.dim']}, depth {v['model.depth']}, heads {v['model.heads']}, kv heads "
                               f"{v['model.kv_heads']}, vocab {v['model.vocab_size']}, context up to "
                               f"{hf.get('max_position_embeddings', '-')}" if "model.vocab_size" in v else
                               ", ".join(f"{k}={x}" for k, x in v.items()))]  # an image model: the keys it sets
        except Unsupported as why:
            rows.append(("model.init", f"not supported: {why}"))
    image = family is not None and not family.TOKENIZER  # an image model has no tokenizer to read
    return rows + _model_weights(folder) + ([] if image else _model_tokenizer(folder, hf))


def _model_weights(folder: Path) -> list[tuple[str, str]]:
    """Parameters from the safetensors headers (no tensor is read); the files and their size."""
    try:
        files = weight_files(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return [("weights", "model.safetensors.index.json is not readable")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        return [("weights", f"{len(missing)} of {len(files)} safetensors file(s) not here ({missing[0]}); model.init "
                            "reads model.safetensors or the shards its index names")]
    size = sum(f.stat().st_size for f in files)
    counts = [_parameters(f) for f in files]
    return [("parameters", f"{sum(counts):,}"),
            ("weights", f"{len(files)} safetensors file(s), {size / 1e6:,.1f} MB")]


def _model_tokenizer(folder: Path, hf: dict) -> list[tuple[str, str]]:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return [("tokenizer", "no tokenizer.json (model.init needs the fast tokenizer)")]
    tok = _json(path)
    if not isinstance(tok, dict):
        return [("tokenizer", "tokenizer.json is not readable JSON")]
    old = eos_token(hf, tok)
    if old == EOS or EOS in token_ids(tok):
        eos = f"{EOS} (selfsup's own)"
    elif old is None:
        eos = f"none: eos_token_id {hf.get('eos_token_id')} is no token of it, and it has no {EOS} (model.init refuses)"
    else:
        eos = f"{old} (id {token_ids(tok)[old]}), renamed {EOS} in the copy model.init uses"
    return [("tokenizer", _tokenizer(path)), ("end of text", eos)]


def inspect_run(run: Path) -> list[tuple[str, str]]:
    cfg = config_mod.validate(config_mod.load_yaml(run / "config.yaml"))
    m = cfg.model
    rows = [("recipe", cfg.recipe or "-"), ("objective", cfg.objective),
            ("model", f"dim {m.dim}, depth {m.depth}, heads {m.heads}, context {m.context}")]
    weights = _weights(run)
    if weights is not None:
        rows.append(("parameters", f"{_parameters(weights):,} (in {weights.relative_to(run)})"))
    if (run / "tokenizer.json").is_file():
        rows.append(("tokenizer", _tokenizer(run / "tokenizer.json")))
    rows += [("data", f"{cfg.data.path}"), *_identity(run), *_checkpoint(run), *_history(run), *_summary(run)]
    return rows


def _weights(run: Path) -> Path | None:
    """The final weights, else the newest checkpoint's."""
    if (run / "model.safetensors").is_file():
        return run / "model.safetensors"
    found = sorted((run / "checkpoints").glob("*/model.safetensors"))
    return found[-1] if found else None


def _parameters(path: Path) -> int:
    """Elements of every tensor, from the safetensors header (no tensor is read)."""
    with path.open("rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def _json(path: Path):
    """The JSON value of a run's file; None when it cannot be read (said in its row, never a crash)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tokenizer(path: Path) -> str:
    tok = _json(path)
    if not isinstance(tok, dict):
        return "tokenizer.json is not readable JSON"
    special = [t["content"] for t in tok.get("added_tokens", []) if t.get("special")]
    vocab = len(tok.get("model", {}).get("vocab", {})) + sum(1 for t in tok.get("added_tokens", [])
                                                           if t["content"] not in tok.get("model", {}).get("vocab", {}))
    return f"vocab {vocab:,}; special tokens {' '.join(special) or 'none'}"


def _identity(run: Path) -> list[tuple[str, str]]:
    if not (run / "identity.json").is_file():
        return [("data fingerprint", "no identity.json yet")]
    ident = _json(run / "identity.json")
    if not isinstance(ident, dict):
        return [("data fingerprint", "identity.json is not readable JSON")]
    return [("data fingerprint", f"{ident.get('data', '-')} (of {ident.get('data_path', '-')})")]


def _checkpoint(run: Path) -> list[tuple[str, str]]:
    from selfsup.train import checkpoint  # torch: only for a run directory

    notes = []
    try:
        latest = checkpoint.latest(run, notes.append)
    except checkpoint.CheckpointError as e:
        return [("latest checkpoint", str(e))]
    if latest is None:
        return [("latest checkpoint", "none yet")]
    step = _json(latest / "state.json")["step"]  # verified: state.json is whole
    return [("steps done", f"{step:,} (latest checkpoint)"),
            ("latest checkpoint", f"{latest.relative_to(run)}, verified" + (f"; {notes[0]}" if notes else ""))]


def _history(run: Path) -> list[tuple[str, str]]:
    path = run / "history.jsonl"
    if not path.is_file():
        return []
    sessions = [line for line in path.read_text().splitlines() if line.strip()]
    last = json_line(sessions[-1]) if sessions else {}
    last = last if isinstance(last, dict) else {}
    rows = [("sessions", f"{len(sessions):,}; the last began {last.get('time', '-')} at step {last.get('step', '-')}")]
    first = json_line(sessions[0]) if sessions else None
    if isinstance(first, dict) and isinstance(first.get("started_from"), dict):
        rows.append(("started from", described(first["started_from"])))
    return rows


def _summary(run: Path) -> list[tuple[str, str]]:
    if not (run / "summary.json").is_file():
        return [("status", "no summary.json: training, or stopped before it ended")]
    s = _json(run / "summary.json")
    if not isinstance(s, dict):
        return [("status", "summary.json is not readable JSON")]
    rows = [("status", f"{s.get('status', '-')} after {s.get('steps', 0):,} steps")]
    if s.get("val_loss") is not None:
        rows.append(("validation loss", f"{s['val_loss']:.4f}"))
    return rows
