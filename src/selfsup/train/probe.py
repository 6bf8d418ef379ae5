"""Online probes: every probe.every steps (and at the last) the frozen features of the model in training are scored
on labeled data by evaluation's own protocol (probe/: the inputs that feed the trunk, the kNN vote, the linear probe),
so the probe_knn_acc of the last step is what `selfsup eval RUN_DIR --task knn` reports on the final model.

Every process encodes its share of the sets (rows rank, rank + world, ...) and rank 0 gathers the features in their
order, so the figure is the one-process figure; rank 0 alone scores them, logs them and, with probe.keep_best, keeps
the weights of the best probe in RUN_DIR/best/ (apart from checkpoints/, so their rotation never removes it).

RUN_DIR/best/ holds model.safetensors, the run's config.yaml (and tokenizer.json), so `selfsup eval RUN_DIR/best`
opens it as a run, and best.json naming the step and accuracy. It is written whole into .best-tmp/ and swapped in
(the old one renamed to .best-old/ meanwhile): a run killed at any moment leaves a complete best/ or .best-old/,
which the next start puts back.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from selfsup import dist
from selfsup.config import ConfigError, RunConfig
from selfsup.data.labeled import LabeledSet, read_for_run
from selfsup.probe.inputs import encode, run_inputs
from selfsup.probe.knn import knn_eval
from selfsup.probe.linear import linear_probe
from selfsup.train.checkpoint import save_final
from selfsup.train.errors import TrainingError

BEST, TMP, OLD = "best", ".best-tmp", ".best-old"


def read_sets(cfg: RunConfig, procs: dist.Processes, device: torch.device) -> tuple[LabeledSet, LabeledSet] | None:
    """The probe's labeled sets (None: no probe), read before anything is written, so a wrong path stops the run
    in one line. Rank 0 reads first (and fills the data cache), then the others, who find it made."""
    if not cfg.probe.train:
        return None
    if procs.world > 1 and cfg.dist.strategy != "ddp":
        raise ConfigError(f"probe.train/probe.test run with dist.strategy=ddp (got {cfg.dist.strategy}: the probe "
                          "encodes with the whole model on each process); use `selfsup eval` on the checkpoints")
    sets, error = None, None
    for turn in (procs.main, not procs.main):
        if turn:
            try:
                train = read_for_run(cfg, cfg.probe.train)
                sets = train, read_for_run(cfg, cfg.probe.test, train.classes)
            except Exception as e:  # the others must not wait for a process that has given up
                error = e
        if dist.any_true(error is not None, device):
            if error is not None:
                raise error
            raise TrainingError("another process failed to read the probe's labeled data; its error is in the log "
                                "above")
    return sets


class Probe:
    def __init__(self, cfg: RunConfig, sets: tuple[LabeledSet, LabeledSet], objective: nn.Module,
                 tok: Tokenizer | None, device: torch.device, procs: dist.Processes, run_dir: Path):
        self.cfg, self.device, self.procs, self.run_dir = cfg, device, procs, run_dir
        self.train, self.test = sets
        self.objective, self.trunk = objective, objective.model
        self.inputs = run_inputs(cfg, objective, tok)
        self.best = _recover(run_dir) if procs.main and cfg.probe.keep_best else None

    def due(self, step: int, last_step: bool) -> bool:
        return step % self.cfg.probe.every == 0 or last_step

    def __call__(self, step: int) -> tuple[dict, str] | None:
        """Score the model as it is now: (the record's probe_* figures, the line to log) on rank 0, None elsewhere.
        Every process takes part (it encodes its share)."""
        p, started = self.cfg.probe, time.perf_counter()
        train_x, test_x = self._features(self.train.items), self._features(self.test.items)
        if not self.procs.main:
            return None
        described = self.inputs.describe(self.trunk)
        n = len(self.train.classes)
        knn = knn_eval(train_x, self.train.labels, test_x, self.test.labels, n, k=p.k, temperature=p.temperature,
                       features=described, also_k=())
        record = {"probe_knn_acc": knn["accuracy"]}
        line = (f"probe at step {step}: kNN {knn['accuracy']:.1%} (k={knn['k']}, cosine, T={p.temperature:g}; "
                f"{len(self.train.labels)} train / {len(self.test.labels)} test)")
        if p.linear:
            record["probe_linear_acc"] = linear_probe(train_x, self.train.labels, test_x, self.test.labels, n,
                                                      features=described, seed=self.cfg.seed)["accuracy"]
            line += f", linear {record['probe_linear_acc']:.1%}"
        if p.keep_best:
            line += self._keep(step, record)
        record["probe_s"] = time.perf_counter() - started
        return record, f"{line} in {record['probe_s']:.1f} s"

    def _features(self, items) -> Tensor | None:
        """(N, D) features of items in their order on rank 0 (None elsewhere), each process encoding every
        world-th row."""
        rank, world = self.procs.rank, self.procs.world
        mine = encode(self.trunk, self.inputs, items[rank::world] if world > 1 else items, self.cfg.probe.batch_size,
                      self.device)  # (ceil((N - rank) / world), D)
        if world == 1:
            return mine
        parts = dist.gather_objects(mine)
        if not self.procs.main:
            return None
        out = torch.empty((sum(len(x) for x in parts), mine.shape[1]), dtype=mine.dtype)  # (N, D)
        for r, x in enumerate(parts):
            out[r::world] = x
        return out

    def _keep(self, step: int, record: dict) -> str:
        """Keep these weights in best/ when this probe beats the best so far (the linear probe's accuracy with
        probe.linear, else kNN's; a tie keeps the earlier); the words that say so."""
        metric = "probe_linear_acc" if self.cfg.probe.linear else "probe_knn_acc"
        sets = {"train": self.cfg.probe.train, "test": self.cfg.probe.test, "metric": metric}
        best = self.best if self.best and all(self.best.get(k) == v for k, v in sets.items()) else None
        if best is not None and record[metric] <= best["accuracy"]:
            return f" (best: step {best['step']}, {best['accuracy']:.1%})"
        new = {"step": step, "accuracy": record[metric], **sets, "k": self.cfg.probe.k,
               "temperature": self.cfg.probe.temperature}
        try:
            _write_best(self.run_dir, self.objective, new)
        except OSError as e:  # disk full, quota: training goes on; the best so far stays as it was
            return f" (new best, but not kept: {e})"
        self.best = new
        return f" (new best, kept in {self.run_dir / BEST})"


def _recover(run_dir: Path) -> dict | None:
    """Put back what a run killed mid-swap left (see the module's docstring); the best so far, None if none."""
    best, tmp, old = run_dir / BEST, run_dir / TMP, run_dir / OLD
    shutil.rmtree(tmp, ignore_errors=True)
    if old.is_dir():
        if best.is_dir():
            shutil.rmtree(old)
        else:
            old.rename(best)
    try:
        return json.loads((best / "best.json").read_text())
    except (OSError, ValueError):
        return None


def _write_best(run_dir: Path, objective: nn.Module, best: dict) -> None:
    tmp, final, old = run_dir / TMP, run_dir / BEST, run_dir / OLD
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_final(tmp / "model.safetensors", objective, main=True, sharded=False)
    for name in ("config.yaml", "tokenizer.json"):  # what `selfsup eval` opens a run with
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, tmp / name)
    (tmp / "best.json").write_text(json.dumps(best, indent=1) + "\n")
    if final.is_dir():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
