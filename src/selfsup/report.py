"""Render a run directory into one self-contained HTML report.

`write_report(run_dir)` reads what a training run leaves behind -- `metrics.jsonl`,
`summary.json`, `config.yaml` and `eval/*.json`, any of which may be missing -- and
(re)writes `run_dir/report.html`: a plot of every number metrics.jsonl holds (loss beside validation loss;
throughput per unit, MFU, collapse readings, probe accuracies each on an axis of their own) as inline base64 PNGs
in a grid, the summary and eval figures as tables, and the config verbatim.
The page needs no network (no external CSS, JS or fonts), so it can be opened from
a copied run directory anywhere. `summary_table(summary)` is the short form printed when training ends.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path

import yaml

# Figure/savefig directly (no pyplot): no global backend switch, no figure registry to
# leak, and safe to call from a training process that has its own matplotlib setup.
from matplotlib.figure import Figure
from rich.table import Table

from selfsup.config import TEXT_OBJECTIVES
from selfsup.files import replace_text
from selfsup.models.hf.folder import described
from selfsup.train.monitor import read_metrics

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
h1, .meta, .note { overflow-wrap: anywhere; } .meta, .note { color: #666; } img { max-width: 100%; display: block; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 26em), 1fr)); gap: .6em 1em; }
figure { margin: 0; min-width: 0; }
table { border-collapse: collapse; margin: .4em 0; max-width: 100%; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; vertical-align: top; }
th { white-space: nowrap; } td { overflow-wrap: anywhere; }  /* a long path breaks rather than widen the page */
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 12px; }
"""


def _read_json(path: Path) -> dict | str | None:
    """The JSON dict, None if absent, or an error message if unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        return f"could not read {path.name}: {e}"
    return data if isinstance(data, dict) else {"value": data}


def _fmt(key: str, v) -> str:
    """A number as a human reads it: 1,234,567 / 0.0003 / 3.142 / 42.13%."""
    if v is None:
        return "\u2014"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return json.dumps(v) if isinstance(v, list) else str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if key.rsplit(".", 1)[-1] == "mfu":  # logged as a fraction, read as a percentage
        return f"{100 * v:.4g}%"
    if isinstance(v, int):
        return f"{v:,}"
    # 4 significant digits, but never scientific notation for big throughputs/counts.
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts as (dotted.key.path, value) rows."""
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        rows += _flatten(v, key + ".") if isinstance(v, dict) and v else [(key, v)]
    return rows


def _table(d: dict) -> str:
    cells = []
    for k, v in _flatten(d):
        cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
        cells.append(f"<tr><th>{html.escape(k)}</th><td{cls}>{html.escape(_fmt(k, v))}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) for the rows where `key` holds a finite number."""
    pts = [(r["step"], r[key]) for r in rows if _number(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Known keys' titles and legend labels; any other key is plotted under its own name.
_COLLAPSE = {"collapse_rankme": ("Collapse monitor: effective rank (RankMe)", "effective rank"),
             "collapse_std": ("Collapse monitor: std of normalised embeddings", "per-dimension std"),
             "collapse_alignment": ("Collapse monitor: alignment of two views", "mean squared distance"),
             "collapse_uniformity": ("Collapse monitor: uniformity", "log mean Gaussian potential")}
_LABELS = {"loss": "train", "val_loss": "validation", "val_loss_old": "validation, old domain",
           "probe_knn_acc": "kNN", "probe_linear_acc": "linear probe"}


def _panels(rows: list[dict]) -> list[tuple[str, str, list[str]]]:
    """(title, y label, keys) of each plot: every numeric key the run logged (but step and time, the axes) lands in
    exactly one, each plot on its own axis so no curve hides another of another unit; same-unit curves share one."""
    left = list(dict.fromkeys(k for r in rows for k, v in r.items() if _number(v) and k not in ("step", "time")))
    panels = []

    def take(title: str, ylabel: str, keys: list[str]) -> None:
        keys = [k for k in keys if k in left]
        if keys:
            panels.append((title, ylabel, keys))
            left[:] = [k for k in left if k not in keys]

    take("Loss", "loss", ["loss", "val_loss", "val_loss_old"])
    take("Validation perplexity", "perplexity", ["val_ppl"])
    terms = [k[:-len("_weight")] for k in left if k.endswith("_weight")]  # a hybrid: each term's loss and weight
    take("Hybrid terms: loss of each", "term loss (per its own unit)", [f"{t}_loss" for t in terms])
    take("Hybrid terms: weight of each", "weight", [f"{t}_weight" for t in terms])
    take("Learning rate", "lr", ["lr"])
    for k in [k for k in left if k.endswith("s_per_s")]:  # tokens, images, pairs, clips: one plot per unit
        take(f"Throughput ({k[:-len('_per_s')]}/s)", f"{k[:-len('_per_s')]}/s", [k])
    take("MFU", "MFU (%)", ["mfu"])
    take("Gradient norm", "grad norm", ["grad_norm"])
    take("Online probe accuracy", "accuracy", [k for k in left if k.startswith("probe_") and k.endswith("_acc")])
    for k in [k for k in left if k.startswith("collapse_")]:
        take(*_COLLAPSE.get(k, (f"Collapse monitor: {k[len('collapse_'):]}", k)), [k])
    for k in list(left):  # an objective's own readings (logit scale, teacher temperature, ...), anything new
        take(k, k, [k])
    return panels


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    alt = html.escape(fig.axes[0].get_title())
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"></figure>'


def _plots(rows: list[dict]) -> list[str]:
    """The plots as <figure><img> tags, one per panel."""
    warned = [r["step"] for r in rows if r.get("collapse_warning")]
    out = []
    for title, ylabel, keys in _panels(rows):
        fig = Figure(figsize=(5.2, 3.0))
        ax = fig.add_subplot()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        for k in keys:
            steps, values = _series(rows, k)
            if k == "mfu":  # logged as a fraction, read as a percentage
                values = [100 * v for v in values]
            sparse = len(steps) <= 60  # validation, collapse and probe readings: points worth marking
            ax.plot(steps, values, "o-" if sparse else "-", ms=3, lw=1, label=_LABELS.get(k, k))
        if keys == ["val_ppl"]:
            ax.set_yscale("log")  # early perplexities are orders of magnitude above the final ones
        if title.startswith("Collapse monitor"):
            for step in warned:
                ax.axvline(step, color="tab:red", alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
        out.append(_png(fig))
    return out


def _render(run_dir: Path) -> str:
    e = html.escape
    rows = read_metrics(run_dir / "metrics.jsonl")
    summary = _read_json(run_dir / "summary.json")
    cfg_path = run_dir / "config.yaml"
    cfg_text = cfg_path.read_text(encoding="utf-8", errors="replace") if cfg_path.is_file() else None
    try:
        cfg = yaml.safe_load(cfg_text) if cfg_text else None
    except yaml.YAMLError:  # still shown verbatim below; only the title loses the recipe
        cfg = None
    recipe = cfg.get("recipe") if isinstance(cfg, dict) else None
    title = run_dir.name + (f" \u2014 {recipe}" if recipe else "")

    parts = [f"<h1>{e(title)}</h1>",
             f'<p class="meta">{e(str(run_dir))} &middot; report generated {e(time.strftime("%Y-%m-%d %H:%M:%S"))}</p>']

    if isinstance(summary, dict) and summary.get("started_from"):
        parts.append(f'<p class="meta">started from {e(described(summary["started_from"]))} (model.init)</p>')
    parts.append("<h2>Training</h2>")
    if rows:
        last = rows[-1]
        parts.append(f'<p class="meta">{len(rows):,} logged steps; latest step {e(_fmt("step", last["step"]))}'
                     + (f', loss {e(_fmt("loss", last["loss"]))}' if "loss" in last else "") + "</p>")
        parts.append('<div class="plots">' + "".join(_plots(rows)) + "</div>")
        warnings = [r for r in rows if r.get("collapse_warning")]
        if warnings:
            parts.append(f'<p class="note">Collapse warnings at {len(warnings)} reading(s) (red lines above); the '
                         f'last, at step {warnings[-1]["step"]}: {e(warnings[-1]["collapse_warning"])}</p>')
    else:
        parts.append('<p class="note">No metrics yet.</p>')

    parts.append("<h2>Summary</h2>")
    if summary is None:
        parts.append('<p class="note">No summary.json yet (run in progress or killed).</p>')
    elif isinstance(summary, str):
        parts.append(f'<p class="note">{e(summary)}</p>')
    else:
        parts.append(_table(summary))

    eval_files = sorted((run_dir / "eval").glob("*.json"))
    if eval_files:
        parts.append("<h2>Evaluations</h2>")
    for path in eval_files:
        res = _read_json(path)
        parts.append(f"<h3>{e(path.stem)}</h3>")
        parts.append(_table(res) if isinstance(res, dict) else f'<p class="note">{e(str(res))}</p>')

    parts.append("<h2>Config</h2>")
    parts.append(f"<pre>{e(cfg_text)}</pre>" if cfg_text is not None else '<p class="note">No config.yaml.</p>')

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """(Re)write `run_dir/report.html` from whatever the run has produced so far."""
    run_dir = Path(run_dir)
    out = run_dir / "report.html"
    replace_text(out, _render(run_dir))  # a browser reloading mid-run never sees half a page
    return out


def summary_table(s: dict) -> Table:
    """What `selfsup train` prints at the end: the summary.json of a run as a terminal table."""
    table = Table(title=f"{s['recipe']}: {s['status']} after {s['steps']:,} steps", show_header=False)
    unit, d = s["unit"], s["data"]
    rows = [("validation loss", f"{s['val_loss']:.4f}" if s["val_loss"] is not None else "-")]
    if unit == "token" and s["objective"] in TEXT_OBJECTIVES:  # a language model's loss
        rows += [("validation perplexity", f"{s['val_ppl']:.2f}" if s["val_ppl"] is not None else "-"),
                 ("unigram baseline perplexity", f"{s['unigram_ppl']:.2f}")]
    mfu = f"{100 * s['mfu']:.1f}% of {s['peak_tflops']:.2f} TFLOP/s measured peak" if s["mfu"] else "-"
    b = s.get("batch")
    if b:
        rows.append(("global batch", f"{b['global_batch']:,} = {b['per_process']} × {b['grad_accum']} accumulated × "
                                     f"{b['processes']} process(es); lr {b['lr']:.3g} ({b['lr_scaling']} scaling)"))
    rows += [
        ("parameters", f"{s['params'] / 1e6:.2f}M"),
        (f"{unit}s seen", f"{s[unit + 's_seen']:,}"),
        ("throughput", f"{s[unit + 's_per_s']:,.0f} {unit}s/s"),
        ("MFU", mfu),
        ("wall time", f"{s['wall_time_s']:.0f} s"),
        ("cost", _cost_line(s["cost"])),
    ]
    what = "documents" if unit == "token" else "images" if unit == "image" else "samples"
    rows.append((f"{what} train / val", f"{d[what]['train']:,} / {d[what]['val']:,}"))
    if d.get("replay"):
        rows.append(("replay", f"{100 * d['replay']['share']:g}% of each batch from {d['replay']['path']}"))
    if unit != "token":
        rows.append(("collapse warnings", str(s["collapse_warnings"])))
    rows.append((f"skipped {what}", ", ".join(f"{k}: {v}" for k, v in d["skipped"].items()) or "none"))
    if d.get("notes"):
        rows.append(("kept with notes", ", ".join(f"{k}: {v}" for k, v in d["notes"].items())))
    rows.append(("non-finite steps skipped", str(s["nan_skipped_steps"])))
    if s.get("started_from"):
        rows.append(("started from", described(s["started_from"])))
    for k, v in rows:
        table.add_row(k, v)
    return table


def _cost_line(c: dict) -> str:
    total = c["total_flops"] or 0
    flops = f"{total / 1e15:.3g} PFLOP, " if total >= 1e15 else f"{total / 1e12:.3g} TFLOP, " if total else ""
    return f"{flops}{c['device_hours']:.3g} device-hours, ~{c['energy_kwh']:.2g} kWh at {c['power_w']:g} W"
