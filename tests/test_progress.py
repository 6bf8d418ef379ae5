"""Progress a person can watch, and a command line that answers at once (issue 17).

The CLI runs with its output to a pipe, as in a cluster job (`> train.log`): there is no terminal, so progress comes
as plain lines, counted here. Startup speed is asserted by what is imported, never by a clock."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from selfsup import progress as progress_mod
from selfsup.cli import app, main
from selfsup.progress import Progress, duration, size, track
from tests.conftest import TINY

HEAVY = ("torch", "numpy", "tokenizers", "kornia", "transformers", "sklearn", "matplotlib", "safetensors", "PIL")


def imported_by(*argv: str) -> list[str]:
    """The heavy modules loaded by `selfsup ARGV` (run through cli.main in a fresh process), and its exit status."""
    code = ("import sys\nfrom selfsup.cli import main\nsys.argv = ['selfsup', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            f"print('heavy', sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    return proc.stdout.splitlines()[-2:] + [proc.stderr.strip()]


def test_help_recipes_and_config_errors_import_nothing_heavy():
    assert imported_by("--help")[-2] == "heavy []"
    assert imported_by("recipes")[-2] == "heavy []"
    assert imported_by("train", "--help")[-2] == "heavy []"
    exit_line, heavy, stderr = imported_by("train", "gpt-clm", "model.dimm=3")
    assert (exit_line, heavy) == ("exit 2", "heavy []")
    assert stderr == "error: unknown config key 'model.dimm' (did you mean 'model.dim'?)"


def test_an_error_of_a_heavy_module_is_still_one_line(tmp_path, monkeypatch, capsys):
    """RunDirError lives in rundir.py (torch): the CLI finds it once the command has imported it."""
    monkeypatch.setattr(sys, "argv", ["selfsup", "export", str(tmp_path), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: '{tmp_path}' is not a run directory")


# --- the helper: plain lines when there is no terminal, at most one per every_s seconds, a last one at close ---

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    return c


def piped() -> Console:
    return Console(file=io.StringIO())  # not a terminal, as `> log` or a pipe


def lines(console: Console) -> list[str]:
    return console.file.getvalue().splitlines()


def test_plain_lines_come_at_most_every_every_s_and_once_more_at_the_end(clock):
    out = piped()
    with Progress("decoding", total=100, unit="items", every_s=10, console=out) as p:
        for _ in range(9):  # 9 chunks of 10 items, one every 3 s: lines at 12 s, 24 s (and none between)
            clock.now += 3
            p.advance(10)
        assert lines(out) == ["decoding 40/100 items  3 items/s  eta 18s", "decoding 80/100 items  3 items/s  eta 6s"]
        clock.now += 3
        p.advance(10)
    assert lines(out)[2:] == ["decoding 100/100 items  3 items/s"]  # the end, which the last line had not shown


def test_every_s_zero_prints_each_update_with_its_fields_and_close_adds_nothing_shown(clock):
    out = piped()
    p = Progress("step", total=2000, done=100, every_s=0, console=out)  # resumed at step 100
    clock.now += 10
    p.update(120, loss="loss 4.0525", speed="3,412 tokens/s")
    p.close()
    assert lines(out) == ["step 120/2,000  loss 4.0525  3,412 tokens/s  eta 15m40s"]  # 2 steps/s since step 100


def test_track_counts_an_iterable_and_a_job_that_did_nothing_prints_nothing(clock):
    out = piped()
    assert list(track(iter("abc"), "reading", console=out)) == ["a", "b", "c"]
    assert lines(out) == ["reading 3"]  # no length: no total, no ETA; no unit: no rate
    out = piped()
    Progress("idle", total=5, console=out).close()
    assert lines(out) == []


def test_a_terminal_gets_a_bar_not_lines(clock):
    out = Console(file=io.StringIO(), force_terminal=True)
    with Progress("decoding", total=3, console=out) as p:
        assert p.bar is not None
        p.advance(3)
    assert "decoding 3/3" not in out.file.getvalue()  # the bar draws "3/3" in its own columns


def test_sizes_and_durations_read_as_a_person_writes_them():
    assert [size(812), size(12_345), size(4.1e6), size(2e9)] == ["812 B", "12.3 kB", "4.1 MB", "2.0 GB"]
    assert [duration(7.4), duration(550), duration(7500)] == ["7s", "9m10s", "2h05m"]


# --- the CLI with its output to a pipe (no terminal) ---

def selfsup(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "selfsup", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    out = root / "run"
    proc = selfsup("train", "gpt-clm", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=6",
                   "train.log_every=2", "train.eval_every=6",
                   env=dict(os.environ, SELFSUP_CACHE=str(root / "cache")))  # its own cache: it tokenizes
    return out, proc


def test_training_prints_one_plain_line_per_logged_step(trained):
    run, proc = trained
    shown = [re.fullmatch(r"step (\d+)/6  loss (\d+\.\d{4})  [\d,]+ tokens/s(  eta \d+s)?", line)
             for line in proc.stdout.splitlines() if line.startswith("step ") and "/" in line.split()[1]]
    assert all(shown), proc.stdout
    assert [int(m[1]) for m in shown] == [2, 4, 6]
    assert [bool(m[3]) for m in shown] == [True, True, False]  # time left, until the end
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [f"{r['loss']:.4f}" for r in metrics] == [m[2] for m in shown]  # the lines show what was logged
    assert re.search(r"^tokenizing \d+ documents  [\d,]+ tokens  [\d,]+ documents/s$", proc.stderr, re.M), proc.stderr


def test_eval_and_embed_print_their_progress(trained, tmp_path):
    run, _ = trained
    rows = [{"text": f"{word} " * 8, "label": word} for word in ("alpha", "beta", "gamma", "delta") * 3]
    for name in ("train", "test"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # in this process (torch is imported once): CliRunner's output is not a terminal either
    result = CliRunner().invoke(app, ["eval", str(run), "--task", "knn", "--train", str(tmp_path / "train.jsonl"),
                                      "--test", str(tmp_path / "test.jsonl"), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^encoding train 3/3$", result.stderr, re.M), result.stderr
    assert re.search(r"^encoding test 3/3$", result.stderr, re.M), result.stderr
    (tmp_path / "texts.txt").write_text("".join(r["text"] + "\n" for r in rows))
    result = CliRunner().invoke(app, ["embed", str(run), str(tmp_path / "texts.txt"), "--out", str(tmp_path / "e.npy"),
                                      "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^embedding 3/3 batches  [\d,]+ batches/s$", result.stderr, re.M), result.stderr


def test_data_dedup_prints_its_progress(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("one two three four five six\n" * 3 + "seven eight nine ten\n")
    proc = selfsup("data", "dedup", tmp_path / "in", "--out", tmp_path / "out")
    assert re.search(r"^dedup 105 B/105 B  [\d.,]+ [kMG]?B/s$", proc.stderr, re.M), proc.stderr
