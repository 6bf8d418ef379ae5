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
from selfsup.data.read.tokenizer import EOS, MASK, PAD

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch


class Unsupported(ValueError):
    """What our modules cannot hold of a model, as a phrase ("attention_bias true (our trunk has no biases)")."""


class Tensors(dict):
    """A model's tensors by name; asking for one it does not have is one line naming it. `config`: its config.json,
    for what the names alone do not say (RoBERTa's position offset)."""

    def __init__(self, tensors: dict, source: str, architecture: str, config: dict | None = None):
        super().__init__(tensors)
        self.source, self.architecture, self.config = source, architecture, config or {}

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
    return Tensors(theirs, source, architecture, read_config(folder))


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


ROLES = {"cls": ("[CLS]", "<s>"), "pad": ("[PAD]", "<pad>"), "mask": ("[MASK]", "<mask>")}  # BERT's, RoBERTa's names
PARTS = {EOS: "cls", PAD: "pad", MASK: "mask"}  # ours -> the encoder token that plays its part


def special_token(folder: Path, hf: dict, tok: dict, role: str) -> str | None:
    """An encoder's cls, pad or mask token: config.json's {role}_token_id, else tokenizer_config.json's
    {role}_token, else the tokenizer's BERT or RoBERTa token of that role."""
    names, given = token_ids(tok), hf.get(f"{role}_token_id")
    by_id = {i: t for t, i in names.items()}
    if given in by_id:
        return by_id[given]
    try:
        named = json.loads((folder / "tokenizer_config.json").read_text()).get(f"{role}_token")
    except (OSError, ValueError, AttributeError):
        named = None
    named = named.get("content") if isinstance(named, dict) else named
    return named if named in names else next((t for t in ROLES[role] if t in names), None)


def renames(folder: Path, hf: dict, tok: dict, causal: bool) -> dict[str, str | None]:
    """Our special tokens -> the model's tokens that play their part: a causal LM's end-of-text token separates
    documents (EOS); an encoder's CLS token opens them (EOS), its PAD pads and its MASK masks. None: it has none."""
    if causal:
        return {EOS: eos_token(hf, tok)}
    return {ours: special_token(folder, hf, tok, role) for ours, role in PARTS.items()}


def tokenizer(source: str, folder: Path, hf: dict, cache_root: Path, causal: bool = True) -> Path:
    """The model's tokenizer.json when it has selfsup's special tokens (`renames`); else a copy under `cache_root`
    whose tokens in those parts are renamed ours (same ids: their embeddings are the model's)."""
    path = folder / "tokenizer.json"
    try:
        text = path.read_text()
        tok = json.loads(text)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.init '{source}': no readable tokenizer.json ({type(e).__name__}); expected the "
                          "model's fast tokenizer beside config.json") from None
    names = token_ids(tok)
    wanted = {ours: theirs for ours, theirs in renames(folder, hf, tok, causal).items() if ours not in names}
    if not wanted:
        return path
    for ours, theirs in wanted.items():
        if theirs is None and ours == EOS and causal:
            raise ConfigError(f"model.init '{source}': config.json's eos_token_id {hf.get('eos_token_id')} is no "
                              f"token of its tokenizer.json, and it has no '{EOS}'; expected an end-of-text token, "
                              "which separates packed documents")
        if theirs is None:
            role = PARTS[ours]
            raise ConfigError(f"model.init '{source}': its tokenizer.json has no {role} token (config.json's "
                              f"{role}_token_id, tokenizer_config.json's {role}_token, or one of "
                              f"{', '.join(ROLES[role])}) and no '{ours}'; expected one, which our pipeline uses as "
                              f"'{ours}'")
    key = text + json.dumps(wanted, sort_keys=True)  # the same tokenizer may be renamed otherwise for another model
    out = cache_root / "init" / hashlib.sha256(key.encode()).hexdigest()[:16] / "tokenizer.json"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".tokenizer.json.{os.getpid()}")
        tmp.write_text(json.dumps(_renamed(tok, {theirs: ours for ours, theirs in wanted.items()})))
        os.replace(tmp, out)  # whole or absent, for a concurrent run
    return out


def _renamed(tree, names: dict[str, str]):
    """`tree` with every string and key that `names` holds (a token, its vocab key, the post-processor's template)
    replaced by its new name."""
    if isinstance(tree, dict):
        return {names.get(k, k): _renamed(v, names) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_renamed(v, names) for v in tree]
    return names.get(tree, tree) if isinstance(tree, str) else tree
