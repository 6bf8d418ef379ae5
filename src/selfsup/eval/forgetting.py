"""Forgetting after continual pretraining: the parent and its continuation, each scored on the held-out data of the
old domain and of the new one. The parent is the run `continual.data` continued (the old domain: its training data,
continual.old_data) or the Hugging Face model `model.init` started the run from (the old domain: data the user
names with --old-data, as selfsup does not know what the model was trained on).

Protocol: each domain's validation split (the split training held out, by a hash of each document or image) is
read with the continued run's tokenizer and settings, in order; the first `max_rows` windows or images (in whole
batches) are scored by the pretraining objective in fp32, both models on the same rows, with the random masks or
views drawn from the run's seed, so the two models see identical inputs. Text: loss = mean NLL per scored token
(causal LM: perplexity = exp(loss)); other objectives: their validation loss per unit. With labeled data, `probe`
adds a linear probe of both models (eval/labeled.py's protocol).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from selfsup.config import ConfigError, DataConfig, RunConfig
from selfsup.data.load.rows import RowLoader
from selfsup.data.load.windows import PackedWindows
from selfsup.eval.labeled import evaluate as run_task, labeled_set
from selfsup.models.hf.folder import described
from selfsup.models.hf.init import load_init
from selfsup.objectives.build import build_objective
from selfsup.rundir import open_run
from selfsup.seed import seed_everything
from selfsup.train.continual import old_stream
from selfsup.train.identity import pinned, started_from

MAX_ROWS = 4096  # validation windows (or images) scored per domain at most


def validation_rows(cfg: RunConfig, data: DataConfig, overlap: int, log=lambda s: None) -> PackedWindows | RowLoader:
    """The validation split of one data stream, read as the run reads its own, in order."""
    if cfg.modality == "text":
        from selfsup.data.cache.tokens import prepare

        corpus = prepare(data, cfg.model.vocab_size, log=log)
        return PackedWindows(corpus.val, corpus.dtype, cfg.model.context, overlap, shuffle=False)
    from selfsup.data import builtin
    from selfsup.data.cache.images import prepare_images
    from selfsup.data.cache.tokens import cache_root

    cache = cache_root(data.cache_dir)
    im = cfg.image
    images = prepare_images(builtin.resolve(data.path, cache), im.size, im.channels, data.val_fraction,
                            data.cache_dir, data.workers, log=log, image_field=data.image_field,
                            allow_outside=data.allow_outside)
    return RowLoader({"images": images.val}, shuffle=False)


def old_domain(cfg: RunConfig, run_dir: Path, old_data: str | None) -> DataConfig:
    """The old domain's data settings: --old-data, else the continued run's continual.old_data (one line when the
    run has neither)."""
    if not (cfg.continual.parent or cfg.model.init):
        raise ConfigError(f"--task forgetting compares a continued run with what it started from; '{run_dir}' "
                          "continues no run (no continual.parent) and started from no model (no model.init): make "
                          "one with `selfsup train PARENT_RUN continual.data=NEW` or `selfsup train gpt-clm "
                          "model.init=MODEL data.path=NEW`")
    if old_data is None and not cfg.continual.old_data:
        raise ConfigError(f"--task forgetting: '{run_dir}' started from model.init '{cfg.model.init}', whose training "
                          "data selfsup does not know; name data of its old domain with --old-data PATH (read like "
                          "data.path; its validation split is scored), or train with continual.old_data=PATH")
    return cfg.data.model_copy(update={"path": old_data}) if old_data else old_stream(cfg)


def parent_of(cfg: RunConfig, run_dir: Path, tok, device: torch.device) -> tuple[str, torch.nn.Module]:
    """What the run started from, named, in eval mode: the continual.parent run's final weights, or the run as it
    was before its first step (built from its seed, the model.init weights copied in)."""
    if cfg.continual.parent:
        return cfg.continual.parent, open_run(cfg.continual.parent, device)[1]
    seed_everything(cfg.seed)  # what no model.init tensor sets is as the run began (its heads, if any)
    parent = build_objective(cfg, tok)
    started, _ = load_init(cfg, parent, pinned(run_dir, cfg.model.init))
    recorded = started_from(run_dir)
    if recorded is not None and recorded.get("sha256") != started["sha256"]:
        raise ConfigError(f"--task forgetting: model.init '{cfg.model.init}' now holds other weights (sha256 "
                          f"{started['sha256']}) than '{run_dir}' started from ({described(recorded)}); expected "
                          "those weights back")
    return f"model.init {described(started)}", parent.to(device).eval()


def forgetting(run_dir: Path, device: torch.device, batch_size: int, max_rows: int = MAX_ROWS,
               old_data: str | None = None, log=lambda s: None) -> tuple[dict, torch.nn.Module]:
    """{'old': {...}, 'new': {...}} with each model's loss (and perplexity) on each domain, and the change; and the
    parent model (for `probe`). old_data: the old domain's data instead of continual.old_data (a model.init run
    needs it)."""
    from selfsup.train.step import evaluate

    cfg, continued, tok = open_run(run_dir, device)
    old = old_domain(cfg, run_dir, old_data)
    named, parent = parent_of(cfg, run_dir, tok, device)
    causal = cfg.causal
    result = dict(task="forgetting", run_dir=str(run_dir), parent=named, objective=cfg.objective,
                  replay=cfg.continual.replay, steps=cfg.train.max_steps)
    for domain, data in (("old", old), ("new", cfg.data)):
        rows = validation_rows(cfg, data, continued.window_overlap, log)
        per = min(batch_size, len(rows))
        batches = max(min(max_rows, len(rows)) // per, 1)
        scores = {}
        for name, objective in (("parent", parent), ("continued", continued)):
            # masks and views from the run's seed: the same for both models
            scores[name] = {"loss": evaluate(objective, rows, per, batches, device, "fp32", cfg.seed)}
            if causal:
                scores[name]["perplexity"] = math.exp(min(scores[name]["loss"], 50))
        before, after = scores["parent"]["loss"], scores["continued"]["loss"]
        result[domain] = dict(data=data.path, rows=per * batches, rows_available=len(rows), **scores,
                              loss_change=after - before)
        if causal:
            ppl_b, ppl_a = scores["parent"]["perplexity"], scores["continued"]["perplexity"]
            result[domain]["perplexity_change_pct"] = 100 * (ppl_a - ppl_b) / ppl_b
    result["old"]["named_by"] = "named by --old-data" if old_data else "continual.old_data: the parent's training data"
    unit = "token" if cfg.modality == "text" else "image"
    result["protocol"] = (f"each domain's validation split in order, the first {result['old']['rows']:,} / "
                          f"{result['new']['rows']:,} {'windows' if unit == 'token' else 'images'} (old / new) in "
                          f"batches of {batch_size}, fp32, masks and views from seed {cfg.seed}, the same for both "
                          f"models; {cfg.objective} loss per {unit}" + ("; perplexity = exp(loss)" if causal else ""))
    return result, parent


def probe(run_dir: Path, parent: torch.nn.Module, device: torch.device, batch_size: int, train_path: str,
          test_path: str, progress=None) -> dict:
    """A linear probe of the parent (as `forgetting` gives it) and of the continued run on the same labeled data;
    `progress(iterable, what)`."""
    cfg, continued, tok = open_run(run_dir, device)
    train_set, inputs = labeled_set(cfg, continued, tok, train_path)
    test_set, _ = labeled_set(cfg, continued, tok, test_path, train_set.classes)
    probe = {name: run_task("linear", objective.model, inputs, train_set, test_set, device, batch_size=batch_size,
                            seed=cfg.seed, progress=progress)
             for name, objective in (("parent", parent), ("continued", continued))}
    b, a = probe["parent"]["accuracy"], probe["continued"]["accuracy"]
    return dict(train=train_path, test=test_path, protocol=probe["parent"]["protocol"], accuracy_change=a - b, **probe)
