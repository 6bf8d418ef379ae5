"""`model.init=FOLDER` or `hf:ORG/NAME[@REVISION]`: start a run from a Hugging Face model. `init_config` reads its
config.json into the run's config (the shape keys, the tokenizer) before any data is read, refusing in one line what
our modules cannot hold; `load_init` copies its weights into the built objective.

    cfg = init_config(cfg, explicit={"data.path"})     # explicit: keys set on the command line
    started, line = load_init(cfg, objective)           # what it started from (folder.provenance), a console line

pinned: the commit of an hf: id a resumed run started from (identity.pinned), so that it reads the same model
wherever the id's branch has moved since.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from selfsup.config import ConfigError, RunConfig, validate
from selfsup.data.read.tokenizer import EOS, MASK, PAD
from selfsup.models.hf import bert, clip, dinov2, gpt2, hubert, llama, modernbert, resnet, siglip, vit
from selfsup.models.hf.folder import (Unsupported, context_limit, described, image_normalisation, provenance,
                                      read_config, read_weights, renames, resolve, token_ids, tokenizer)

if TYPE_CHECKING:
    from torch import nn

FAMILIES = (llama, gpt2, bert, modernbert, resnet, vit, dinov2, clip, siglip, hubert)  # by their model_types


def family_of(source: str, hf: dict):
    """The family module that reads this config.json."""
    kind = hf.get("model_type")
    for family in FAMILIES:
        if kind in family.MODEL_TYPES:
            return family
    known = ", ".join(t for f in FAMILIES for t in f.MODEL_TYPES)
    raise ConfigError(f"model.init '{source}': model_type {kind!r} (architectures {hf.get('architectures') or []}) "
                      f"is not supported yet; expected one of: {known}")


def init_config(cfg: RunConfig, explicit: set[str], pinned: str | None = None) -> RunConfig:
    """The run's config with the shape and tokenizer of the model `model.init` names. explicit: the keys the
    user set on the command line, which may not contradict the model."""
    source = cfg.model.init
    folder = resolve(source, pinned=pinned)  # an hf: id is downloaded here, before any data is read
    hf = read_config(folder)
    family = family_of(source, hf)
    if not set(cfg.parts) <= set(family.OBJECTIVES):
        terms = f" ({', '.join(cfg.parts)})" if cfg.objective == "hybrid" else ""
        raise ConfigError(f"model.init '{source}' is a {family.ARCHITECTURE}, which starts objective "
                          f"{' or '.join(family.OBJECTIVES)}; this run has objective={cfg.objective}{terms}")
    try:
        values = family.config_values(hf)
    except Unsupported as why:
        raise ConfigError(f"model.init '{source}': {why} is not supported yet") from None
    if family.TOKENIZER:
        from selfsup.data.cache.tokens import cache_root

        text = hf.get("text_config") or hf  # a two-tower model's end-of-text token is its text tower's
        values["data.tokenizer"] = str(tokenizer(source, folder, text, cache_root(cfg.data.cache_dir),
                                                 cfg.causal or cfg.pairs))
    if cfg.pairs:
        values |= image_normalisation(source, folder)
    key, longest = context_limit(hf) or ("", 0)
    said = f"{key} {longest}"
    if "model.context" in values:  # the family's own: the most positions the model holds (RoBERTa's offset table)
        longest = values.pop("model.context")
        said = f"max_position_embeddings {hf.get('max_position_embeddings')}"
    if longest and cfg.model.context > longest:
        if "model.context" in explicit:
            raise ConfigError(f"model.context={cfg.model.context}: model.init '{source}' has {said}; expected "
                              f"model.context <= {longest}")
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


def load_init(cfg: RunConfig, objective: nn.Module, pinned: str | None = None) -> tuple[dict, str]:
    """Copy the weights of the folder `model.init` names into `objective`'s backbone; returns what it started from
    (folder.provenance) and the line that says which weights and which tokenizer."""
    import torch

    source = cfg.model.init
    folder = resolve(source, pinned=pinned)
    hf = read_config(folder)
    family = family_of(source, hf)
    theirs = read_weights(source, folder, family.ARCHITECTURE)
    ours = objective.state_dict(keep_vars=True)
    copied = set()
    with torch.no_grad():
        for name, value in family.weights(theirs, objective):  # one tensor at a time: no second copy of the model
            if name not in ours:
                raise AssertionError(f"{family.__name__}.weights names no tensor of the objective: {name}")
            if value.shape != ours[name].shape:
                raise ConfigError(f"model.init '{source}': the tensor for our {name} is {tuple(value.shape)}, "
                                  f"expected {tuple(ours[name].shape)} from its config.json")
            ours[name].copy_(value)
            copied.add(name)
    started = provenance(source, folder)
    line = f"model.init: {described(started)}"
    unused = sorted(theirs.keys() - theirs.read)
    if unused:  # e.g. a ResNetForImageClassification's classifier
        line += f"; not used: {', '.join(unused[:4])}" + (f" and {len(unused) - 4} more" if len(unused) > 4 else "")
    fresh = sorted({".".join(n.split(".")[:3 if n.startswith("terms.") else 1]) for n, _ in
                    objective.named_parameters() if n not in copied and not n.startswith("model.")})
    if fresh and cfg.modality == "text":  # heads the folder lacks (a bare encoder's MLM head, SimCSE's projector)
        line += f"; {', '.join(fresh)} start{'s' if len(fresh) == 1 else ''} fresh (not in the folder)"
    if family.TOKENIZER and Path(cfg.data.tokenizer) != folder / "tokenizer.json":
        import json

        tok = json.loads((folder / "tokenizer.json").read_text())
        ends = cfg.causal or cfg.pairs  # our EOS ends a text (a causal LM's, a text tower's), else opens it
        role = {EOS: "end-of-text token" if ends else "CLS token", PAD: "padding token", MASK: "mask token"}
        said = [f"its {role[ours]} '{theirs}' is renamed '{ours}'"
                for ours, theirs in renames(folder, hf.get("text_config") or hf, tok, ends).items()
                if ours not in token_ids(tok)]
        line += f"; {', '.join(said)} in data.tokenizer {cfg.data.tokenizer}"
    return started, line
