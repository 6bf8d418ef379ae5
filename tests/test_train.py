"""End to end through the CLI entry points: train, resume after SIGKILL and SIGTERM, non-finite losses."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from rich.console import Console

from selfsup import config
from selfsup.objectives.contract import Objective
from selfsup.train import setup, trainer
from selfsup.train.trainer import TrainingError
from tests.conftest import TINY


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def cfg_for(corpus, out, *extra):
    return config.load("gpt-clm", [f"data.path={corpus}", f"out_dir={out}", *TINY, *extra])


def quiet():
    return Console(file=open(os.devnull, "w"))


class Killed(Exception):
    """A run dying mid-way, raised by crash_after_step."""


def crash_after_step(monkeypatch, objective_class, step: int):
    """Training an `objective_class` raises Killed right after step `step`'s after_step hook; undo() restores it."""
    real = objective_class.after_step

    def dies(self, s):
        real(self, s)
        if s == step:
            raise Killed

    monkeypatch.setattr(objective_class, "after_step", dies)
    return lambda: monkeypatch.setattr(objective_class, "after_step", real)


def crash_and_resume(monkeypatch, objective_class, step: int, recipe: str, args: list[str], tmp_path):
    """Run directories of `recipe` with `args`: tmp_path/full trained without a break, and tmp_path/crashed killed
    right after step `step` (crash_after_step), then resumed to the end."""
    full, out = tmp_path / "full", tmp_path / "crashed"
    trainer.train(config.load(recipe, [*args, f"out_dir={full}"]), quiet())
    undo = crash_after_step(monkeypatch, objective_class, step)
    with pytest.raises(Killed):
        trainer.train(config.load(recipe, [*args, f"out_dir={out}"]), quiet())
    undo()
    trainer.train(config.load(recipe, [*args, f"out_dir={out}"]), quiet())
    return full, out


def test_train_writes_the_run_directory(corpus, tmp_path):
    out = tmp_path / "run"
    summary = trainer.train(cfg_for(corpus, out, "train.max_steps=12", "train.eval_every=6", "train.log_every=3",
                                    "train.checkpoint_every=5", "train.keep_checkpoints=2"), quiet())
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000010", "step-00000012"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 9, 12]
    for r in records:
        assert {"step", "loss", "lr", "tokens_per_s", "mfu", "grad_norm"} <= set(r)
    assert "val_loss" in records[1] and "val_ppl" in records[3]
    assert records[-1]["loss"] < records[0]["loss"]
    assert summary["status"] == "finished" and summary["steps"] == 12 and summary["tokens_seen"] == 12 * 4 * 32
    assert summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 1
    assert json.loads((out / "summary.json").read_text())["val_ppl"] == pytest.approx(summary["val_ppl"])
    cost = summary["cost"]  # FLOPs from the formula × tokens; energy = device-hours × the stated nominal power
    assert cost["total_flops"] == summary["flops_per_token"] * summary["tokens_seen"]
    assert cost["device_hours"] == pytest.approx(summary["wall_time_s"] / 3600, abs=0.006 / 3600)  # 0.01 s rounding
    assert cost["energy_kwh"] == pytest.approx(cost["power_w"] * cost["device_hours"] / 1000)
    assert "CPU threads" in cost["power_source"]


def test_energy_uses_the_configured_device_power(corpus, tmp_path):
    summary = trainer.train(cfg_for(corpus, tmp_path / "w", "train.max_steps=2", "train.device_watts=250"), quiet())
    assert summary["cost"]["power_w"] == 250 and summary["cost"]["power_source"] == "train.device_watts"


def test_each_optimizer_and_schedule_trains(corpus, tmp_path):
    # LAMB and LARS scale each step by |p| (std 0.02 here; LARS also by its 0.001 trust coefficient), hence
    # their large learning rates
    for opt, sched, lr in (("lamb", "wsd", "0.1"), ("lars", "constant", "20.0")):
        out = tmp_path / opt
        trainer.train(cfg_for(corpus, out, "train.max_steps=12", f"optim.name={opt}", f"sched.name={sched}",
                              f"optim.lr={lr}", "train.log_every=1"), quiet())
        steps = losses(out)
        assert sum(steps[s] for s in (10, 11, 12)) < sum(steps[s] for s in (1, 2, 3)) - 0.1, (opt, steps)


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "selfsup", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for_step(proc, run_dir, step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "metrics.jsonl"
        if path.is_file() and any(s >= step for s in losses(run_dir)):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("run did not reach step %d" % step)


ARGS = ["train.max_steps=24", "train.log_every=1", "train.checkpoint_every=5", "train.eval_every=8",
        "train.grad_accum=2"]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    proc = _cli("train", "gpt-clm", f"data.path={corpus}", f"out_dir={out}", *TINY, *ARGS)
    assert proc.wait() == 0, proc.stdout.read()
    return losses(out)


def test_sigkill_then_resume_gives_identical_losses(corpus, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    proc = _cli("train", "gpt-clm", f"data.path={corpus}", f"out_dir={out}", *TINY, *ARGS)
    _wait_for_step(proc, out, 13)  # past the checkpoint at 10, before the one at 15
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(losses(out)) < 24
    resumed = _cli("train", out)  # the run directory alone
    output = resumed.communicate()[0]
    assert resumed.returncode == 0, output
    assert "resuming from" in output
    after = losses(out)
    assert sorted(after) == list(range(1, 25))
    for step, loss in uninterrupted.items():
        assert after[step] == pytest.approx(loss, abs=1e-6), step


def test_sigterm_checkpoints_and_stops(corpus, tmp_path, uninterrupted):
    out = tmp_path / "term"
    proc = _cli("train", "gpt-clm", f"data.path={corpus}", f"out_dir={out}", *TINY, *ARGS)
    _wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate()[0]
    assert proc.returncode == 128 + signal.SIGTERM, output  # checkpointed, not finished: as `timeout` expects
    assert "Resume with: selfsup train" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    stopped = summary["steps"]
    assert (out / "checkpoints" / f"step-{stopped:08d}").is_dir() and stopped < 24
    resumed = _cli("train", out)
    assert resumed.wait() == 0
    after = losses(out)
    for step, loss in uninterrupted.items():
        assert after[step] == pytest.approx(loss, abs=1e-6), step


class _SometimesNaN(torch.nn.Module, Objective):
    """Wraps an objective; its loss is NaN on the steps listed."""

    window_overlap = 1
    unit = "token"

    def __init__(self, inner, bad_calls):
        super().__init__()
        self.inner, self.model, self.bad_calls, self.calls = inner, inner.model, bad_calls, 0

    def forward(self, batch):
        out = self.inner(batch)
        self.calls += 1
        if self.calls in self.bad_calls:
            out.loss = out.loss * float("nan")
        return out

    def flops_per_token(self):
        return self.inner.flops_per_token()


def test_non_finite_steps_are_skipped_and_counted(corpus, tmp_path, monkeypatch):
    build = setup.build_objective
    monkeypatch.setattr(setup, "build_objective", lambda cfg, tok, images, **_: _SometimesNaN(build(cfg, tok), {3, 5}))
    summary = trainer.train(cfg_for(corpus, tmp_path / "nan", "train.max_steps=8", "train.log_every=1"), quiet())
    assert summary["nan_skipped_steps"] == 2 and summary["status"] == "finished"
    assert all(loss == loss for loss in losses(tmp_path / "nan").values())  # no NaN logged


def test_many_non_finite_steps_stop_without_checkpointing_them(corpus, tmp_path, monkeypatch):
    build = setup.build_objective
    monkeypatch.setattr(setup, "build_objective", lambda cfg, tok, images, **_: _SometimesNaN(build(cfg, tok), set(range(4, 99))))
    with pytest.raises(TrainingError, match="not finite for 3 steps in a row .*no checkpoint was written before them"):
        trainer.train(cfg_for(corpus, tmp_path / "nan", "train.max_steps=20", "train.max_bad_steps=3"), quiet())
    assert not (tmp_path / "nan" / "checkpoints" / "step-00000006").exists()  # the last good one is kept instead


def test_skipped_documents_reach_the_summary_and_a_saved_tokenizer_is_reused(corpus, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = (corpus / "a.txt").read_bytes()
    (data / "mixed.txt").write_bytes(good + b"\xff\xfe not utf-8\n   \n" + b"y" * 300_000 + b"\n")
    first = trainer.train(cfg_for(data, tmp_path / "one", "train.max_steps=2"), quiet())
    assert first["data"]["skipped"] == {"empty": 1, "invalid_utf8": 1, "too_long": 1}
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["data"]["skipped"]["invalid_utf8"] == 1
    second = trainer.train(cfg_for(data, tmp_path / "two", "train.max_steps=2",
                                   f"data.tokenizer={tmp_path / 'one' / 'tokenizer.json'}"), quiet())
    assert (tmp_path / "two" / "tokenizer.json").read_text() == (tmp_path / "one" / "tokenizer.json").read_text()
    assert second["data"]["cache"] != first["data"]["cache"]


def test_compiled_training_matches_eager(corpus, tmp_path):
    eager = trainer.train(cfg_for(corpus, tmp_path / "eager", "train.max_steps=3", "train.log_every=1"), quiet())
    compiled = trainer.train(cfg_for(corpus, tmp_path / "compiled", "train.max_steps=3", "train.log_every=1",
                                     "train.compile=true"), quiet())
    assert compiled["status"] == "finished"
    for step, loss in losses(tmp_path / "eager").items():
        assert losses(tmp_path / "compiled")[step] == pytest.approx(loss, rel=1e-4)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)
