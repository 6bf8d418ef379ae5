"""Starting the processes of a run: one per device, under torchrun or started by `selfsup train` itself.

    torchrun --nproc-per-node 8 -m selfsup train RECIPE ...        the standard environment (RANK, WORLD_SIZE, ...)
    selfsup train RECIPE dist.nproc_per_node=2 [dist.nnodes=...]   the same, through torch's elastic launcher

Rank 0 alone writes the run directory, logs and progress; every rank reads its own rows of each global batch
(data/load/order.py) and averages gradients with DDP. Joining the process group is selfsup/dist.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

from rich.console import Console

from selfsup import dist
from selfsup.config import RunConfig
from selfsup.dist import under_launcher

LAUNCHED = "SELFSUP_LAUNCHED"


def train_or_launch(cfg: RunConfig, argv: list[str], console: Console, allow_changes: list[str] = ()) -> dict | None:
    """Train `cfg` in this process (alone, or as one worker under a launcher), or start the workers with `argv`
    and wait for them. Returns the summary where this process reports it; a worker that does not report ends here
    (end_worker), and a launcher on a machine other than the first returns None."""
    from selfsup.train.trainer import train

    if wants_launch(cfg):  # this process starts the workers, waits, then reports (the first machine's)
        launch(cfg, argv)
        if cfg.dist.node_rank != 0:
            return None
        return json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    summary = train(cfg, console, allow_changes)
    dist.teardown()
    if not reports(int(os.environ.get("RANK", 0))):
        end_worker(0 if LAUNCHED in os.environ else exit_status(summary))  # `selfsup train` itself reports
    return summary


def exit_status(summary: dict) -> int:
    """The process's exit status for a run that ended with `summary`: 0 when it finished; an interrupted run
    (checkpointed, resumable) exits as a process killed by its signal would, 128 + signal, so that `timeout`,
    schedulers and shell scripts see that it did not finish."""
    if summary.get("status") != "interrupted":
        return 0
    return 128 + (summary.get("signal") or signal.SIGTERM)


def reports(procs_rank: int) -> bool:
    """Whether this process prints the summary and writes the report: rank 0, unless `selfsup train` started the
    workers itself (then it reports)."""
    return procs_rank == 0 and LAUNCHED not in os.environ


def wants_launch(cfg: RunConfig) -> bool:
    """True when `selfsup train` should start the workers itself."""
    return not under_launcher() and (cfg.dist.nproc_per_node > 1 or cfg.dist.nnodes > 1)


def launch(cfg: RunConfig, argv: list[str]) -> None:
    """Run `python -m selfsup ARGV` in dist.nproc_per_node workers on this machine via torch's elastic launcher
    (what torchrun runs); returns when they finish, raises when one fails."""
    from torch.distributed.run import get_args_parser, run

    dist.resolve_device(cfg.train.device)  # a device this machine lacks fails here in one line, not in every worker
    d = cfg.dist
    args = ["--nproc-per-node", str(d.nproc_per_node), "--nnodes", str(d.nnodes), "--node-rank", str(d.node_rank),
            "--rdzv-endpoint", d.rdzv_endpoint, "--max-restarts", "0"]
    if d.nnodes > 1:
        run_id = hashlib.sha256(cfg.out_dir.encode()).hexdigest()[:12]  # one per run directory, alike on every machine
        args += ["--rdzv-backend", "c10d", "--rdzv-id", f"selfsup-{run_id}"]
    else:
        args += ["--master-addr", d.rdzv_endpoint.rpartition(":")[0], "--master-port",
                 d.rdzv_endpoint.rpartition(":")[2]]
    os.environ[LAUNCHED] = "1"  # the workers inherit it: this process prints the summary, not their rank 0
    run(get_args_parser().parse_args([*args, "-m", "selfsup", *argv]))


def end_worker(status: int = 0) -> None:
    """End a worker process of a multi-process run (no-op in a lone process) once its work is done and written,
    skipping the interpreter's final clean-up. There, gloo's threads may still hold work whose tensors
    reference Python objects, and freeing them while the interpreter is torn down aborts the process
    ('terminate called without an active exception', SIGABRT: about one FSDP run in 20 on CPU, measured), and the
    launcher then reports a finished run as failed."""
    if not under_launcher():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
