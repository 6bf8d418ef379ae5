"""What a Hugging Face model folder holds, read for `model.init` and `selfsup inspect`: config.json, the safetensors
weights (one file or the shards an index names), the fast tokenizer, and a fingerprint of the weights.

Every failure is one line naming the folder, what was wrong and what was expected (ConfigError).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from selfsup.config import ConfigError
from selfsup.data.read.tokenizer import EOS

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch


class Unsupported(ValueError):
    """What our modules cannot hold of a model, as a phrase ("attention_bias true (our trunk has no biases)")."""


class Tensors(dict):
    """A model's tensors by name; asking for one it does not have is one line naming it."""

    def __init__(self, tensors: dict, source: str, architecture: str):
        super().__init__(tensors)
        self.source, self.architecture = source, architecture

    def __missing__(self, key: str):
        raise ConfigError(f"model.init '{self.source}': its weights have no '{key}'; expected a {self.architecture}'s "
                          "tensors")


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        hf = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.init '{folder}': no readable config.json ({type(e).__name__}); expected a local "
                          "Hugging Face model folder") from None
    return hf if isinstance(hf, dict) else {}


def image_normalisation(source: str, folder: Path) -> dict[str, list[float]]:
    """image.mean and image.std from the folder's preprocessor_config.json: the normalisation its image tower was
    trained with (no such file: they are measured on the data, as a new run's)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        pre = json.loads(path.read_text())
        return {"image.mean": [float(v) for v in pre["image_mean"]], "image.std": [float(v) for v in pre["image_std"]]}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"model.init '{source}': its preprocessor_config.json has no readable image_mean and "
                          f"image_std ({type(e).__name__}); expected the normalisation its images were trained "
                          "with, lists of numbers") from None


def weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    return [folder / "model.safetensors"]


def read_weights(source: str, folder: Path, architecture: str) -> Tensors:
    """Every tensor of the folder's safetensors files (memory-mapped by safetensors until copied)."""
    from safetensors.torch import load_file

    files = weight_files(folder)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"model.init '{source}' has no {missing[0]}; expected model.safetensors or the shards "
                          "model.safetensors.index.json names")
    theirs = {}
    for f in files:
        try:
            theirs |= load_file(str(f))
        except Exception as e:  # safetensors raises its own error types on a truncated or foreign file
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"model.init '{source}': {f} could not be read ({why}); expected a safetensors "
                              "file") from None
    return Tensors(theirs, source, architecture)


def fingerprint(files: list[Path]) -> str:
    """sha256 over the weight files' bytes, in order: which weights a run started from."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def pad_rows(value: torch.Tensor, rows: int) -> torch.Tensor:
    """(V, ...) -> (rows, ...) with zero rows after V: a vocabulary padded to x64 (padded rows are never targets)."""
    import torch

    if value.shape[0] >= rows:
        return value
    return torch.cat([value, value.new_zeros(rows - value.shape[0], *value.shape[1:])])


def eos_token(hf: dict, tok: dict) -> str | None:
    """The model's end-of-text token: config.json's eos_token_id (the first of a list) in its tokenizer.json."""
    eos = hf.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    return {i: t for t, i in token_ids(tok).items()}.get(eos)


def token_ids(tok: dict) -> dict[str, int]:
    """A tokenizer.json's tokens (added ones and a BPE or WordPiece vocab) -> ids."""
    vocab = (tok.get("model") or {}).get("vocab")
    names = dict(vocab) if isinstance(vocab, dict) else {}
    return names | {t["content"]: t["id"] for t in tok.get("added_tokens", [])}


def tokenizer(source: str, folder: Path, hf: dict, cache_root: Path) -> Path:
    """The model's tokenizer.json when it has selfsup's EOS (which separates packed documents); else a copy under
    `cache_root` whose end-of-text token is renamed EOS (same id: its embedding is the model's)."""
    path = folder / "tokenizer.json"
    try:
        text = path.read_text()
        tok = json.loads(text)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.init '{source}': no readable tokenizer.json ({type(e).__name__}); expected the "
                          "model's fast tokenizer beside config.json") from None
    old = eos_token(hf, tok)
    if old == EOS or EOS in token_ids(tok):
        return path
    if old is None:
        raise ConfigError(f"model.init '{source}': config.json's eos_token_id {hf.get('eos_token_id')} is no token "
                          f"of its tokenizer.json, and it has no '{EOS}'; expected an end-of-text token, which "
                          "separates packed documents")
    out = cache_root / "init" / hashlib.sha256(text.encode()).hexdigest()[:16] / "tokenizer.json"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".tokenizer.json.{os.getpid()}")
        tmp.write_text(json.dumps(_renamed(tok, old, EOS)))
        os.replace(tmp, out)  # whole or absent, for a concurrent run
    return out


def _renamed(tree, old: str, new: str):
    """`tree` with every string and key equal to `old` (the token, its vocab key, the post-processor's template)
    replaced by `new`."""
    if isinstance(tree, dict):
        return {(new if k == old else k): _renamed(v, old, new) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_renamed(v, old, new) for v in tree]
    return new if tree == old else tree
