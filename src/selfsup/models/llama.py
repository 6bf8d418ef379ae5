"""Our GPT trunk and Hugging Face transformers' LlamaForCausalLM, tensor for tensor: one table (`llama_names`) that
the export (export.py) reads one way and `model.init` (train/setup.py) the other.

`model.init=FOLDER` names a local folder of a Llama causal LM: `init_config` reads its config.json into the run's
config (shape keys, the tokenizer) before any data is read, refusing in one line what our trunk cannot express;
`load_init` copies its safetensors into the built trunk. Only the layout our trunk has: multi-head or
grouped-query attention, no biases, SwiGLU, RMSNorm, plain RoPE, a tied or untied output head.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from selfsup.config import ConfigError, RunConfig, validate
from selfsup.data.read.tokenizer import EOS

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch

TOP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
BLOCK = {  # ours -> Llama's; a tuple: our fused matrix is Llama's matrices stacked by rows, in that order
    "norm1.weight": "input_layernorm.weight", "norm2.weight": "post_attention_layernorm.weight",
    "attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.out.weight": "self_attn.o_proj.weight",
    "mlp.up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "mlp.down.weight": "mlp.down_proj.weight",
}
SHAPE = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads",
         "kv_heads": "num_key_value_heads", "vocab_size": "vocab_size", "mlp_hidden": "intermediate_size",
         "norm_eps": "rms_norm_eps"}  # model.KEY <- config.json's


def llama_names(depth: int, tied: bool = True) -> dict[str, str | tuple[str, ...]]:
    """Every tensor of our trunk's state dict -> the Llama tensor (or stacked tensors) it is."""
    names = dict(TOP) if tied else TOP | {"head.weight": "lm_head.weight"}
    for i in range(depth):
        for ours, theirs in BLOCK.items():
            names[f"blocks.{i}.{ours}"] = (tuple(f"model.layers.{i}.{t}" for t in theirs) if isinstance(theirs, tuple)
                                           else f"model.layers.{i}.{theirs}")
    return names


def to_llama(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our trunk's weights under Llama's names (the fused matrices split into Llama's row blocks)."""
    ours, c = model.state_dict(), model.cfg
    KV = (c.kv_heads or c.heads) * (c.dim // c.heads)  # rows of k and of v: key/value heads × head size
    rows = {"attn.qkv.weight": [c.dim, KV, KV], "mlp.up.weight": [model.hidden, model.hidden]}
    sd = {}
    for name, theirs in llama_names(c.depth, c.tied).items():
        if isinstance(theirs, tuple):
            sd.update(zip(theirs, ours[name].split(rows[name.split(".", 2)[2]])))  # qkv: (D + 2KV, D); up: (2F, D)
        else:
            sd[theirs] = ours[name]
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        hf = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.init '{folder}': no readable config.json ({type(e).__name__}); expected a local "
                          "Hugging Face model folder") from None
    return hf if isinstance(hf, dict) else {}


def _rope_theta(hf: dict) -> float:
    rope = hf.get("rope_parameters") or {}  # transformers 5 keeps rope_theta here
    return float(hf.get("rope_theta") or rope.get("rope_theta") or 10000.0)


def _unsupported(hf: dict) -> str | None:
    """Why our trunk cannot hold this model, or None."""
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "llama" and "LlamaForCausalLM" not in arch:
        return f"architectures {arch} (model_type {hf.get('model_type')!r}): expected LlamaForCausalLM"
    heads = hf.get("num_attention_heads")
    if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
        return f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads ({hf['hidden_size'] // heads})"
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            return f"{key} true (our trunk has no biases)"
    if hf.get("hidden_act", "silu") != "silu":
        return f"hidden_act {hf['hidden_act']!r} (our SwiGLU is silu)"
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"rope type {rope.get('rope_type', rope.get('type'))!r} (only plain RoPE)"
    return None


def init_config(cfg: RunConfig, explicit: set[str]) -> RunConfig:
    """The run's config with the shape and tokenizer of the model `model.init` names. explicit: the keys the
    user set on the command line, which may not contradict the model."""
    source = cfg.model.init
    if source.startswith("hf:"):
        raise ConfigError(f"model.init '{source}': only local folders are supported yet; expected a folder with "
                          "config.json, model.safetensors and tokenizer.json (e.g. one save_pretrained wrote)")
    if cfg.objective != "clm":
        raise ConfigError(f"model.init loads a Llama causal LM for objective clm (the gpt-clm recipe); this run has "
                          f"objective={cfg.objective}")
    folder = Path(source).expanduser()
    hf = _config(folder)
    hf = {"num_key_value_heads": hf.get("num_attention_heads"), "rms_norm_eps": 1e-6} | hf  # LlamaConfig's defaults
    absent = [k for k in SHAPE.values() if not isinstance(hf.get(k), (int, float)) or hf[k] <= 0]
    if absent:
        raise ConfigError(f"model.init '{source}': config.json has no positive number '{absent[0]}'; expected a "
                          "LlamaForCausalLM's config")
    why = _unsupported(hf)
    if why:
        raise ConfigError(f"model.init '{source}': {why} is not supported yet")
    values = {f"model.{k}": hf[v] for k, v in SHAPE.items()}
    values |= {"model.rope_theta": _rope_theta(hf), "model.mlp": "swiglu", "model.norm": "rmsnorm",
               "model.tied": bool(hf.get("tie_word_embeddings", True)),
               "data.tokenizer": str(_tokenizer(cfg, folder, hf))}
    longest = hf.get("max_position_embeddings")
    if longest and cfg.model.context > longest:
        if "model.context" in explicit:
            raise ConfigError(f"model.context={cfg.model.context}: model.init '{source}' has max_position_embeddings "
                              f"{longest}; expected model.context <= {longest}")
        values["model.context"] = longest
    tree = cfg.model_dump(mode="json")
    for key, value in values.items():
        section, name = key.split(".")
        if key in explicit and tree[section][name] != value:
            theirs = (SHAPE | {"tied": "tie_word_embeddings"}).get(name, name)
            raise ConfigError(f"{key}={tree[section][name]}: model.init '{source}' has {theirs} {value}; drop the "
                              "override")
        tree[section][name] = value
    return validate(tree)


def eos_token(hf: dict, tok: dict) -> str | None:
    """The model's end-of-text token: config.json's eos_token_id (the first of a list) in its tokenizer.json."""
    eos = hf.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    return {i: t for t, i in _names(tok).items()}.get(eos)


def _names(tok: dict) -> dict[str, int]:
    """A tokenizer.json's tokens (added ones and a BPE or WordPiece vocab) -> ids."""
    vocab = (tok.get("model") or {}).get("vocab")
    names = dict(vocab) if isinstance(vocab, dict) else {}
    return names | {t["content"]: t["id"] for t in tok.get("added_tokens", [])}


def _tokenizer(cfg: RunConfig, folder: Path, hf: dict) -> Path:
    """The model's tokenizer.json when it has selfsup's EOS (which separates packed documents); else a copy in the
    cache whose end-of-text token is renamed EOS (same id: its embedding is the model's)."""
    path = folder / "tokenizer.json"
    try:
        text = path.read_text()
        tok = json.loads(text)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.init '{cfg.model.init}': no readable tokenizer.json ({type(e).__name__}); expected "
                          "the model's fast tokenizer beside config.json") from None
    old = eos_token(hf, tok)
    if old == EOS or EOS in _names(tok):
        return path
    if old is None:
        raise ConfigError(f"model.init '{cfg.model.init}': config.json's eos_token_id {hf.get('eos_token_id')} is no "
                          f"token of its tokenizer.json, and it has no '{EOS}'; expected an end-of-text token, which "
                          "separates packed documents")
    from selfsup.data.cache.tokens import cache_root

    root = cache_root(cfg.data.cache_dir)
    out = root / "init" / hashlib.sha256(text.encode()).hexdigest()[:16] / "tokenizer.json"
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


def weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    return [folder / "model.safetensors"]


def fingerprint(files: list[Path]) -> str:
    """sha256 over the weight files' bytes, in order: which weights a run started from."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def load_init(cfg: RunConfig, model: torch.nn.Module) -> tuple[str, str]:
    """Copy the weights of the folder `model.init` names into our trunk `model`; returns their sha256 and the line
    that says which and which tokenizer. The embedding's padding rows (the vocabulary padded to x64) are zero."""
    import torch
    from safetensors.torch import load_file

    folder = Path(cfg.model.init).expanduser()
    files = weight_files(folder)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"model.init '{cfg.model.init}' has no {missing[0]}; expected model.safetensors or the "
                          "shards model.safetensors.index.json names")
    theirs = {}
    for f in files:
        try:
            theirs |= load_file(str(f))
        except Exception as e:  # safetensors raises its own error types on a truncated or foreign file
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"model.init '{cfg.model.init}': {f} could not be read ({why}); expected a "
                              "safetensors file") from None
    ours = model.state_dict()
    new = {}
    for name, keys in llama_names(model.cfg.depth, model.cfg.tied).items():
        keys = keys if isinstance(keys, tuple) else (keys,)
        absent = [k for k in keys if k not in theirs]
        if absent:
            raise ConfigError(f"model.init '{cfg.model.init}': its weights have no '{absent[0]}'; expected a "
                              "LlamaForCausalLM's tensors")
        value = torch.cat([theirs[k] for k in keys]).float()
        pad = ours[name].shape[0] - value.shape[0]
        if name in ("embed.weight", "head.weight") and pad > 0:  # (V, D) into (V padded to x64, D)
            value = torch.cat([value, value.new_zeros(pad, value.shape[1])])
        if value.shape != ours[name].shape:
            raise ConfigError(f"model.init '{cfg.model.init}': {keys[0]} is {tuple(value.shape)}, expected "
                              f"{tuple(ours[name].shape)} from its config.json")
        new[name] = value.to(ours[name].dtype)
    model.load_state_dict(new)  # every tensor: the table covers the trunk (rotary buffers are not persistent)
    sha = fingerprint(files)
    line = f"model.init: {cfg.model.init} (weights sha256 {sha})"
    if Path(cfg.data.tokenizer) != folder / "tokenizer.json":
        old = eos_token(_config(folder), json.loads((folder / "tokenizer.json").read_text()))
        line += f"; its end-of-text token '{old}' is renamed '{EOS}' in data.tokenizer {cfg.data.tokenizer}"
    return sha, line
