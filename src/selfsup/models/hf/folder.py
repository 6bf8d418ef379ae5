"""What a Hugging Face model folder holds, read for `model.init` and `selfsup inspect`: where it is (a local folder,
or the hub snapshot of an hf: id), config.json, the safetensors weights (one file or the shards an index names), the
fast tokenizer, and a fingerprint of the weights.

Every failure is one line naming the folder, what was wrong and what was expected (ConfigError).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from selfsup.config import ConfigError
from selfsup.data.read.tokenizer import EOS, MASK, PAD
from selfsup.hub import commit, snapshot

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch


class Unsupported(ValueError):
    """What our modules cannot hold of a model, as a phrase ("hidden_act 'gelu' (our SwiGLU is silu)")."""


def positive(hf: dict, keys, where: str = "") -> None:
    """Each of `keys` is a positive number in a config.json (`where`: the sub-config's name, as text_config)."""
    absent = [k for k in keys if not isinstance(hf.get(k), (int, float)) or hf[k] <= 0]
    if absent:
        raise Unsupported(f"config.json has no positive number '{where + '.' if where else ''}{absent[0]}'")


class Tensors(Mapping):
    """A model's tensors by name, each read from its safetensors file when asked for (so an import holds one of
    them at a time beside the model); asking for one it does not have is one line naming it. `read`: the names
    asked for, so what a family leaves unused (a classifier) can be said; `config`: its config.json, for what the
    names alone do not say (RoBERTa's position offset)."""

    def __init__(self, files: dict[str, object], source: str, architecture: str, config: dict | None = None):
        self._files = files  # name -> an open safetensors file (safe_open) that holds it
        self.source, self.architecture, self.read, self.config = source, architecture, set(), config or {}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._files:
            raise ConfigError(f"model.init '{self.source}': its weights have no '{key}'; expected a "
                              f"{self.architecture}'s tensors")
        self.read.add(key)
        return self._files[key].get_tensor(key)

    def __contains__(self, key: object) -> bool:  # by name, without reading the tensor
        return key in self._files

    def get(self, key: str, default=None):
        return self[key] if key in self._files else default

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


FILES = ["config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "preprocessor_config.json"]  # what selfsup reads of a model, beside its weights


def resolve(source: str, weights: bool = True, pinned: str | None = None) -> Path:
    """The folder `source` names: a local folder as it is, or the hub snapshot of `hf:ORG/NAME[@REVISION]` holding
    FILES and, `weights`, the safetensors files weight_files names (never a repository's other copies of them).
    pinned: the commit a resumed run started from, read instead of the one the id's revision names now."""
    if not source.startswith("hf:"):
        return Path(source).expanduser()
    folder = snapshot(source, FILES, "model.init", ConfigError, revision=pinned)
    if weights:  # the same commit: the index read here names its shards
        snapshot(source, [f.name for f in weight_files(folder)], "model.init", ConfigError, revision=commit(folder))
    return folder


def provenance(source: str, folder: Path) -> dict:
    """What a run records of the model it started from: the source as given, the commit of an hf: id, the weights'
    sha256."""
    hub = {"commit": commit(folder)} if source.startswith("hf:") else {}
    return {"path": source, **hub, "sha256": fingerprint(weight_files(folder))}


def described(started: dict) -> str:
    """A provenance as one phrase: "hf:org/name (commit ..., weights sha256 ...)"."""
    at = f"commit {started['commit']}, " if started.get("commit") else ""
    return f"{started.get('path')} ({at}weights sha256 {started.get('sha256')})"


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        hf = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.init '{folder}': no readable config.json ({type(e).__name__}); expected a local "
                          "Hugging Face model folder") from None
    return hf if isinstance(hf, dict) else {}


def context_limit(hf: dict) -> tuple[str, int] | None:
    """The longest context our full attention reproduces the model in, and the config.json key that sets it: its
    position table (max_position_embeddings; GPT-2's n_positions) or a sliding window, past which its layers no
    longer see what ours would; None when it says neither."""
    limits = [(k, hf[k]) for k in ("max_position_embeddings", "n_positions") if isinstance(hf.get(k), int)
              and hf[k] > 0]
    window = sliding_window(hf)
    if window:
        limits.append(("sliding_window", window))
    return min(limits, key=lambda limit: limit[1], default=None)


def sliding_window(hf: dict) -> int | None:
    """W when some layer attends only to the last W tokens (Mistral's sliding_window; Qwen2's with
    use_sliding_window, on the layers from max_window_layers, or those layer_types names); else None."""
    window = hf.get("sliding_window")
    if not isinstance(window, int) or window <= 0 or hf.get("use_sliding_window") is False:
        return None
    if isinstance(hf.get("layer_types"), list):
        return window if "sliding_attention" in hf["layer_types"] else None
    if isinstance(hf.get("max_window_layers"), int) and hf["max_window_layers"] >= hf.get("num_hidden_layers", 0):
        return None
    return window


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
    """The tensors of the folder's safetensors files, read lazily (their headers are read here: a truncated or
    foreign file stops now, in one line)."""
    from safetensors import safe_open

    files = weight_files(folder)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"model.init '{source}' has no {missing[0]}; expected model.safetensors or the shards "
                          "model.safetensors.index.json names")
    where = {}
    for f in files:
        try:
            opened = safe_open(str(f), framework="pt")
        except Exception as e:  # safetensors raises its own error types on a truncated or foreign file
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"model.init '{source}': {f} could not be read ({why}); expected a safetensors "
                              "file") from None
        where |= dict.fromkeys(opened.keys(), opened)
    return Tensors(where, source, architecture, read_config(folder))


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
