"""log.to (train/loggers.py): each logger's own files read back with its own package, against metrics.jsonl."""

from __future__ import annotations

import csv
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from selfsup import config
from selfsup.train import loggers, trainer
from selfsup.objectives.clm import CausalLM
from tests.test_train import Killed, cfg_for, crash_after_step, quiet

pytestmark = pytest.mark.usefixtures("one_thread")
ALL = "log.to=[tensorboard,wandb,mlflow,csv]"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """W&B offline under the run directory, MLflow's default file store in it: nothing leaves the machine."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as the logger sets it, for the reading client here


def numbers(run_dir: Path) -> dict[int, dict[str, float]]:
    """metrics.jsonl: step -> every number the record holds."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k != "step" and isinstance(v, (int, float))} for r in rows}


def tensorboard(run_dir: Path) -> tuple[dict[int, dict[str, float]], dict]:
    """Scalars by step as TensorBoard shows them (earlier sessions' steps from a resumed step on purged), and the
    hparams."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    steps: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            assert tag not in steps.setdefault(event.step, {}), f"{tag} twice at step {event.step}"
            steps[event.step][tag] = event.value
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    hparams = {k: v.number_value or v.string_value for k, v in data.session_start_info.hparams.items()}
    return steps, hparams


def wandb_records(path: Path):
    """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte ':W&B' header, then 32 KiB blocks of chunks,
    each with a 7-byte header: crc32c, length, type full/first/middle/last) of wandb.proto Records."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, chunks = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        chunks = chunk if kind in (1, 2) else chunks + chunk
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(chunks)


def wandb_runs(run_dir: Path) -> tuple[set[str], dict[int, dict[str, float]], dict]:
    """Every offline session's folder: the run ids, the history by step, the config the first session sent."""
    ids, steps, cfg = set(), {}, {}
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
                cfg = cfg or {u.key: json.loads(u.value_json) for u in record.run.config.update}
            elif kind == "history":
                items = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                items = {k: v for k, v in items.items() if not k.startswith("_")}  # W&B's own _step, _runtime
                assert record.history.step.num not in steps, f"step {record.history.step.num} twice"
                steps[record.history.step.num] = items
    return ids, steps, cfg


def mlflow_run(run_dir: Path):
    """The one MLflow run in RUN/mlruns: its client and run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("selfsup")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def mlflow_steps(client, run) -> dict[int, dict[str, float]]:
    steps: dict[int, dict[str, float]] = {}
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            assert key not in steps.setdefault(m.step, {}), f"{key} twice at step {m.step}"
            steps[m.step][key] = m.value
    return steps


def csv_steps(run_dir: Path) -> dict[int, dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), steps
    return {int(r["step"]): {k: float(v) for k, v in r.items() if k != "step" and v != ""} for r in rows}


def same(got: dict[int, dict[str, float]], want: dict[int, dict[str, float]], rel: float) -> None:
    assert sorted(got) == sorted(want)
    for step, values in want.items():
        assert got[step] == pytest.approx(values, rel=rel), step


def test_every_logger_gets_every_number_of_every_record(corpus, tmp_path):
    out = tmp_path / "run"
    trainer.train(cfg_for(corpus, out, "train.max_steps=6", "train.log_every=2", "train.eval_every=3", ALL), quiet())
    want = numbers(out)
    assert sorted(want) == [2, 3, 4, 6] and "val_loss" in want[3] and "mfu" in want[2]

    scalars, hparams = tensorboard(out)
    same(scalars, want, rel=1e-6)  # TensorBoard keeps float32
    assert hparams["train.max_steps"] == 6 and hparams["log.to"] == '["tensorboard", "wandb", "mlflow", "csv"]'

    ids, history, wandb_cfg = wandb_runs(out)
    same(history, want, rel=1e-12)
    assert ids == {json.loads((out / "loggers.json").read_text())["wandb"]["id"]}
    assert wandb_cfg["train"]["max_steps"] == 6 and wandb_cfg["objective"] == "clm"

    client, run = mlflow_run(out)
    same(mlflow_steps(client, run), want, rel=1e-12)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "6" and run.data.params["model.dim"] == "32"

    same(csv_steps(out), want, rel=1e-12)


def test_a_resumed_run_logs_each_step_once_to_the_same_runs(corpus, tmp_path, monkeypatch):
    """Checkpoint at 3, killed after step 5 was logged: the resume logs 4 and 5 again into metrics.jsonl, TensorBoard
    (purged) and the CSV (cut back); W&B and MLflow took them already and get only 6-8."""
    out = tmp_path / "run"
    args = ["train.max_steps=8", "train.log_every=1", "train.eval_every=100", "train.checkpoint_every=3", ALL]
    undo = crash_after_step(monkeypatch, CausalLM, 6)
    with pytest.raises(Killed):
        trainer.train(cfg_for(corpus, out, *args), quiet())
    undo()
    ids_before = json.loads((out / "loggers.json").read_text())
    assert ids_before["wandb"]["sent"] == ids_before["mlflow"]["sent"] == 5
    assert sorted(csv_steps(out)) == [1, 2, 3, 4, 5]
    trainer.train(cfg_for(corpus, out, *args), quiet())
    ids_after = json.loads((out / "loggers.json").read_text())
    assert ids_after["wandb"]["id"] == ids_before["wandb"]["id"]
    assert ids_after["mlflow"]["run_id"] == ids_before["mlflow"]["run_id"]

    want = numbers(out)
    assert sorted(want) == list(range(1, 9))
    same(tensorboard(out)[0], want, rel=1e-6)
    same(csv_steps(out), want, rel=1e-12)
    ids, history, _ = wandb_runs(out)  # two offline folders (one per session) of one run
    client, run = mlflow_run(out)
    for steps in (history, mlflow_steps(client, run)):
        assert sorted(steps) == list(range(1, 9))  # once each: the killed session's 4 and 5 not sent again
        assert {s: v["loss"] for s, v in steps.items()} == pytest.approx({s: v["loss"] for s, v in want.items()},
                                                                         abs=1e-6)  # a resume repeats the run
    assert ids == {ids_before["wandb"]["id"]} and len(list((out / "wandb").glob("offline-run-*"))) == 2


def test_a_failing_or_missing_logger_warns_once_and_the_run_goes_on(corpus, tmp_path, monkeypatch):
    def full_disk(self, step, scalars):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loggers.Csv, "log", full_disk)
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as if it were not installed
    text = io.StringIO()
    out = tmp_path / "run"
    summary = trainer.train(cfg_for(corpus, out, "train.max_steps=4", "train.log_every=1", "log.to=[csv,wandb]"),
                            Console(file=text, width=300))
    assert summary["status"] == "finished" and sorted(numbers(out)) == [1, 2, 3, 4]
    lines = [line for line in text.getvalue().splitlines() if "log.to=" in line]
    assert lines == ["log.to=wandb: the wandb package is not installed; pip install 'selfsup[log]'",
                     "log.to=csv: stopped logging at step 1 (OSError: [Errno 28] No space left on device); the run "
                     "goes on without it"]


def test_log_to_is_a_list_of_known_loggers_that_a_resume_may_change():
    assert config.load("gpt-clm", ["log.to=wandb"]).log.to == ["wandb"]
    assert config.load("gpt-clm", []).log.to == []
    with pytest.raises(config.ConfigError, match=r"config key 'log.to\[1\]': got 'comet'; expected 'tensorboard', "
                                                 "'wandb', 'mlflow' or 'csv'"):
        config.load("gpt-clm", ["log.to=[csv,comet]"])
    assert "log.to" in config.MAY_CHANGE_ON_RESUME


def test_the_cli_and_the_trainer_import_no_logger_package():
    code = ("import sys\nfrom selfsup import cli\nimport selfsup.train.trainer\nsys.argv = ['selfsup', '--help']\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('wandb', 'mlflow', 'tensorboard') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"
