"""The `selfsup` command: train, eval, generate, report, recipes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from selfsup import config as config_mod

console = Console(soft_wrap=True)  # long lines stay whole in logs
err = Console(stderr=True)


def _keys_help() -> str:
    """Every config key with its default and meaning, for `selfsup train --help`."""
    defaults = config_mod.RunConfig().model_dump(mode="json")
    lines = []
    for key in config_mod.all_keys():
        section, _, leaf = key.rpartition(".")
        owner = config_mod.RunConfig.model_fields[section].annotation if section else config_mod.RunConfig
        desc = owner.model_fields[leaf].description
        default = defaults[section][leaf] if section else defaults[leaf]
        lines.append(f"{key}={default}" + (f" - {desc}" if desc else ""))
    return "\n\n".join(lines)


app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Self-supervised pretraining: train a recipe, evaluate, sample, report.")


@app.command(epilog="Config keys (key=default - meaning):\n\n" + _keys_help())
def train(
    source: str = typer.Argument(..., help="a recipe name (see `selfsup recipes`), a YAML file, or a run directory "
                                            "to resume"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value settings, e.g. train.max_steps=2000"),
):
    """Train a recipe. Writes the run directory (out_dir): config.yaml, metrics.jsonl, summary.json,
    checkpoints/, model.safetensors, tokenizer.json, report.html. Running it again on a run directory (or with
    the same out_dir) resumes from the last checkpoint, also after the process was killed."""
    from selfsup.report import write_report
    from selfsup.train.trainer import train as run_training

    cfg = config_mod.load(source, overrides or [])
    summary = run_training(cfg, console)
    report = write_report(cfg.out_dir)
    _print_summary(summary)
    console.print(f"report: {report}")


def _print_summary(s: dict) -> None:
    table = Table(title=f"{s['recipe']}: {s['status']} after {s['steps']:,} steps", show_header=False)
    rows = [
        ("validation loss", f"{s['val_loss']:.4f}" if s["val_loss"] is not None else "-"),
        ("validation perplexity", f"{s['val_ppl']:.2f}" if s["val_ppl"] is not None else "-"),
        ("unigram baseline perplexity", f"{s['unigram_ppl']:.2f}"),
        ("parameters", f"{s['params'] / 1e6:.2f}M"),
        ("tokens seen", f"{s['tokens_seen']:,}"),
        ("throughput", f"{s['tokens_per_s']:,.0f} tokens/s"),
        ("MFU", f"{100 * s['mfu']:.1f}% of {s['peak_tflops']:.2f} TFLOP/s measured peak"),
        ("wall time", f"{s['wall_time_s']:.0f} s"),
        ("documents train / val", f"{s['data']['documents']['train']:,} / {s['data']['documents']['val']:,}"),
        ("skipped documents", ", ".join(f"{k}: {v}" for k, v in s["data"]["skipped"].items()) or "none"),
        ("non-finite steps skipped", str(s["nan_skipped_steps"])),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


@app.command()
def recipes():
    """List the built-in recipes, one line each."""
    for name, path in sorted(config_mod.recipe_files().items()):
        console.print(f"{name:<16} {config_mod.recipe_summary(path)}")


@app.command(name="eval")
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    task: str = typer.Option("perplexity", help="evaluation task: perplexity"),
    data: Optional[str] = typer.Option(None, help="held-out .txt/.jsonl file or folder (perplexity)"),
    batch_size: int = typer.Option(16, help="windows per forward pass"),
    device: str = typer.Option("auto", help="auto, cpu, cuda"),
):
    """Evaluate a trained run; prints a table and writes RUN_DIR/eval/<task>.json."""
    from rich.progress import track

    from selfsup.eval.perplexity import perplexity
    from selfsup.rundir import open_run
    from selfsup.train.trainer import resolve_device

    if task != "perplexity":
        raise config_mod.ConfigError(f"--task '{task}': expected one of: perplexity")
    if not data:
        raise config_mod.ConfigError("--data is required for --task perplexity (a held-out .txt/.jsonl file)")
    dev = resolve_device(device)
    cfg, objective, tok = open_run(run_dir, dev)
    result = perplexity(objective, tok, data, cfg.model.context, cfg.data.max_doc_chars, dev, batch_size,
                        progress=lambda it: track(it, description="perplexity", console=err))
    out = run_dir / "eval" / f"{task}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    table = Table(title=f"{task} on {data}")
    for col in ("tokens", "loss", "perplexity"):
        table.add_column(col, justify="right")
    table.add_row(f"{result['tokens']:,}", f"{result['loss']:.4f}", f"{result['perplexity']:.2f}")
    console.print(table)
    console.print(f"protocol: {result['protocol']}")
    if result["skipped"]:
        console.print(f"skipped documents: {result['skipped']}")
    console.print(f"written: {out}")


@app.command()
def generate(
    run_dir: Path = typer.Argument(..., help="a run directory of a causal LM"),
    prompt: str = typer.Option("", help="text to continue"),
    max_new_tokens: int = typer.Option(64, help="tokens to sample at most (stops early at end of text)"),
    temperature: float = typer.Option(0.8, help="softmax temperature; 0 is greedy"),
    top_k: int = typer.Option(50, help="sample among the k most likely tokens; 0 for all"),
    seed: Optional[int] = typer.Option(0, help="sampling seed, for repeatable samples"),
    device: str = typer.Option("auto", help="auto, cpu, cuda"),
):
    """Sample a continuation of a prompt from a trained causal LM."""
    from selfsup.generate import generate as sample
    from selfsup.rundir import open_run
    from selfsup.train.trainer import resolve_device

    cfg, objective, tok = open_run(run_dir, resolve_device(device))
    if cfg.objective != "clm":
        raise config_mod.ConfigError(f"'{run_dir}' trained objective '{cfg.objective}'; generate needs a causal LM")
    text = sample(objective.model, tok, prompt, max_new_tokens, temperature, top_k or None, seed)
    print(text)


@app.command(name="export")
def export_run(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    format: str = typer.Option("hf", "--format", help="hf: a directory transformers loads with its Auto classes "
                               "(the GPT maps onto Llama); safetensors: weights + config.yaml + tokenizer.json"),
    out: Path = typer.Option(..., help="output directory"),
):
    """Export the trained model for other tools."""
    import torch

    from selfsup.export import export
    from selfsup.rundir import open_run

    cfg, objective, _ = open_run(run_dir, torch.device("cpu"))
    console.print(f"exported to {export(run_dir, cfg, objective, format, out)}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory")):
    """(Re)write RUN_DIR/report.html: loss, learning-rate and throughput plots, config and summary."""
    from selfsup.report import write_report

    console.print(f"report: {write_report(run_dir)}")


def main() -> None:
    from selfsup.data.text import DataError
    from selfsup.export import ExportError
    from selfsup.rundir import RunDirError
    from selfsup.train.trainer import TrainingError

    try:
        app()
    except (config_mod.ConfigError, DataError, ExportError, RunDirError, TrainingError) as e:
        err.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
