"""write_report: one self-contained HTML page from whatever a run directory holds."""

import base64
import json
import re
import sys

import pytest

from selfsup.cli import main
from selfsup.report import write_report

CONFIG = """\
recipe: gpt-clm
objective: clm
data:
  path: builtin:python-docstrings
train:
  max_steps: 40
"""

SUMMARY = {
    "steps": 40,
    "tokens_seen": 1234567,
    "tokens_per_s": 98765.4321,
    "mfu": 0.4213,
    "val_loss": 3.14159,
    "val_ppl": 23.1406926,
    "data": {"documents": {"train": 950, "val": 50}, "skipped": {"empty": 3, "invalid_utf8": 1}},
    "status": "finished",
}


def _metrics(n=40, val_every=10):
    rows = []
    for step in range(1, n + 1):
        row = {"step": step, "loss": 5.0 - step * 0.05, "lr": 1e-3 * min(1, step / 10),
               "tokens_per_s": 1000.0 + step, "mfu": 0.3 if step > 1 else None,
               "grad_norm": 1.0, "time": step * 0.1}
        if step % val_every == 0:
            row.update(val_loss=4.9 - step * 0.05, val_ppl=100.0)
        rows.append(json.dumps(row))
    return "\n".join(rows) + "\n"


def _images(page):
    return re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def _titles(page):
    return re.findall(r'<img alt="([^"]*)"', page)


def test_full_run(tmp_path):
    run = tmp_path / "run-1"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(_metrics())
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    (run / "config.yaml").write_text(CONFIG)
    (run / "eval" / "ppl.json").write_text(json.dumps(
        {"task": "perplexity", "loss": 3.5, "perplexity": 33.115, "tokens": 20480, "protocol": "strided"}))

    out = write_report(run)
    assert out == run / "report.html" and out.is_file()
    page = out.read_text(encoding="utf-8")

    images = _images(page)
    assert _titles(page) == ["Loss", "Validation perplexity", "Learning rate", "Throughput (tokens/s)", "MFU",
                             "Gradient norm"]  # MFU apart from throughput: one line never hides the other
    assert all(base64.b64decode(b).startswith(b"\x89PNG") for b in images)
    assert "<title>run-1 \u2014 gpt-clm</title>" in page
    # self-contained: nothing fetched from elsewhere
    assert "<script" not in page and "<link" not in page and "http" not in page
    assert "path: builtin:python-docstrings" in page and "max_steps: 40" in page
    # summary, formatted for humans, nested keys as paths
    for text in ("1,234,567", "98,765", "42.13%", "3.142", "23.14", "data.skipped.empty",
                 "data.documents.train", "finished"):
        assert text in page, text
    # eval table
    assert "<h3>ppl</h3>" in page
    for text in ("perplexity", "33.12", "20,480", "strided"):
        assert text in page, text


def test_truncated_metrics_and_no_summary(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(_metrics(n=5) + '{"step": 6, "loss": 4.')
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "5 logged steps" in page
    assert _titles(page)[0] == "Loss" and len(_images(page)) == 5  # no val points: the loss plot is still drawn
    assert "No summary.json yet" in page


def test_empty_run_dir(tmp_path):
    page = write_report(str(tmp_path)).read_text(encoding="utf-8")
    assert "No metrics yet" in page
    assert not _images(page)


def test_mfu_absent_and_empty_metrics_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    assert "No metrics yet" in write_report(tmp_path).read_text(encoding="utf-8")
    rows = [json.loads(r) | {"mfu": None} for r in _metrics(n=3).splitlines()]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)))
    assert "MFU" not in _titles(write_report(tmp_path).read_text(encoding="utf-8"))


def test_config_html_is_escaped(tmp_path):
    (tmp_path / "config.yaml").write_text('recipe: "<i>r</i>"\npath: "<b>x</b> & more"\n')
    (tmp_path / "summary.json").write_text(json.dumps({"note": "<script>alert(1)</script>"}))
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "&amp; more" in page
    assert "<i>r</i>" not in page
    assert f"<title>{tmp_path.name} \u2014 &lt;i&gt;r&lt;/i&gt;</title>" in page  # recipe parsed, escaped
    assert "<script" not in page


def test_rewrite_overwrites(tmp_path):
    write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(_metrics(n=3))
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "No metrics yet" not in page and len(_images(page)) == 5
    assert not list(tmp_path.glob("*.tmp"))


def test_every_logged_number_gets_a_plot(tmp_path):
    """A hybrid CLIP-like run logging everything at once: each numeric key in exactly one panel, each throughput
    unit in its own, collapse readings one per panel, the online probe's accuracies together."""
    rows = []
    for step in range(1, 31):
        row = {"step": step, "time": step * 0.1, "loss": 2.0, "lr": 1e-3, "pairs_per_s": 300.0 + step,
               "clips_per_s": 20.0, "mfu": 0.05, "grad_norm": 0.5, "logit_scale": 14.3, "pair_acc": 0.5,
               "mlm_loss": 3.0, "mlm_weight": 1.0, "contrast_loss": 1.0, "contrast_weight": 0.5, "flag": True}
        if step % 10 == 0:
            row |= {"collapse_rankme": 9.0, "collapse_std": 0.1, "collapse_alignment": 0.4,
                    "collapse_uniformity": -3.0, "probe_knn_acc": 0.4, "probe_linear_acc": 0.5, "val_loss": 2.1}
        if step == 20:
            row |= {"collapse_warning": "collapsing", "loss": float("nan")}
        rows.append(json.dumps(row))
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    page = write_report(tmp_path).read_text(encoding="utf-8")
    titles = _titles(page)
    assert titles == [
        "Loss", "Hybrid terms: loss of each", "Hybrid terms: weight of each", "Learning rate",
        "Throughput (pairs/s)", "Throughput (clips/s)", "MFU", "Gradient norm", "Online probe accuracy",
        "Collapse monitor: effective rank (RankMe)", "Collapse monitor: std of normalised embeddings",
        "Collapse monitor: alignment of two views", "Collapse monitor: uniformity", "logit_scale", "pair_acc"]
    assert all(base64.b64decode(b).startswith(b"\x89PNG") for b in _images(page))
    assert '<div class="plots">' in page and "Collapse warnings at 1 reading(s)" in page


def _finished(root, name, objective, val_ppl=None, evals=(), probe=None):
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"objective": objective, "steps": 300, "wall_time_s": 61.2,
                                                  "val_loss": 3.25, "val_ppl": val_ppl}))
    rows = [{"step": 100, "loss": 3.0}, {"step": 200, "loss": 2.0} | (probe or {}), {"step": 300, "loss": 1.0}]
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    for task, result in evals:
        (run / "eval" / f"{task}.json").write_text(json.dumps(result))
    return run


def _compare(monkeypatch, capsys, runs):
    """`selfsup compare RUNS` through the real entry point: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["selfsup", "compare", *map(str, runs)])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if f"│ {name} " in line)


def test_compare_shows_perplexity_and_probe_for_every_run_kind(tmp_path, monkeypatch, capsys):
    """A language run's perplexity (its validation split's, and an evaluation's), an image run's kNN accuracy beside
    its baselines, a CLIP run's retrieval recall: every kind of run has figures in the table, none only dashes."""
    runs = [_finished(tmp_path, "gpt", "clm", val_ppl=25.79, probe={"probe_knn_acc": 0.412, "probe_linear_acc": 0.5},
                      evals=[("perplexity", {"task": "perplexity", "loss": 3.5, "perplexity": 33.115})]),
            _finished(tmp_path, "dino", "dino", probe={"probe_knn_acc": 0.873}, evals=[(
                "knn", {"task": "knn", "pretrained": {"accuracy": 0.9}, "random": {"accuracy": 0.3},
                        "pixels": {"accuracy": 0.5}})]),
            _finished(tmp_path, "clip", "clip", evals=[(
                "retrieval", {"task": "retrieval", "pretrained": {"mean_recall": 0.625}})])]
    code, out, _ = _compare(monkeypatch, capsys, runs)
    assert code in (0, None), out
    runs_table, evals_table = out.split("evaluations (RUN_DIR/eval/*.json)")
    # val loss, val ppl, probe kNN, probe linear: a language run's perplexity and probe too (it was all "-")
    assert re.search(r"gpt \(clm\) .*300, 61 s .*3\.2500 .*25\.79 .*41\.2% .*50\.0% ", _row(runs_table, "gpt"))
    assert re.search(r"dino .*3\.2500 .* - .*87\.3% .* - ", _row(runs_table, "dino"))
    assert re.search(r"clip .*3\.2500 .* - .* - .* - ", _row(runs_table, "clip"))
    assert re.search(r"gpt \(clm\) .*perplexity .*ppl 33\.12 .* - .* - ", _row(evals_table, "gpt"))
    assert re.search(r"dino .*knn .*90\.0% .*30\.0% .*50\.0% ", _row(evals_table, "dino"))
    assert re.search(r"clip .*retrieval .*R 62\.5% ", _row(evals_table, "clip"))

    (runs[2] / "eval" / "retrieval.json").write_text('{"task": "retr')  # a torn file: one line, no traceback
    code, out, err = _compare(monkeypatch, capsys, runs)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "retrieval.json' is not readable JSON" in err, err
