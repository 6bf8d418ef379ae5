"""A run directory's identity: the config it trains, the data it reads and the tokenizer its embedding rows index,
fixed when the run starts. Resuming (`selfsup train RUN_DIR`, or the same command again) trains the same run:

  - keys of how a run executes or is watched may change on resume (config.MAY_CHANGE_ON_RESUME: steps, cadences, processes,
    device); any other changed key is refused in one line that lists the differences, unless the user names it
    with `--allow-changes KEY,...`;
  - data.path is compared by what it holds (its fingerprint: the data cache's key, which covers every file's bytes
    and the settings it is read with), so a moved corpus resumes and a changed one is refused, unless the user
    allows data.path; a text run then reads the new data with its own tokenizer, never a new one;
  - the tokenizer the data gives must be the one in RUN/tokenizer.json.

Rank 0 checks all this before it writes anything into the directory. What a run holds, beside config.yaml:

    RUN/identity.json   {"data": fingerprint, "data_path": ..., "tokenizer": sha256 of the tokenizer or null}
    RUN/history.jsonl   one line per session: when, from which step, the command, what changed and what was allowed
                        (and the first: which model.init weights it started from)
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer

from selfsup import config as config_mod
from selfsup.config import MAY_CHANGE_ON_RESUME as MAY_CHANGE, ConfigError, RunConfig
from selfsup.data.read import tokenizer as toks
from selfsup.data.read.jsonl import json_line
from selfsup.files import replace_text

SHOWN = 6  # differences listed in a refusal; the rest are counted


def allowed_keys(keys: list[str]) -> set[str]:
    """--allow-changes values (repeated, or comma-separated) as config keys; an unknown key is one line."""
    allowed = {k.strip() for text in keys for k in text.split(",") if k.strip()}
    known = set(config_mod.all_keys())
    for key in sorted(allowed):
        if key not in known:
            raise ConfigError(f"--allow-changes {key}: not a config key; expected keys such as model.dim or "
                              "data.path (see `selfsup train --help`)")
    return allowed


def resume_config(cfg: RunConfig, run_dir: Path, allowed: set[str]) -> tuple[RunConfig, dict]:
    """`cfg` as it resumes the run in `run_dir` (the measured normalisation and the settings fitted to its length
    that the run started with; a text run whose data change is allowed keeps its tokenizer), and what changed:
    {key: [was, now]}. A change that may not happen is one ConfigError listing every difference. A new run:
    (cfg, {})."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return cfg, {}
    saved = config_mod.validate(config_mod.load_yaml(saved_file))
    norm = saved.normalisation
    if norm.mean is not None and norm.std is not None:  # measured on the data when the run started
        cfg = cfg.with_measured(norm.mean, norm.std)
    cfg = cfg.fitted_as(saved)  # fitted to the run's length when it started, whatever train.max_steps is now
    if "data.path" in allowed and cfg.modality == "text" and not cfg.data.tokenizer:
        tokenizer = str((run_dir / "tokenizer.json").resolve())
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"tokenizer": tokenizer})})
        allowed = allowed | {"data.tokenizer"}
    was, now = _flat(saved.model_dump(mode="json")), _flat(cfg.model_dump(mode="json"))
    changes = {k: [was.get(k), now.get(k)] for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)}
    refused = [k for k in changes if k not in MAY_CHANGE and k not in allowed and k != "data.path"]
    if refused:
        shown = ", ".join(f"{k} {_show(changes[k][0])} → {_show(changes[k][1])}" for k in refused[:SHOWN])
        more = f" and {len(refused) - SHOWN} more" if len(refused) > SHOWN else ""
        raise ConfigError(f"out_dir '{run_dir}' holds a run with other settings: {shown}{more}; resume it with its "
                          f"own settings, train into another out_dir, or pass --allow-changes {','.join(refused)} "
                          f"(recorded in {run_dir / 'history.jsonl'})")
    return cfg, changes


def admit(cfg: RunConfig, fingerprint: str, tokenizer: Tokenizer | None, run_dir: Path, allowed: set[str],
          changes: dict) -> None:
    """Check that the data and tokenizer are the run's own (a resumed run), then write what identifies a new run
    (config.yaml first: it marks the directory as a run; then tokenizer.json and identity.json) or what an allowed
    change updates. Rank 0 calls it once its data is prepared, before anything else is written."""
    ident_file, tok_file = run_dir / "identity.json", run_dir / "tokenizer.json"
    tok_hash = hashlib.sha256(tokenizer.to_str().encode()).hexdigest() if tokenizer is not None else None
    ident = _read_json(ident_file)
    if ident is not None and ident.get("data") != fingerprint and "data.path" not in allowed:
        was = ident.get("data_path")
        what = (f"the data under data.path '{was}' changed since" if was == cfg.data.path else
                f"data.path '{cfg.data.path}' holds other data than '{was}', which")
        raise ConfigError(f"out_dir '{run_dir}': {what} this run trained on it (fingerprint {ident.get('data')} → "
                          f"{fingerprint}); point data.path at the run's data, train into another out_dir, or pass "
                          "--allow-changes data.path")
    if tokenizer is not None and tok_file.is_file():
        kept = hashlib.sha256(toks.load(tok_file).to_str().encode()).hexdigest()
        if kept != tok_hash:
            raise ConfigError(f"out_dir '{run_dir}': the tokenizer of this data differs from the run's "
                              f"{tok_file}, whose ids its embedding rows belong to; resume with the run's own data, "
                              f"or pass --allow-changes data.tokenizer data.tokenizer={tok_file}")
    if ident is not None and ident.get("data") != fingerprint:
        changes["data"] = [ident.get("data"), fingerprint]
    replace_text(run_dir / "config.yaml", config_mod.dump(cfg))  # a resume killed here keeps the old config whole
    if tokenizer is not None and not tok_file.is_file():
        replace_text(tok_file, tokenizer.to_str(pretty=True))
    replace_text(ident_file, json.dumps({"data": fingerprint, "data_path": cfg.data.path, "tokenizer": tok_hash},
                                        indent=1))


def record(run_dir: Path, step: int, changes: dict, allowed: set[str], started_from: dict | None = None) -> None:
    """A line of RUN/history.jsonl for this session; started_from: the model.init weights its first step started
    from (models/hf/folder.py provenance: path, commit of an hf: id, sha256)."""
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step, "command": shlex.join(["selfsup", *sys.argv[1:]]),
            "changed": changes, "allowed": sorted(allowed)}
    if started_from is not None:
        line["started_from"] = started_from
    with open(run_dir / "history.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def started_from(run_dir: Path) -> dict | None:
    """What the run's first session started from (model.init), as history.jsonl records it; None: nothing."""
    try:
        first = (run_dir / "history.jsonl").read_text().splitlines()[:1]
    except OSError:
        return None
    line = json_line(first[0]) if first else None
    return line.get("started_from") if isinstance(line, dict) else None


def pinned(run_dir: Path, source: str | None) -> str | None:
    """The commit of the hf: id `source` the run in `run_dir` started from; None for a new run or another source."""
    began = started_from(run_dir) or {}
    return began.get("commit") if source and began.get("path") == source else None


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None

