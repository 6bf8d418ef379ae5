"""kill -9 at seeded random moments, mid-step and mid-checkpoint-write, 1-3 times a run, then the run resumed to its
end: its losses and final weights equal an uninterrupted run's exactly, for a GPT, SimCLR and CLIP, each started as a
user does (`python -m selfsup train`, resumed from the run directory alone).

SELFSUP_FAULT_TRIALS trials per objective (1 in `make test`; `make faults` runs 30). Trial i draws every choice from
random.Random(i), so a failure names the trial to replay; where a kill lands still depends on the machine's speed.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from safetensors.torch import load_file

from selfsup import config
from selfsup.train import trainer
from tests.conftest import TINY

TRIALS = int(os.environ.get("SELFSUP_FAULT_TRIALS", "1"))
STEPS = 10
COMMON = [f"train.max_steps={STEPS}", "train.log_every=1", "train.eval_every=5", "train.eval_batches=1",
          "sched.warmup_steps=1", "data.workers=0"]
VIT = ["image.size=16", "image.channels=1", "model.dim=32", "model.depth=2", "model.heads=2", "model.patch=4",
       "train.batch_size=8"]
OBJECTIVES = {  # name: (recipe, data fixture, settings)
    "gpt": ("gpt-clm", "corpus", [*TINY, "train.grad_accum=2"]),
    "simclr": ("simclr", "images", [*VIT, "ssl.proj_hidden=64", "ssl.proj_dim=16"]),
    "clip": ("clip", "pairs", [*VIT, "text.dim=32", "text.depth=2", "text.heads=2", "text.vocab_size=512",
                               "align.embed_dim=16"]),
}
MID_STEP, MID_CHECKPOINT = "mid-step", "mid-checkpoint"
# one thread, in every run: the same floating-point sums in the uninterrupted run and in each resumed one
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """48 grayscale 16×16 noise PNGs, with captions beside them in pairs.jsonl."""
    root = tmp_path_factory.mktemp("fault-images")
    rng = np.random.default_rng(0)
    shades = ["dark", "light", "grey", "speckled"]
    lines = []
    for i in range(48):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(root / f"{i:02d}.png")
        lines.append(json.dumps({"image": f"{i:02d}.png", "text": f"a {shades[i % 4]} square, number {i % 10}"}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def pairs(images) -> Path:
    return images / "pairs.jsonl"


def _start(args: list, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # a file, not a pipe: nobody has to drain it while the run trains
        return subprocess.Popen([sys.executable, "-m", "selfsup", "train", *map(str, args)], stdout=out,
                                stderr=subprocess.STDOUT, env=ENV)


def _command(name: str, data: Path, out: Path, checkpoint_every: int) -> list:
    recipe, _, settings = OBJECTIVES[name]
    return [recipe, f"data.path={data}", f"out_dir={out}", *COMMON, *settings,
            f"train.checkpoint_every={checkpoint_every}"]


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _logged(run_dir: Path) -> int:
    """The last step logged, reading a file another process is appending to (its last line may be half written)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except ValueError:
            continue
    return 0


def _checkpointed(run_dir: Path) -> int:
    """The step of the run's latest checkpoint, 0 if none; read here rather than with selfsup's own code, which may
    tidy the folder as it reads it."""
    done = [int(p.name.removeprefix("step-")) for p in run_dir.glob("checkpoints/step-*")
            if (p / "state.json").exists()]
    return max(done, default=0)


def _temp_folders(run_dir: Path) -> set[str]:
    root = run_dir / "checkpoints"
    return {p.name for p in root.iterdir() if p.name.startswith(".tmp-")} if root.is_dir() else set()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Per objective, computed once: an uninterrupted run's losses by step, its validation losses, its weights and
    the seconds its training took (kill moments are drawn within them). It saves only at its end: the trials save
    every 1-3 steps, and saving must change nothing."""
    done = {}

    def get(name: str, data: Path):
        if name not in done:
            out = tmp_path_factory.mktemp(f"reference-{name}")
            source, *overrides = _command(name, data, out, checkpoint_every=STEPS)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as the runs started with OMP_NUM_THREADS=1
            try:  # in this process: one start of selfsup fewer per objective
                trainer.train(config.load(source, overrides), Console(file=io.StringIO()))
            finally:
                torch.set_num_threads(threads)
            rows = _metrics(out)
            assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
            done[name] = ({r["step"]: r["loss"] for r in rows},
                          {r["step"]: r["val_loss"] for r in rows if "val_loss" in r},
                          load_file(out / "model.safetensors"), rows[-1]["time"])
        return done[name]

    return get


@pytest.fixture(scope="module")
def tally(request):
    """Counts over the module's trials, printed in pytest's closing summary (the figures `make faults` reports)."""
    counts = Counter()

    class Summary:
        def pytest_terminal_summary(self, terminalreporter):
            if counts["trials"]:
                terminalreporter.write_line(
                    f"fault injection: trials {counts['trials']}, kills {counts['kills']} (during checkpoint writes "
                    f"{counts['mid_checkpoint']}, between them {counts['mid_step']}), runs finished before their "
                    f"kill {counts['finished_first']}, identical resumes {counts['identical']}, runs that ended "
                    f"with a checkpoints/.tmp-* folder {counts['temp_left']}")

    request.config.pluginmanager.register(Summary(), "selfsup-fault-tally")
    return counts


def _kill_mid_step(proc: subprocess.Popen, run_dir: Path, rng: random.Random, seconds: float) -> str:
    """SIGKILL at a random moment after the run logs a step it had not logged before (a resumed run starts by
    rewriting metrics.jsonl up to its checkpoint); the delay is drawn within the rest of the training time."""
    start = _checkpointed(run_dir)
    delay = rng.uniform(0, 1.5 * seconds * (STEPS - start) / STEPS)  # past the loop too: final weights, summary
    while proc.poll() is None and _logged(run_dir) <= start:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return f"{delay:.3f} s after its first step past {start}"


def _kill_mid_checkpoint(proc: subprocess.Popen, run_dir: Path, rng: random.Random) -> str:
    """SIGKILL as soon as a checkpoint's temporary folder appears, after letting a random number of them finish."""
    skip = rng.randrange(3)
    seen = _temp_folders(run_dir)  # leftovers of earlier kills
    while proc.poll() is None:
        new = _temp_folders(run_dir) - seen
        if new and not skip:
            proc.send_signal(signal.SIGKILL)
            return f"on seeing {sorted(new)[0]} (after {len(seen)} earlier)"
        skip -= bool(new)
        seen |= new
        time.sleep(0.0005)  # a tiny checkpoint is written in milliseconds
    return "never: no checkpoint folder was caught"


@pytest.mark.parametrize("trial", range(TRIALS))
@pytest.mark.parametrize("name", OBJECTIVES)
def test_kill_9_then_resume_equals_the_uninterrupted_run(name, trial, request, reference, tally, tmp_path):
    data = request.getfixturevalue(OBJECTIVES[name][1])
    want, want_val, want_weights, seconds = reference(name, data)
    rng = random.Random(trial)
    every = rng.choice([1, 2, 3])
    out = tmp_path / "run"
    story = [f"{name} trial {trial}: random.Random({trial}), train.checkpoint_every={every}; replay with "
             f"SELFSUP_FAULT_TRIALS={trial + 1} pytest '{request.node.nodeid}'"]
    tally["trials"] += 1
    # the first kill's kind alternates with trial and objective, so even one trial each covers both kinds
    first = [MID_STEP, MID_CHECKPOINT][(trial + list(OBJECTIVES).index(name)) % 2]
    for k in range(rng.randint(1, 3)):
        kind = first if k == 0 else rng.choice([MID_STEP, MID_CHECKPOINT])
        log = tmp_path / f"run-{k}.log"
        proc = _start(_command(name, data, out, every) if k == 0 else [out], log)
        when = _kill_mid_step(proc, out, rng, seconds) if kind == MID_STEP else _kill_mid_checkpoint(proc, out, rng)
        code = proc.wait()
        left = {f for f in _temp_folders(out) if f.endswith(f"-{proc.pid}")}  # killed while writing a checkpoint
        story.append(f"kill {k + 1} ({kind}) {when}: exit code {code}, logged up to step {_logged(out)}"
                     + (f", left {sorted(left)}" if left else ""))
        assert code in (0, -signal.SIGKILL), "\n".join(story) + "\n" + log.read_text()[-3000:]
        if code == 0:  # it finished before the kill landed
            tally["finished_first"] += 1
            break
        tally["kills"] += 1
        tally["mid_checkpoint" if left else "mid_step"] += 1
    story = "\n  ".join(story)

    log = tmp_path / "final.log"
    code = _start([out], log).wait()
    output = log.read_text()
    assert code == 0 and "Traceback" not in output, story + "\n" + output[-3000:]
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), story
    for r in rows:
        assert r["loss"] == want[r["step"]], f"{story}\n  step {r['step']}: {r['loss']!r} != {want[r['step']]!r}"
    assert {r["step"]: r["val_loss"] for r in rows if "val_loss" in r} == want_val, story
    weights = load_file(out / "model.safetensors")
    assert weights.keys() == want_weights.keys(), story
    for key, tensor in want_weights.items():
        assert torch.equal(weights[key], tensor), f"{story}\n  {key} differs"
    tally["identical"] += 1
    tally["temp_left"] += bool(_temp_folders(out))
    # last, as its own finding: a kill mid-checkpoint leaves a temporary folder the next start must clean
    assert not _temp_folders(out), f"{story}\n  temporary folders left: {sorted(_temp_folders(out))}"
