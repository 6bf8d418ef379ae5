"""Where else a run's records go besides metrics.jsonl (`log.to`): TensorBoard, Weights & Biases, MLflow, a CSV file.

Rank 0 alone writes. Every number of a record goes to each logger at the record's step; the run's resolved config
goes along as hyper-parameters. The packages are imported when a logger starts, never before (`pip install
'selfsup[log]'`).

Resuming: a resumed run restarts at its checkpoint's step and logs again the steps between it and the kill, as
metrics.jsonl does (they come out the same: a resume repeats the run). TensorBoard and the CSV file forget those
steps on resume (TensorBoard's purge_step, the CSV file cut back), so each step is there once, from the session that
reached it last. W&B and MLflow cannot forget a step (and W&B takes steps in order only), so they are sent only the
steps after the last one they took: `sent`, kept in RUN/loggers.json with their run ids, so a resumed run continues
the same W&B and MLflow run on the same step axis. A step W&B took but lost in a kill -9 (its writer is asynchronous)
is not sent again.

A logger that fails (a missing package, a full disk, a server away) says so in one line, once, and the run goes on
without it.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import time
from pathlib import Path

from selfsup.config import RunConfig
from selfsup.files import replace_text

INSTALL = "pip install 'selfsup[log]'"


class TensorBoard:
    """Event files in RUN/tensorboard (`tensorboard --logdir runs/` shows every run); the config as hparams."""

    package = "tensorboard"
    rewinds = True  # purge_step: readers drop what an earlier session wrote from the resumed step on

    def __init__(self, run_dir: Path, cfg: RunConfig, start_step: int, state: dict):
        from torch.utils.tensorboard import SummaryWriter  # raises ImportError without the tensorboard package
        from torch.utils.tensorboard.summary import hparams

        # also a new run (start_step 0): a session killed before its first checkpoint may have left steps behind
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
        for summary in hparams(flat_config(cfg), {}):  # experiment, session start and end: the HParams tab
            self.writer.file_writer.add_summary(summary)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # watched live: every record is on disk when the next step starts

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A W&B run named after the run directory, in project WANDB_PROJECT (default selfsup); its id in loggers.json.
    WANDB_MODE=offline writes it under RUN/wandb (or WANDB_DIR) for `wandb sync`."""

    package = "wandb"
    rewinds = False

    def __init__(self, run_dir: Path, cfg: RunConfig, start_step: int, state: dict):
        import wandb

        state.setdefault("id", secrets.token_hex(6))  # a W&B run id: kept, so a resume continues the run
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "selfsup"), name=run_dir.name, id=state["id"],
                              resume="allow", dir=os.environ.get("WANDB_DIR", str(run_dir)),
                              config=cfg.model_dump(mode="json"), allow_val_change=True,  # a resume may change keys
                              settings=wandb.Settings(console="off"))  # our console is rich's: leave it alone

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    """An MLflow run named after the run directory, in experiment MLFLOW_EXPERIMENT_NAME (default selfsup), at
    MLFLOW_TRACKING_URI, by default a file store in RUN/mlruns (`mlflow ui --backend-store-uri RUN/mlruns`); its id in
    loggers.json. The config is logged as params when the run is created (params cannot change; what a resume
    changed is in RUN/history.jsonl)."""

    package = "mlflow"
    rewinds = False

    def __init__(self, run_dir: Path, cfg: RunConfig, start_step: int, state: dict):
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the file store is in "maintenance mode" since MLflow 3.7 and refused unless allowed
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.client, self.metric = MlflowClient(tracking_uri=uri), Metric
        if "run_id" in state:
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")  # raises if this store does not hold it
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "selfsup")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in flat_config(cfg).items()])
        state["run_id"] = self.run_id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(k, v, now, step) for k, v in scalars.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Csv:
    """RUN/metrics.csv: a row per record, a column per metric (a metric first seen later widens the file)."""

    package = None
    rewinds = True  # cut back to the resumed step, as metrics.jsonl

    def __init__(self, run_dir: Path, cfg: RunConfig, start_step: int, state: dict):
        self.path = run_dir / "metrics.csv"
        rows = [r for r in self._rows() if float(r["step"]) <= start_step]
        self.columns = list(rows[0]) if rows else ["step"]
        self._write(rows)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        row = {"step": step, **scalars}
        if set(row) - set(self.columns):
            self.columns += [k for k in row if k not in self.columns]
            self._write([*self._rows(), row])
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def _rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _write(self, rows: list[dict]) -> None:
        """The whole file at once: a run killed meanwhile keeps the old one."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def close(self) -> None:
        pass


LOGGERS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow, "csv": Csv}  # log.to's names


class Loggers:
    """The run's loggers (`names`: none on processes other than rank 0), started at `start_step`, the step the run
    resumes from (0 for a new run). `warn` prints a line."""

    def __init__(self, names: list[str], run_dir: Path, cfg: RunConfig, start_step: int, warn):
        self.path, self.warn, self.live = run_dir / "loggers.json", warn, {}
        self.state = json.loads(self.path.read_text()) if names and self.path.is_file() else {}
        for name in dict.fromkeys(names):
            kind = LOGGERS[name]
            try:
                self.live[name] = kind(run_dir, cfg, start_step, self.state.setdefault(name, {}))
            except ImportError as e:
                if kind.package and (e.name or "").split(".")[0] == kind.package:
                    warn(f"log.to={name}: the {kind.package} package is not installed; {INSTALL}")
                else:
                    warn(f"log.to={name}: could not start ({_why(e)}); the run goes on without it")
            except Exception as e:
                warn(f"log.to={name}: could not start ({_why(e)}); the run goes on without it")
        self._save()

    def log(self, record: dict) -> None:
        """Every number of `record` (a line of metrics.jsonl) to every logger still working."""
        step = record["step"]
        scalars = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        sent = False
        for name, logger in list(self.live.items()):
            state = self.state[name]
            if not logger.rewinds and step <= state.get("sent", 0):
                continue  # taken before the kill; the resumed run computes the same
            try:
                logger.log(step, scalars)
            except Exception as e:
                self._drop(name, f"stopped logging at step {step} ({_why(e)})")
                continue
            if not logger.rewinds:
                state["sent"], sent = step, True
        if sent:
            self._save()

    def close(self) -> None:
        for name in list(self.live):
            try:
                self.live.pop(name).close()
            except Exception as e:
                self.warn(f"log.to={name}: could not finish ({_why(e)})")

    def _drop(self, name: str, why: str) -> None:
        self.warn(f"log.to={name}: {why}; the run goes on without it")
        try:  # let it release what it holds (a W&B process, a file); it is failing already, so quietly
            self.live.pop(name).close()
        except Exception:
            pass

    def _save(self) -> None:
        """RUN/loggers.json, replaced whole: {name: {"id" or "run_id": ..., "sent": last step taken}}. The loggers
        that need it to resume stop if it cannot be written (they would send steps twice, or to another run)."""
        kept = {name: state for name, state in self.state.items() if state}
        if not kept:
            return
        try:
            replace_text(self.path, json.dumps(kept, indent=1) + "\n")
        except OSError as e:
            for name in [n for n, logger in self.live.items() if not logger.rewinds]:
                self._drop(name, f"cannot keep its run id and step in {self.path} ({_why(e)})")


def flat_config(cfg: RunConfig) -> dict[str, str | int | float | bool]:
    """The resolved config as dotted keys; lists, dicts and None as text (what hyper-parameter tables take)."""
    def walk(tree: dict, prefix: str):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield prefix + key, value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return dict(walk(cfg.model_dump(mode="json"), ""))


def _why(e: Exception) -> str:
    """An exception as one short line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__
