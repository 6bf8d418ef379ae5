"""`model.init=FOLDER`: start a run from a Hugging Face model. `init_config` reads its config.json into the run's
config (the shape keys, the tokenizer) before any data is read, refusing in one line what our modules cannot hold;
`load_init` copies its weights into the built objective.

    cfg = init_config(cfg, explicit={"data.path"})     # explicit: keys set on the command line
    sha, line = load_init(cfg, objective)               # the weights' sha256 and a line for the console
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from selfsup.config import ConfigError, RunConfig, validate
from selfsup.data.read.tokenizer import EOS
from selfsup.models.hf import dinov2, gpt2, llama, vit
from selfsup.models.hf.folder import (Unsupported, context_limit, eos_token, fingerprint, read_config, read_weights,
                                      tokenizer, weight_files)

if TYPE_CHECKING:
    from torch import nn

FAMILIES = (llama, gpt2, vit, dinov2)  # each reads the config.json model_types it names


def family_of(source: str, hf: dict):
    """The family module that reads this config.json."""
    kind = hf.get("model_type")
    for family in FAMILIES:
        if kind in family.MODEL_TYPES:
            return family
    known = ", ".join(t for f in FAMILIES for t in f.MODEL_TYPES)
    raise ConfigError(f"model.init '{source}': model_type {kind!r} (architectures {hf.get('architectures') or []}) "
                      f"is not supported yet; expected one of: {known}")


def init_config(cfg: RunConfig, explicit: set[str]) -> RunConfig:
    """The run's config with the shape and tokenizer of the model `model.init` names. explicit: the keys the
    user set on the command line, which may not contradict the model."""
    source = cfg.model.init
    if source.startswith("hf:"):
        raise ConfigError(f"model.init '{source}': only local folders are supported yet; expected a folder with "
                          "config.json, model.safetensors and tokenizer.json (e.g. one save_pretrained wrote)")
    folder = Path(source).expanduser()
    hf = read_config(folder)
    family = family_of(source, hf)
    if cfg.objective not in family.OBJECTIVES:
        raise ConfigError(f"model.init '{source}' is a {family.ARCHITECTURE}, which starts objective "
                          f"{' or '.join(family.OBJECTIVES)}; this run has objective={cfg.objective}")
    try:
        values = family.config_values(hf)
    except Unsupported as why:
        raise ConfigError(f"model.init '{source}': {why} is not supported yet") from None
    if family.TOKENIZER:
        from selfsup.data.cache.tokens import cache_root

        values["data.tokenizer"] = str(tokenizer(source, folder, hf, cache_root(cfg.data.cache_dir)))
    key, longest = context_limit(hf) or ("", 0)
    if longest and cfg.model.context > longest:
        if "model.context" in explicit:
            raise ConfigError(f"model.context={cfg.model.context}: model.init '{source}' has {key} {longest}; "
                              f"expected model.context <= {longest}")
        values["model.context"] = longest
    tree = cfg.model_dump(mode="json")
    for key, value in values.items():
        section, name = key.split(".")
        if key in explicit and tree[section][name] != value:
            theirs = family.KEYS.get(key, key)
            raise ConfigError(f"{key}={tree[section][name]}: model.init '{source}' has {theirs} {value}; drop the "
                              "override")
        tree[section][name] = value
    return validate(tree)


def load_init(cfg: RunConfig, objective: nn.Module) -> tuple[str, str]:
    """Copy the weights of the folder `model.init` names into `objective`'s backbone; returns their sha256 and the
    line that says which weights and which tokenizer."""
    import torch

    source = cfg.model.init
    folder = Path(source).expanduser()
    hf = read_config(folder)
    family = family_of(source, hf)
    theirs = read_weights(source, folder, family.ARCHITECTURE)
    ours = objective.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in family.weights(theirs, objective):  # one tensor at a time: no second copy of the model
            if name not in ours:
                raise AssertionError(f"{family.__name__}.weights names no tensor of the objective: {name}")
            if value.shape != ours[name].shape:
                raise ConfigError(f"model.init '{source}': the tensor for our {name} is {tuple(value.shape)}, "
                                  f"expected {tuple(ours[name].shape)} from its config.json")
            ours[name].copy_(value)
    sha = fingerprint(weight_files(folder))
    line = f"model.init: {source} (weights sha256 {sha})"
    if family.TOKENIZER and Path(cfg.data.tokenizer) != folder / "tokenizer.json":
        import json

        old = eos_token(hf, json.loads((folder / "tokenizer.json").read_text()))
        line += f"; its end-of-text token '{old}' is renamed '{EOS}' in data.tokenizer {cfg.data.tokenizer}"
    return sha, line
