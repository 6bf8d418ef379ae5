"""Online probes during training (issue 17, part 2): probe_knn_acc / probe_linear_acc in metrics.jsonl every
probe.every steps and at the end, equal to `selfsup eval --task knn|linear` on the same weights; the best probe's
weights kept in RUN_DIR/best/; one-line errors for wrong probe settings, before the run directory is written."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest
import torch
from rich.console import Console

from selfsup import config
from selfsup.config import ConfigError
from selfsup.data.builtin.labeled_docstrings import build as build_docstrings
from selfsup.data.errors import DataError
from selfsup.train import trainer
from selfsup.dist import Processes
from selfsup.train.probe import _recover, read_sets
from tests.conftest import TINY
from tests.test_cli import invoke
from tests.test_vision import TINY_VISION, digits_dir, records  # noqa: F401 (digits_dir: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_digits(digits_dir, tmp_path_factory):  # noqa: F811
    """A few digits per class, so a probe takes a fraction of a second: DIR/train (12 per class), DIR/test (6)."""
    root = tmp_path_factory.mktemp("small_digits")
    for split, n in (("train", 12), ("test", 6)):
        for cls in sorted((digits_dir / split).iterdir()):
            (root / split / cls.name).mkdir(parents=True)
            for png in sorted(cls.iterdir())[:n]:
                shutil.copy(png, root / split / cls.name / png.name)
    return root


def _train(recipe, out, *extra):
    text = io.StringIO()
    trainer.train(config.load(recipe, [f"out_dir={out}", *extra]), Console(file=text, width=200))
    return text.getvalue()


def _eval(run_dir, task, data, train="train", test="test"):
    invoke("eval", run_dir, "--task", task, "--train", data / train, "--test", data / test, "--device", "cpu")
    return json.loads((run_dir / "eval" / f"{task}.json").read_text())["pretrained"]["accuracy"]


def test_image_run_probes_at_every_n_steps_and_at_the_end_as_eval_scores_them(digits_dir, small_digits,  # noqa: F811
                                                                               tmp_path):
    out = tmp_path / "simclr"
    log = _train("simclr", out, f"data.path={digits_dir / 'train'}", *TINY_VISION, "train.max_steps=3",
                 "train.log_every=100", "train.eval_every=100", "optim.lr=0.01", f"probe.train={small_digits / 'train'}",
                 f"probe.test={small_digits / 'test'}", "probe.every=2", "probe.linear=true", "probe.keep_best=true")
    rows = [r for r in records(out) if "probe_knn_acc" in r]
    assert [r["step"] for r in rows] == [2, 3]  # every 2 steps, and the last
    assert all(0 <= r["probe_knn_acc"] <= 1 and 0 <= r["probe_linear_acc"] <= 1 and r["probe_s"] > 0 for r in rows)
    lines = re.findall(r"probe at step (\d+): kNN ([\d.]+)% \(k=20, cosine, T=0.07; 120 train / 60 test\), "
                       r"linear ([\d.]+)%.* in [\d.]+ s", log)
    assert [int(s) for s, _, _ in lines] == [2, 3], log
    assert [float(acc) for _, acc, _ in lines] == [round(100 * r["probe_knn_acc"], 1) for r in rows]

    # the last probe scored the final model as `selfsup eval` does
    assert _eval(out, "knn", small_digits) == rows[-1]["probe_knn_acc"]
    assert _eval(out, "linear", small_digits) == rows[-1]["probe_linear_acc"]

    # keep_best: the first step of the highest linear accuracy, its weights a run `selfsup eval` opens
    best = json.loads((out / "best" / "best.json").read_text())
    top = max(r["probe_linear_acc"] for r in rows)
    assert best["step"] == next(r["step"] for r in rows if r["probe_linear_acc"] == top)
    assert best["accuracy"] == top and best["metric"] == "probe_linear_acc"
    assert _eval(out / "best", "linear", small_digits) == top
    assert sorted(p.name for p in out.iterdir() if "best" in p.name) == ["best"]  # nothing left mid-swap


def test_text_run_probes_with_labeled_jsonl(corpus, tmp_path):
    data = tmp_path / "labeled"
    build_docstrings(data, classes=3, per_class=20)
    out = tmp_path / "gpt"
    _train("gpt-clm", out, f"data.path={corpus}", *TINY, "train.max_steps=3", "train.log_every=100",
           f"probe.train={data / 'train.jsonl'}", f"probe.test={data / 'test.jsonl'}", "probe.every=2")
    rows = [r for r in records(out) if "probe_knn_acc" in r]
    assert [r["step"] for r in rows] == [2, 3] and "probe_linear_acc" not in rows[0]
    assert not (out / "best").exists()
    assert _eval(out, "knn", data, "train.jsonl", "test.jsonl") == rows[-1]["probe_knn_acc"]


def test_wrong_probe_settings_stop_in_one_line_before_the_run_is_written(digits_dir, small_digits,  # noqa: F811
                                                                         tmp_path):
    with pytest.raises(ConfigError, match="probe.train is set but probe.test is not"):
        config.load("simclr", [f"probe.train={small_digits / 'train'}"])
    with pytest.raises(ConfigError, match="probe.every"):
        config.load("simclr", ["probe.every=0"])
    out = tmp_path / "run"
    with pytest.raises(DataError, match="missing"):
        _train("simclr", out, f"data.path={digits_dir / 'train'}", *TINY_VISION, "train.max_steps=1",
               f"probe.train={small_digits / 'train'}", f"probe.test={tmp_path / 'missing'}")
    assert not (out / "config.yaml").exists()
    sharded = config.load("simclr", [f"probe.train={small_digits / 'train'}", f"probe.test={small_digits / 'test'}",
                                     "dist.strategy=fsdp"])
    with pytest.raises(ConfigError, match="probe.train/probe.test run with dist.strategy=ddp"):
        read_sets(sharded, Processes(world=2), torch.device("cpu"))


def test_a_resumed_run_may_change_its_probe(digits_dir, small_digits, tmp_path):  # noqa: F811
    out, probe = tmp_path / "run", [f"probe.train={small_digits / 'train'}", f"probe.test={small_digits / 'test'}"]
    args = [f"data.path={digits_dir / 'train'}", *TINY_VISION, "train.log_every=100", "train.checkpoint_every=2"]
    _train("simclr", out, *args, "train.max_steps=2", *probe, "probe.every=2", "probe.keep_best=true")
    _train("simclr", out, *args, "train.max_steps=4", *probe, "probe.every=1", "probe.keep_best=true")
    rows = [r for r in records(out) if "probe_knn_acc" in r]
    assert [r["step"] for r in rows] == [2, 3, 4]
    best = json.loads((out / "best" / "best.json").read_text())  # the best over both sessions
    top = max(r["probe_knn_acc"] for r in rows)
    assert best["accuracy"] == top and best["step"] == next(r["step"] for r in rows if r["probe_knn_acc"] == top)


def test_a_best_left_mid_swap_is_put_back(tmp_path):
    (tmp_path / ".best-old").mkdir()
    (tmp_path / ".best-old" / "best.json").write_text(json.dumps({"step": 4, "accuracy": 0.5}))
    (tmp_path / ".best-tmp").mkdir()  # the new one, half-written
    assert _recover(tmp_path) == {"step": 4, "accuracy": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert _recover(tmp_path / "nothing") is None


def test_two_processes_probe_as_one(corpus, tmp_path):
    """With 2 processes each encodes half of the probe sets and rank 0 gathers them: the one-process figures."""
    from tests.test_distributed import CLM, _cli, _free_port
    from tests.conftest import why_failed

    data = tmp_path / "labeled"
    build_docstrings(data, classes=3, per_class=20)
    probe = [f"probe.train={data / 'train.jsonl'}", f"probe.test={data / 'test.jsonl'}", "probe.every=3",
             "probe.linear=true"]
    one, two = tmp_path / "one", tmp_path / "two"
    r = _cli("train", "gpt-clm", f"data.path={corpus}", f"out_dir={one}", *CLM, *probe, "train.batch_size=8")
    assert r.returncode == 0, why_failed(r)
    r = _cli("train", "gpt-clm", f"data.path={corpus}", f"out_dir={two}", *CLM, *probe, "train.batch_size=2",
             "train.grad_accum=2", "dist.nproc_per_node=2", f"dist.rdzv_endpoint=127.0.0.1:{_free_port()}")
    assert r.returncode == 0, why_failed(r)
    figures = [{r["step"]: (r["probe_knn_acc"], r["probe_linear_acc"]) for r in records(d) if "probe_knn_acc" in r}
               for d in (one, two)]
    assert sorted(figures[0]) == [3, 6] and figures[1] == figures[0]
    assert "probe at step 6: kNN" in r.stdout
