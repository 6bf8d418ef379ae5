"""Issue 14, items 2, 3, 11 and 12: a run directory holds one run, trained by one process, with the config, data
and tokenizer it started with; whatever a user points out_dir at, nothing of theirs is written over."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from selfsup import config
from selfsup.config import ConfigError
from selfsup.train import lock, trainer
from selfsup.train.lock import LockedError
from tests.conftest import TINY
from tests.test_train import quiet

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_for(data, out, *extra):
    return config.load("gpt-clm", [f"data.path={data}", f"out_dir={out}", *TINY, "train.max_steps=2", *extra])


def snapshot(run):
    """Every file of a run directory and its bytes (checkpoints by name)."""
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus_copy(corpus, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    return data


@pytest.fixture
def run(corpus_copy, tmp_path):
    out = tmp_path / "run"
    trainer.train(cfg_for(corpus_copy, out), quiet())
    return out


def test_a_resume_with_other_settings_is_refused_in_one_line_and_writes_nothing(run, corpus_copy):
    before = snapshot(run)
    with pytest.raises(ConfigError, match=r"other settings: model\.dim 32 → 64, optim\.lr 0\.003 → 0\.01; .*"
                                          r"--allow-changes model\.dim,optim\.lr"):
        trainer.train(cfg_for(corpus_copy, run, "model.dim=64", "optim.lr=0.01"), quiet())
    assert snapshot(run) == before  # config.yaml, tokenizer.json, checkpoints: untouched; the lock released


def test_keys_of_how_a_run_executes_may_change_and_are_recorded(run, corpus_copy):
    summary = trainer.train(cfg_for(corpus_copy, run, "train.max_steps=4", "train.log_every=1"), quiet())
    assert summary["steps"] == 4
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2]
    assert history[1]["changed"] == {"train.log_every": [10, 1], "train.max_steps": [2, 4]}


def test_an_allowed_change_is_recorded_in_the_history_and_the_config(run, corpus_copy):
    trainer.train(cfg_for(corpus_copy, run, "train.max_steps=3", "optim.lr=0.01"), quiet(),
                  allow_changes=["optim.lr"])
    last = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
    assert last["changed"]["optim.lr"] == [0.003, 0.01] and last["allowed"] == ["optim.lr"]
    assert config.validate(config.load_yaml(run / "config.yaml")).optim.lr == 0.01


def test_changed_data_is_refused_and_an_allowed_change_keeps_the_runs_tokenizer(run, corpus_copy):
    tokenizer = (run / "tokenizer.json").read_bytes()
    with open(corpus_copy / "a.txt", "a") as f:
        f.write("A document the run never saw, appended after it started.\n")
    with pytest.raises(ConfigError, match="the data under data.path .* changed since this run trained on it"):
        trainer.train(cfg_for(corpus_copy, run, "train.max_steps=3"), quiet())
    assert (run / "tokenizer.json").read_bytes() == tokenizer
    summary = trainer.train(cfg_for(corpus_copy, run, "train.max_steps=3"), quiet(), allow_changes=["data.path"])
    assert summary["steps"] == 3
    assert (run / "tokenizer.json").read_bytes() == tokenizer  # the embedding rows keep their ids
    last = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
    assert set(last["changed"]) == {"data", "data.tokenizer", "train.max_steps"}


def test_a_moved_corpus_resumes(run, corpus_copy, tmp_path):
    moved = corpus_copy.rename(tmp_path / "moved")
    assert trainer.train(cfg_for(moved, run, "train.max_steps=3"), quiet())["steps"] == 3


def test_an_unknown_allowed_key_is_one_line(run, corpus_copy):
    with pytest.raises(ConfigError, match="--allow-changes model.dimm: not a config key"):
        trainer.train(cfg_for(corpus_copy, run), quiet(), allow_changes=["model.dimm"])


def test_a_second_trainer_stops_with_a_line_naming_the_first(run, corpus_copy):
    held = lock.claim(run)  # this process trains it (a live pid on this host)
    try:
        with pytest.raises(LockedError, match=f"being trained by another process \\(pid {os.getpid()} on "):
            trainer.train(cfg_for(corpus_copy, run, "train.max_steps=3"), quiet())
        assert (run / lock.LOCK).is_file()  # still the first one's
    finally:
        held.release()


def test_a_stale_lock_of_a_dead_trainer_is_taken_over(run, corpus_copy):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = json.loads((lock.claim(run).path).read_text())
    (run / lock.LOCK).write_text(json.dumps(dict(stale, pid=dead.pid, started=None)))
    said = []
    held = lock.claim(run, say=said.append)
    assert "took over the lock of a trainer that no longer runs" in said[0] and str(dead.pid) in said[0]
    held.release()
    assert not (run / lock.LOCK).exists()


def test_a_killed_trainer_not_yet_reaped_is_dead(run):
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not waited for, so it stays a zombie
    while lock._stat(zombie.pid)[0] != "Z":
        pass
    (run / lock.LOCK).write_text(json.dumps({"pid": zombie.pid, "host": os.uname().nodename,
                                             "started": lock._start_time(zombie.pid)}))
    lock.claim(run, say=lambda text: None).release()
    zombie.wait()


def test_a_pid_reused_by_another_process_is_not_the_trainer(run):
    (run / lock.LOCK).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": 1}))
    lock.claim(run, say=lambda text: None).release()  # this pid runs, but was not started then


@pytest.mark.parametrize("kind", ["file", "foreign folder"])
def test_out_dir_that_cannot_be_a_run_is_one_line_and_nothing_is_written(corpus_copy, tmp_path, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("the user's notes")
        expected = "is a file; expected a folder"
    else:
        out.mkdir()
        (out / "notes.txt").write_text("the user's notes")
        expected = r"holds files that are not a selfsup run \(notes.txt\)"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=expected):
        trainer.train(cfg_for(corpus_copy, out), quiet())
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_run_that_fails_before_it_starts_leaves_no_directory(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(Exception):
        trainer.train(cfg_for(empty, tmp_path / "never"), quiet())
    assert not (tmp_path / "never").exists()


def test_an_interrupted_run_exits_as_its_signal_would(corpus_copy, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "selfsup", "train", "gpt-clm", f"data.path={corpus_copy}",
                             f"out_dir={out}", *TINY, "train.max_steps=100000", "train.log_every=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate()[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert not (out / lock.LOCK).exists()


def test_a_kill_while_metrics_are_rewritten_on_resume_loses_no_logged_step(run, corpus_copy, monkeypatch):
    from selfsup.train import monitor

    logged = (run / "metrics.jsonl").read_text()

    def killed_while_writing(self, data, *args, **kwargs):
        open(self, "w").close()  # opened for writing (truncated), then the process dies before writing
        raise KeyboardInterrupt

    monkeypatch.setattr(type(run / "x"), "write_text", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        monitor._truncate_after(run / "metrics.jsonl", 1)
    monkeypatch.undo()
    assert (run / "metrics.jsonl").read_text() == logged
