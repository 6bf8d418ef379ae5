"""Forgetting after continual pretraining: the parent run and its continuation, each scored on the held-out data of
the old domain (the parent's training data) and of the new one.

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
from selfsup.rundir import open_run
from selfsup.train.continual import old_stream

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


def forgetting(run_dir: Path, device: torch.device, batch_size: int, max_rows: int = MAX_ROWS,
               log=lambda s: None) -> dict:
    """{'old': {...}, 'new': {...}} with each model's loss (and perplexity) on each domain, and the change."""
    from selfsup.train.step import evaluate

    cfg, continued, _ = open_run(run_dir, device)
    if not cfg.continual.parent:
        raise ConfigError(f"--task forgetting compares a continued run with its parent; '{run_dir}' continues no run "
                          "(no continual.parent): make one with `selfsup train PARENT_RUN continual.data=NEW`")
    _, parent, _ = open_run(cfg.continual.parent, device)
    causal = cfg.causal
    result = dict(task="forgetting", run_dir=str(run_dir), parent=cfg.continual.parent, objective=cfg.objective,
                  replay=cfg.continual.replay, steps=cfg.train.max_steps)
    for domain, data in (("old", old_stream(cfg)), ("new", cfg.data)):
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
    unit = "token" if cfg.modality == "text" else "image"
    result["protocol"] = (f"each domain's validation split in order, the first {result['old']['rows']:,} / "
                          f"{result['new']['rows']:,} {'windows' if unit == 'token' else 'images'} (old / new) in "
                          f"batches of {batch_size}, fp32, masks and views from seed {cfg.seed}, the same for both "
                          f"models; {cfg.objective} loss per {unit}" + ("; perplexity = exp(loss)" if causal else ""))
    return result


def probe(run_dir: Path, parent_dir: str, device: torch.device, batch_size: int, train_path: str, test_path: str,
          progress=None) -> dict:
    """A linear probe of the parent and of the continued run on the same labeled data; `progress(iterable, what)`."""
    cfg, continued, tok = open_run(run_dir, device)
    _, parent, _ = open_run(parent_dir, device)
    train_set, inputs = labeled_set(cfg, continued, tok, train_path)
    test_set, _ = labeled_set(cfg, continued, tok, test_path, train_set.classes)
    probe = {name: run_task("linear", objective.model, inputs, train_set, test_set, device, batch_size=batch_size,
                            seed=cfg.seed, progress=progress)
             for name, objective in (("parent", parent), ("continued", continued))}
    b, a = probe["parent"]["accuracy"], probe["continued"]["accuracy"]
    return dict(train=train_path, test=test_path, protocol=probe["parent"]["protocol"], accuracy_change=a - b, **probe)
