"""Render a run directory into one self-contained HTML report.

`write_report(run_dir)` reads what a training run leaves behind -- `metrics.jsonl`,
`summary.json`, `config.yaml` and `eval/*.json`, any of which may be missing -- and
(re)writes `run_dir/report.html`: plots of loss (and a hybrid's terms), learning rate and throughput as
inline base64 PNGs, the summary and eval figures as tables, and the config verbatim.
The page needs no network (no external CSS, JS or fonts), so it can be opened from
a copied run directory anywhere. `summary_table(summary)` is the short form printed when training ends.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from pathlib import Path

import yaml

# Figure/savefig directly (no pyplot): no global backend switch, no figure registry to
# leak, and safe to call from a training process that has its own matplotlib setup.
from matplotlib.figure import Figure
from rich.table import Table

from selfsup.config import TEXT_OBJECTIVES
from selfsup.train.monitor import read_metrics

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta, .note { color: #666; } img { max-width: 100%; display: block; margin: .6em 0; }
table { border-collapse: collapse; margin: .4em 0; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; vertical-align: top; }
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
    """(steps, values) for the rows where `key` holds a number."""
    pts = [(r["step"], r[key]) for r in rows
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [p[0] for p in pts], [p[1] for p in pts]


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    alt = html.escape(fig.axes[0].get_title())
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def _new_axes(title: str, ylabel: str):
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _plots(rows: list[dict]) -> list[str]:
    """The plots as <img> tags, each only when its data was logged."""
    out = []
    (s, loss), (vs, vloss) = _series(rows, "loss"), _series(rows, "val_loss")
    old_steps, oloss = _series(rows, "val_loss_old")
    if loss or vloss:
        fig, ax = _new_axes("Loss", "loss")
        if loss:
            ax.plot(s, loss, lw=1, label="train")
        if vloss:
            ax.plot(vs, vloss, "o-", ms=4, label="validation")
        if oloss:  # continual pretraining: the parent's data
            ax.plot(old_steps, oloss, "s-", ms=4, label="validation, old domain")
        ax.legend()
        out.append(_png(fig))
    terms = sorted({k[:-len("_weight")] for r in rows for k in r if k.endswith("_weight")})
    if terms:  # a hybrid: each term's own mean loss, and its weight on the right
        fig, ax = _new_axes("Hybrid terms", "term loss (per its own unit)")
        twin = ax.twinx()
        twin.set_ylabel("weight")
        for i, name in enumerate(terms):
            color = f"C{i}"
            ax.plot(*_series(rows, f"{name}_loss"), lw=1, color=color, label=f"{name} loss")
            twin.plot(*_series(rows, f"{name}_weight"), lw=1, ls="--", color=color, label=f"{name} weight")
        ax.legend(loc="upper right")
        out.append(_png(fig))
    s, lr = _series(rows, "lr")
    if lr:
        fig, ax = _new_axes("Learning rate", "lr")
        ax.plot(s, lr, lw=1)
        out.append(_png(fig))
    unit = "images" if any("images_per_s" in r for r in rows) else "tokens"
    (s, tps), (ms, mfu) = _series(rows, f"{unit}_per_s"), _series(rows, "mfu")
    if tps:
        fig, ax = _new_axes("Throughput", f"{unit}/s")
        lines = ax.plot(s, tps, lw=1, label=f"{unit}/s")
        if mfu:
            twin = ax.twinx()
            twin.set_ylabel("MFU (%)")
            lines += twin.plot(ms, [100 * m for m in mfu], lw=1, color="tab:orange", label="MFU %")
        ax.legend(lines, [ln.get_label() for ln in lines])
        out.append(_png(fig))
    (s, rank), (ss, std) = _series(rows, "collapse_rankme"), _series(rows, "collapse_std")
    if rank:
        fig, ax = _new_axes("Collapse monitor", "effective rank (RankMe)")
        lines = ax.plot(s, rank, "o-", ms=3, lw=1, label="effective rank of features")
        twin = ax.twinx()
        twin.set_ylabel("std of normalised embeddings")
        lines += twin.plot(ss, std, "o-", ms=3, lw=1, color="tab:orange", label="per-dimension std")
        for r in rows:
            if r.get("collapse_warning"):
                ax.axvline(r["step"], color="tab:red", alpha=0.3)
        ax.legend(lines, [ln.get_label() for ln in lines])
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

    parts.append("<h2>Training</h2>")
    if rows:
        last = rows[-1]
        parts.append(f'<p class="meta">{len(rows):,} logged steps; latest step {e(_fmt("step", last["step"]))}'
                     + (f', loss {e(_fmt("loss", last["loss"]))}' if "loss" in last else "") + "</p>")
        parts += _plots(rows)
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
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(_render(run_dir), encoding="utf-8")
    os.replace(tmp, out)  # atomic: a browser reloading mid-run never sees half a page
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
    for k, v in rows:
        table.add_row(k, v)
    return table


def _cost_line(c: dict) -> str:
    total = c["total_flops"] or 0
    flops = f"{total / 1e15:.3g} PFLOP, " if total >= 1e15 else f"{total / 1e12:.3g} TFLOP, " if total else ""
    return f"{flops}{c['device_hours']:.3g} device-hours, ~{c['energy_kwh']:.2g} kWh at {c['power_w']:g} W"
