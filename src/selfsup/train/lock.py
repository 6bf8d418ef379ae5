"""One trainer per run directory. Rank 0 of a run claims the directory before it reads or writes anything: it
checks that out_dir can be a run directory (a new or empty folder, or a run to resume; never a file or a folder of
someone else's files) and creates RUN/.lock, holding it until the run ends.

    RUN/.lock    {"pid": 4121, "host": "node7", "started": 183022, "since": "2026-12-02T10:14:03", "command": "..."}

A second trainer on the same directory stops with a line naming the first. A lock whose process no longer runs
(killed with -9, or a machine that rebooted) is stale: the next trainer on that host takes it over, saying so.
`started` is the process's start time (Linux /proc), so a recycled pid is not taken for the trainer that died.
A lock held from another host cannot be checked from here; the message names it and says what to do.
"""

from __future__ import annotations

import json
import shlex
import os
import socket
import sys
import time
from pathlib import Path

from selfsup.config import ConfigError
from selfsup.train.errors import TrainingError

LOCK = ".lock"


class LockedError(TrainingError):
    """Another trainer holds the run directory; the message names it."""


class RunLock:
    def __init__(self, run_dir: Path, created: bool):
        self.path = run_dir / LOCK
        self.created = created  # the directory was made by this claim: an invalid run removes it again

    def release(self, remove_empty: bool = False) -> None:
        """Give the directory up (idempotent); `remove_empty`: also remove a directory this claim made, if nothing
        but the lock was written into it."""
        if _holder(self.path).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        run_dir = self.path.parent
        if remove_empty and self.created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()


def claim(run_dir: Path, say=print) -> RunLock:
    """Check that `run_dir` can hold this run and lock it; one line (ConfigError, LockedError) when it cannot."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"out_dir '{run_dir}' is a file; expected a folder for the run (a new or empty one, or a "
                          "run directory to resume)")
    if run_dir.is_dir():
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
        if foreign and not (run_dir / "config.yaml").is_file():
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ConfigError(f"out_dir '{run_dir}' holds files that are not a selfsup run ({shown}); expected a new "
                              "or empty folder, or a run directory to resume")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _create(run_dir / LOCK, say)
    except PermissionError:
        raise ConfigError(f"out_dir '{run_dir}': no permission to write there; expected a folder this user can "
                          "write") from None
    except OSError as e:
        raise ConfigError(f"out_dir '{run_dir}': cannot write there ({e.strerror or e}); expected a writable "
                          "folder") from None
    return RunLock(run_dir, created)


def _create(path: Path, say) -> None:
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
                     "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": shlex.join(["selfsup", *sys.argv[1:]])})
    for _ in range(3):  # a stale lock taken over by another trainer between our two looks: look again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # atomic: one of two racing trainers
        except FileExistsError:
            holder = _holder(path)
            if _alive(holder):
                raise LockedError(_held_message(path, holder)) from None
            try:  # exactly one of several trainers that found it stale gets to move it away
                os.rename(path, path.with_name(f"{LOCK}.stale-{os.getpid()}"))
            except FileNotFoundError:
                continue
            path.with_name(f"{LOCK}.stale-{os.getpid()}").unlink()
            say(f"took over the lock of a trainer that no longer runs (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('since')})")
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return
    raise LockedError(_held_message(path, _holder(path)))


def _held_message(path: Path, holder: dict) -> str:
    where = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
    other_host = holder.get("host") != socket.gethostname()
    hint = (f"if that process is gone, delete {path} and start again" if other_host
            else "wait for it to finish, stop it, or train into another out_dir")
    return f"'{path.parent}' is being trained by another process ({where}: {holder.get('command')}); {hint}"


def _holder(path: Path) -> dict:
    """What a lock file says about its trainer; {} when it is missing or unreadable (a half-written lock of a
    trainer killed while writing it: stale)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(holder: dict) -> bool:
    """Whether the lock's trainer may still run: on this host, its pid runs with the same start time; on another
    host, we cannot tell, so it may."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        pass
    state, started = _stat(pid)
    if state == "Z":  # killed, not yet reaped by its parent
        return False
    return holder.get("started") is None or holder.get("started") == started


def _start_time(pid: int) -> int | None:
    return _stat(pid)[1]


def _stat(pid: int) -> tuple[str | None, int | None]:
    """The process's state letter and start time in clock ticks since boot (Linux /proc); (None, None) elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # the name before ")" may hold spaces
    except OSError:
        return None, None
    return fields[0], int(fields[19])  # fields 3 and 22
