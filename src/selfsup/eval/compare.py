"""What `selfsup compare` puts side by side: each finished run's summary and the evaluations it holds that measure
accuracy (RUN_DIR/eval/*.json with a pretrained model's accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

from selfsup.rundir import RunDirError


def read_runs(run_dirs: list[Path]) -> tuple[list[tuple[Path, dict, dict]], list[str]]:
    """(run, summary, {task: result}) per run, and the tasks found in any of them, in order of first appearance."""
    rows, tasks = [], []
    for run in run_dirs:
        summary_path = run / "summary.json"
        if not summary_path.is_file():
            raise RunDirError(f"'{run}' has no summary.json: expected a finished run directory")
        s = json.loads(summary_path.read_text())
        evals = {}
        for f in sorted((run / "eval").glob("*.json")):
            r = json.loads(f.read_text())
            if "accuracy" in r.get("pretrained", {}):
                evals[f.stem] = r
                tasks += [f.stem] if f.stem not in tasks else []
        rows.append((run, s, evals))
    return rows, tasks
