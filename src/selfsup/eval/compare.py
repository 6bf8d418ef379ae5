"""What `selfsup compare` puts side by side: each finished run's summary, its own figures for every run kind
(validation loss, validation perplexity where the objective has one, the online probe's last accuracies) and the
evaluations it holds (RUN_DIR/eval/*.json), each by its headline figure: accuracy, retrieval's mean recall, or
perplexity."""

from __future__ import annotations

import json
from pathlib import Path

from selfsup.rundir import RunDirError
from selfsup.train.monitor import read_metrics

PROBES = ("probe_knn_acc", "probe_linear_acc")  # what the trainer's online probe logs


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise RunDirError(f"'{path}' is not readable JSON ({e}): expected the file selfsup wrote there; "
                          "delete it or write it again") from None
    if not isinstance(data, dict):
        raise RunDirError(f"'{path}' holds {type(data).__name__}, expected a JSON object")
    return data


def headline(result: dict, model: str) -> str | None:
    """An evaluation's one figure for `model` (pretrained, random or pixels), or None where it has none."""
    if result.get("task") == "perplexity":  # one model, no baselines
        return f"ppl {result['perplexity']:.2f}" if model == "pretrained" else None
    r = result.get(model)
    if not isinstance(r, dict):
        return None
    if "accuracy" in r:  # linear, knn, finetune, zeroshot
        return f"{100 * r['accuracy']:.1f}%"
    if "mean_recall" in r:  # retrieval
        return f"R {100 * r['mean_recall']:.1f}%"
    return None


def _fmt(v, form: str) -> str:
    return form.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def run_figures(run: Path, s: dict) -> dict[str, str]:
    """The run's own columns: validation loss and perplexity from its summary, the probe's last logged accuracies."""
    last = {}
    for row in read_metrics(run / "metrics.jsonl"):
        last |= {k: 100 * row[k] for k in PROBES if isinstance(row.get(k), (int, float))}
    return {"val loss": _fmt(s.get("val_loss"), "{:.4f}"), "val ppl": _fmt(s.get("val_ppl"), "{:.2f}"),
            "probe kNN": _fmt(last.get("probe_knn_acc"), "{:.1f}%"),
            "probe linear": _fmt(last.get("probe_linear_acc"), "{:.1f}%")}


def read_runs(run_dirs: list[Path]) -> tuple[list[tuple[Path, dict, dict, dict]], list[str]]:
    """(run, summary, its own figures, {task: result}) per run, and the tasks with a headline figure found in any of
    them, in order of first appearance."""
    rows, tasks = [], []
    for run in run_dirs:
        summary_path = run / "summary.json"
        if not summary_path.is_file():
            raise RunDirError(f"'{run}' has no summary.json: expected a finished run directory")
        s = _read(summary_path)
        evals = {}
        for f in sorted((run / "eval").glob("*.json")):
            r = _read(f)
            if headline(r, "pretrained") is not None:
                evals[f.stem] = r
                tasks += [f.stem] if f.stem not in tasks else []
        rows.append((run, s, run_figures(run, s), evals))
    return rows, tasks
