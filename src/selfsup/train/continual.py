"""Continual pretraining: a finished run goes on training on a new data stream, with a share of replay rows from
the data it trained on.

`selfsup train RUN_DIR continual.data=NEW continual.replay=0.2` makes a *new* run (out_dir, default
RUN_DIR-continual) from RUN_DIR's config and overrides. It is an ordinary run from then on: its own step 0, so the
lr schedule warms up again; its own checkpoints, so `selfsup train RUN_DIR-continual` (or the same command again)
resumes it exactly. What makes it a continuation is recorded in its config.yaml:

    data.path           the new stream (what it trains and validates on)
    data.tokenizer      text: the parent's tokenizer.json (the embedding is tied to its ids)
    image.mean/std      images: the parent's normalisation (already in the parent's config)
    continual.parent    the parent run, whose final weights (model and heads) start this run
    continual.old_data  the parent's data.path: the replay stream and the old domain for --task forgetting
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, get_args

from selfsup import config as config_mod
from selfsup.config import ConfigError, DataConfig, RunConfig
from selfsup.data.errors import DataError

if TYPE_CHECKING:  # torch is imported where weights are loaded: a config error answers at once
    from torch import nn


def load_config(source: str, overrides: list[str]) -> RunConfig:
    """config.load, and when `continual.data` names a new stream for the run directory `source`, the config of the
    run that continues it."""
    cfg = config_mod.load(source, overrides)
    if cfg.model.init:  # the model's shape and tokenizer, before any data is read
        from selfsup.models.hf.init import init_config
        from selfsup.train.identity import pinned

        explicit = {o.partition("=")[0].strip() for o in overrides}
        cfg = init_config(cfg, explicit, pinned(Path(cfg.out_dir), cfg.model.init))
    new = cfg.continual.data
    if new is None:
        c = cfg.continual
        if c.old_data and not (c.parent or cfg.model.init):
            raise ConfigError(f"continual.old_data={c.old_data} names the old domain of a run that continues "
                              "pretraining: set by `selfsup train RUN_DIR continual.data=NEW`, or given with model.init "
                              "(the imported model's old domain)")
        if c.replay and not c.old_data:
            raise ConfigError("continual.replay needs the old domain to replay: continue a finished run with "
                              "`selfsup train RUN_DIR continual.data=NEW continual.replay=0.2`, or name the old "
                              "domain of a model.init run with continual.old_data=OLD")
        return cfg
    run = Path(source)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"continual.data continues a finished run: expected `selfsup train RUN_DIR "
                          f"continual.data={new}`, but '{source}' is a recipe or YAML file, not a run directory")
    parent = config_mod.validate(config_mod.load_yaml(run / "config.yaml"))
    if not (parent.continual.parent and parent.data.path == new):  # else this run already continues on `new`
        cfg = _child(cfg, parent, run, new, explicit_out="out_dir" in {o.partition("=")[0].strip() for o in overrides})
    _same_continuation(cfg)
    return cfg


def _same_continuation(cfg: RunConfig) -> None:
    """A run directory that already holds a continuation resumes only that one: another parent, stream or replay
    share would train from its checkpoint (whose data position is that mixture's) on something else."""
    saved = Path(cfg.out_dir) / "config.yaml"
    if not saved.is_file():
        return
    was, now = config_mod.validate(config_mod.load_yaml(saved)).continual, cfg.continual
    if (was.parent, was.data, was.replay) != (now.parent, now.data, now.replay):
        raise ConfigError(f"out_dir '{cfg.out_dir}' already holds a run continuing {was.parent or 'no run'} on "
                          f"{was.data} with continual.replay={was.replay:g}; expected another out_dir=... for "
                          f"continual.data={now.data} continual.replay={now.replay:g}")


def _child(cfg: RunConfig, parent: RunConfig, run: Path, new: str, explicit_out: bool) -> RunConfig:
    if not (run / "model.safetensors").is_file():
        raise ConfigError(f"continual.data: '{run}' has no final model.safetensors (not finished); finish it first "
                          f"with `selfsup train {run}`, then continue it")
    from selfsup.objectives.build import objective_class, objective_classes

    # continuable: heads that do not belong to the rows they were fitted on, and data a mixture can read
    if not all(c.continues for c in objective_classes(cfg)) or cfg.modality not in ("text", "image"):
        tied = [n for n in get_args(config_mod.Objective) if n != "hybrid" and not objective_class(n).continues]
        raise ConfigError(f"continual.data: '{run}' trained '{cfg.objective}' on {cfg.modality}; continual "
                          "pretraining takes text and image runs other than " + ", ".join(tied))
    _check_modality(cfg, run, new)
    out = Path(cfg.out_dir) if explicit_out else run.with_name(run.name + "-continual")
    if out.resolve() == run.resolve():
        raise ConfigError(f"out_dir '{out}': a continued run needs its own directory; expected another than the "
                          f"parent '{run}' (default: {run}-continual)")
    tree = cfg.model_dump(mode="json")
    tree["out_dir"] = str(out)
    tree["data"]["path"] = new
    tree["continual"].update(parent=str(run.resolve()), old_data=parent.data.path)
    if cfg.modality == "text":
        tree["data"]["tokenizer"] = str((run / "tokenizer.json").resolve())
    return config_mod.validate(tree)


def _check_modality(cfg: RunConfig, run: Path, new: str) -> None:
    """The new stream must be data of the parent's modality: one line naming both, before any decoding."""
    from selfsup.data import builtin
    from selfsup.data.cache.images import image_files
    from selfsup.data.cache.tokens import cache_root, is_shard_folder
    from selfsup.data.read.table_media import check_tables
    from selfsup.data.read.text import source_files

    try:
        if cfg.modality == "text":
            if not is_shard_folder(new):  # shards of text, from `selfsup data tokenize`
                source_files(new, cfg.data.extensions)
        else:
            cache = cache_root(cfg.data.cache_dir)
            check_tables(image_files(builtin.resolve(new, cache)), cfg.data.image_field, None)  # a text table too
    except DataError as e:
        raise DataError(f"continual.data '{new}': '{run}' trained {cfg.objective} on {cfg.modality}, so the new "
                        f"stream must be {cfg.modality} data too ({e})") from None


def old_stream(cfg: RunConfig) -> DataConfig:
    """The data settings of the parent's training data, read with this run's tokenizer and settings."""
    return cfg.data.model_copy(update={"path": cfg.continual.old_data})


def load_parent(cfg: RunConfig, objective: nn.Module) -> None:
    """Start from the parent's final weights (backbone, heads, teachers); a checkpoint of this run, when resuming,
    overwrites them afterwards."""
    from safetensors.torch import load_model

    weights = Path(cfg.continual.parent) / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"continual.parent '{cfg.continual.parent}': expected its final model.safetensors; it was "
                          "moved or deleted")
    try:
        load_model(objective, str(weights))
    except RuntimeError as e:
        raise ConfigError(f"continual.parent '{cfg.continual.parent}': its weights do not fit this run's model "
                          f"(keep the parent's model.* settings): {str(e).splitlines()[0]}") from None
