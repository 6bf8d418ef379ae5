"""What a person sees while a run trains: a progress bar with loss, throughput and ETA (on a terminal; otherwise a
plain line per record, as in `> train.log`), and `metrics.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from selfsup.files import replace_text
from selfsup.progress import Progress


class Monitor:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, console: Console, unit: str = "token",
                 write: bool = True):
        """write=False (processes other than rank 0): nothing is written."""
        self.unit = unit
        self.path = run_dir / "metrics.jsonl"
        self.file = None
        if write:
            _truncate_after(self.path, start_step)  # a resumed run rewrites the steps after its checkpoint
            self.file = open(self.path, "a")
        self.console = console
        # every_s=0: one plain line per record (every train.log_every steps, and at validation and the last step)
        self.progress = Progress("step", total_steps, done=start_step, every_s=0, console=console, transient=False)

    def log(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.progress.update(record["step"], loss=f"loss {record['loss']:.4f}",
                             speed=f"{record[self.unit + 's_per_s']:,.0f} {self.unit}s/s")

    def say(self, text: str) -> None:
        self.progress.say(text)

    def close(self) -> None:
        self.progress.close()
        if self.file is not None:
            self.file.close()


def _truncate_after(path: Path, step: int) -> None:
    """Keep the steps up to `step`, replacing the file at once: a run killed meanwhile loses none of them."""
    if path.is_file():
        replace_text(path, "".join(json.dumps(r) + "\n" for r in read_metrics(path) if r["step"] <= step))


def read_metrics(path: Path) -> list[dict]:
    """Logged steps, skipping unparsable lines (a killed run can leave half a line)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                rows.append(row)
    return rows
