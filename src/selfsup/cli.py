"""The `selfsup` command: train, eval, generate, report, recipes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from selfsup import config as config_mod

console = Console(soft_wrap=True)  # long lines stay whole in logs
err = Console(stderr=True)
JOINT_TASKS = ("zeroshot", "retrieval")  # clip / siglip runs: in the joint media-text space


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
    the same out_dir) resumes from the last checkpoint, also after the process was killed. A finished run directory
    with continual.data=NEW (and continual.replay=SHARE) is continued on a new data stream in a new run directory
    (default RUN_DIR-continual), from its final weights, with the lr schedule warming up again."""
    from selfsup.report import write_report
    from selfsup.train import continual, distributed
    from selfsup.train.trainer import train as run_training

    cfg = continual.load_config(source, overrides or [])  # a recipe, a YAML, a run to resume or to continue
    if distributed.wants_launch(cfg):  # this process starts the workers, waits, then reports (the first machine's)
        distributed.launch(cfg, ["train", source, *(overrides or [])])
        if cfg.dist.node_rank != 0:
            return
        summary = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    else:
        summary = run_training(cfg, console)
        distributed.teardown()
        if not distributed.reports(int(os.environ.get("RANK", 0))):
            distributed.end_worker()
    report = write_report(cfg.out_dir)
    _print_summary(summary)
    console.print(f"report: {report}")
    distributed.end_worker()


def _print_summary(s: dict) -> None:
    table = Table(title=f"{s['recipe']}: {s['status']} after {s['steps']:,} steps", show_header=False)
    unit, d = s["unit"], s["data"]
    rows = [("validation loss", f"{s['val_loss']:.4f}" if s["val_loss"] is not None else "-")]
    if unit == "token" and s["objective"] in config_mod.TEXT_OBJECTIVES:  # a language model's loss
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
    console.print(table)


def _cost_line(c: dict) -> str:
    total = c["total_flops"] or 0
    flops = f"{total / 1e15:.3g} PFLOP, " if total >= 1e15 else f"{total / 1e12:.3g} TFLOP, " if total else ""
    return f"{flops}{c['device_hours']:.3g} device-hours, ~{c['energy_kwh']:.2g} kWh at {c['power_w']:g} W"


@app.command()
def recipes():
    """List the built-in recipes, one line each."""
    for name, path in sorted(config_mod.recipe_files().items()):
        console.print(f"{name:<16} {config_mod.recipe_summary(path)}")


@app.command(name="eval")
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    task: str = typer.Option("perplexity", help="perplexity (causal LM on held-out text); forgetting (a run made by "
                             "continual.data: its parent and it on the old and the new domain's held-out data, and "
                             "with --train/--test a linear probe of both); or a transfer task on "
                             "labeled data: linear (probe on frozen features), knn (weighted kNN on frozen "
                             "features), finetune (whole trunk + linear head); clip/siglip runs also: zeroshot "
                             "(classes named by prompts, --test only), retrieval (recall@1/5/10 both ways on "
                             "--test pairs)"),
    data: Optional[str] = typer.Option(None, help="held-out .txt/.jsonl file or folder (perplexity)"),
    train: Optional[str] = typer.Option(None, help="labeled data to train on (linear, knn, finetune): text runs "
                                        "take .jsonl ('text', 'label', see `selfsup data labeled-docstrings`), image, "
                                        "audio and video runs a folder with one sub-folder per class (see `selfsup "
                                        "data digits`, `selfsup data tones`) or a .jsonl with a 'label'"),
    test: Optional[str] = typer.Option(None, help="labeled data to score, same form as --train; retrieval: a "
                                       ".jsonl of pairs (or .tar shards) held out from training"),
    prompt: Optional[list[str]] = typer.Option(None, help="zeroshot: a prompt template with {label}, e.g. \"a photo "
                                               "of a {label}\"; repeatable, the class embedding averages them "
                                               "(default: a few generic templates per modality)"),
    baseline: Optional[list[str]] = typer.Option(None, help="random: also evaluate a randomly initialised model of "
                                                 "the same shape (the run's seed) and report the gain; pixels (image "
                                                 "runs, linear and knn): also the raw pixels of the same views. "
                                                 "Repeatable"),
    k: int = typer.Option(20, help="knn: neighbours that vote (the accuracy at k=200 is reported beside it)"),
    temperature: float = typer.Option(0.07, help="knn: votes are exp(cosine / temperature)"),
    epochs: int = typer.Option(10, help="finetune: most epochs (early stopping on a validation split)"),
    lr: float = typer.Option(3e-4, help="finetune: peak learning rate of the head and final norm"),
    layer_decay: float = typer.Option(0.75, help="finetune: learning rate × this per layer below the head"),
    patience: int = typer.Option(3, help="finetune: epochs without a better validation accuracy before stopping"),
    freeze_blocks: int = typer.Option(0, help="finetune: freeze the embeddings and the first N blocks"),
    l2sp: float = typer.Option(0.0, help="finetune: L2-SP strength, alpha/2 · |w - w_pretrained|^2 on the trunk "
                               "(keeps it near its pretrained weights; e.g. 0.01)"),
    batch_size: int = typer.Option(16, help="windows (perplexity), texts or images (other tasks) per forward pass"),
    device: str = typer.Option("auto", help="auto, cpu, cuda"),
):
    """Evaluate a trained run; prints a table and writes RUN_DIR/eval/<task>.json. Each transfer task states its
    protocol beside the numbers (kNN: cosine, k, temperature; linear: features, standardisation, L2 chosen on a
    validation split; finetune: optimiser, schedule, early stopping)."""
    from rich.progress import track

    from selfsup.eval.labeled import TASKS
    from selfsup.eval.perplexity import perplexity
    from selfsup.rundir import open_run
    from selfsup.train.trainer import resolve_device

    if task not in ("perplexity", "forgetting", *TASKS, *JOINT_TASKS):
        raise config_mod.ConfigError(f"--task '{task}': expected one of: perplexity, forgetting, {', '.join(TASKS)}, "
                                     f"{', '.join(JOINT_TASKS)}")
    if task == "forgetting":
        if baseline:
            raise config_mod.ConfigError("--baseline is for the transfer tasks: linear, knn, finetune")
        if bool(train) != bool(test):
            raise config_mod.ConfigError("--task forgetting: give both --train and --test (labeled data for a linear "
                                         "probe of the parent and the continued run), or neither")
        _forgetting(run_dir, resolve_device(device), batch_size, train, test)
        return
    baselines = baseline or []
    for name in baselines:
        if name not in ("random", "pixels"):
            raise config_mod.ConfigError(f"--baseline '{name}': expected random or pixels")
    if "pixels" in baselines and task not in ("linear", "knn"):
        raise config_mod.ConfigError(f"--baseline pixels is for --task linear and knn (got --task {task})")
    if task == "perplexity":
        if not data:
            raise config_mod.ConfigError("--data is required for --task perplexity (a held-out .txt/.jsonl file)")
        if baselines:
            raise config_mod.ConfigError("--baseline is for the transfer tasks: linear, knn, finetune")
    elif task in JOINT_TASKS:
        if not test:
            raise config_mod.ConfigError(f"--task {task} needs --test: " + (
                "labeled items (a folder of class sub-folders, or a .jsonl with a 'label')" if task == "zeroshot"
                else "held-out pairs (a .jsonl with the media path and 'text', or .tar shards)"))
        if "pixels" in baselines:
            raise config_mod.ConfigError(f"--baseline pixels is for --task linear and knn (got --task {task})")
    elif not (train and test):
        raise config_mod.ConfigError(f"--task {task} needs --train and --test: labeled .jsonl files with 'text' "
                                     "and 'label' (text runs, e.g. `selfsup data labeled-docstrings --out DIR`) or "
                                     "folders of class sub-folders (image runs, e.g. `selfsup data digits --out DIR`)")
    dev = resolve_device(device)
    cfg, objective, tok = open_run(run_dir, dev)
    if task == "perplexity" and cfg.objective != "clm":
        raise config_mod.ConfigError(f"--task perplexity scores a causal LM; '{run_dir}' trained objective "
                                     f"'{cfg.objective}' (use --task linear, knn or finetune)")
    out = run_dir / "eval" / f"{task}.json"
    if task in JOINT_TASKS:
        if cfg.objective not in config_mod.PAIR_OBJECTIVES:
            raise config_mod.ConfigError(f"--task {task} needs a joint media-text space (clip or siglip runs); "
                                         f"'{run_dir}' trained '{cfg.objective}'")
        result = _joint(task, run_dir, cfg, objective, tok, test, prompt, baselines, dev, batch_size)
    elif task != "perplexity":
        if "pixels" in baselines and cfg.modality != "image":
            raise config_mod.ConfigError(f"--baseline pixels is for image runs; '{run_dir}' trained "
                                         f"'{cfg.objective}' on {cfg.modality}")
        result = _transfer(task, run_dir, cfg, objective, tok, train, test, baselines, dev,
                           dict(batch_size=batch_size, seed=cfg.seed, k=k, temperature=temperature, epochs=epochs,
                                lr=lr, layer_decay=layer_decay, patience=patience, freeze_blocks=freeze_blocks,
                                l2sp=l2sp))
    if task != "perplexity":
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        console.print(f"written: {out}")
        return
    result = perplexity(objective, tok, data, cfg.model.context, cfg.data.max_doc_chars, dev, batch_size,
                        progress=lambda it: track(it, description="perplexity", console=err))
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


def _forgetting(run_dir: Path, dev, batch_size: int, train_path, test_path) -> None:
    """Parent and continued run on both domains' held-out data (and a linear probe of both): table and JSON."""
    from selfsup.eval.forgetting import forgetting
    from selfsup.eval.labeled import evaluate as run_task
    from selfsup.rundir import open_run

    result = forgetting(run_dir, dev, batch_size, log=lambda text: err.print(f"[dim]{text}"))
    causal = result["objective"] == "clm"
    table = Table(title=f"forgetting: {run_dir}, {result['steps']:,} steps on the new domain with replay "
                        f"{result['replay']:g}")
    for col in ("domain", "measure", "parent (before)", "continued (after)", "change"):
        table.add_column(col, justify="left" if col in ("domain", "measure") else "right", no_wrap=True)
    for domain in ("old", "new"):
        r = result[domain]
        b, a = r["parent"]["loss"], r["continued"]["loss"]
        table.add_row(domain, "loss", f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}", end_section=not causal)
        if causal:
            pb, pa = r["parent"]["perplexity"], r["continued"]["perplexity"]
            table.add_row("", "perplexity", f"{pb:.2f}", f"{pa:.2f}", f"{r['perplexity_change_pct']:+.1f}%",
                          end_section=True)
    if train_path:
        cfg, continued, tok = open_run(run_dir, dev)
        _, parent, _ = open_run(result["parent"], dev)
        train_set, inputs = _labeled_set(cfg, continued, tok, train_path)
        test_set, _ = _labeled_set(cfg, continued, tok, test_path, train_set.classes)
        probe = {name: run_task("linear", objective.model, inputs, train_set, test_set, dev, batch_size=batch_size,
                                seed=cfg.seed, progress=_progress)
                 for name, objective in (("parent", parent), ("continued", continued))}
        b, a = probe["parent"]["accuracy"], probe["continued"]["accuracy"]
        table.add_row("probe", "linear accuracy", f"{100 * b:.1f}%", f"{100 * a:.1f}%", f"{100 * (a - b):+.1f} pts")
        result["probe"] = dict(train=train_path, test=test_path, protocol=probe["parent"]["protocol"],
                               accuracy_change=a - b, **probe)
    console.print(table)
    console.print(f"parent: {result['parent']}")
    console.print(f"old domain: {result['old']['data']} (the parent's training data); new domain: "
                  f"{result['new']['data']}")
    console.print(f"protocol: {result['protocol']}")
    if train_path:
        console.print(f"probe protocol: {result['probe']['protocol']}")
    out = run_dir / "eval" / "forgetting.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    console.print(f"written: {out}")


def _progress(it, what):
    from rich.progress import track

    return track(it, description=what, console=err, transient=True)


def _labeled_set(cfg, objective, tok, path: str, classes=None):
    """A labeled evaluation set in the run's modality, and the inputs that feed it to the trunk."""
    from selfsup.data.media import settings
    from selfsup.eval.inputs import ImageInputs, MediaInputs, TextInputs
    from selfsup.eval.labeled import read_labeled, read_labeled_images, read_labeled_media

    if cfg.modality == "image":
        im = cfg.image
        return (read_labeled_images(path, im.size, im.channels, classes, cfg.data.cache_dir),
                ImageInputs(im.size, im.mean, im.std))
    if cfg.modality in ("audio", "video"):
        return (read_labeled_media(path, cfg.modality, settings(cfg.modality, cfg), classes, cfg.data.cache_dir),
                MediaInputs(objective.view, cfg.modality))
    return read_labeled(path, classes, cfg.data.max_doc_chars), TextInputs(tok, objective.model)


def _joint(task, run_dir, cfg, objective, tok, test_path, prompts, baselines, dev, batch_size) -> dict:
    """zeroshot / retrieval in the joint space of the run (and of a random init): print the table, return JSON."""
    from selfsup.data.media import prepare_media, settings
    from selfsup.eval import joint
    from selfsup.eval.inputs import Clips, ImageInputs, MediaInputs
    from selfsup.eval.features import random_objective

    templates = list(prompts or joint.TEMPLATES[cfg.modality])
    for t in templates:  # before any decoding
        if "{label}" not in t:
            raise config_mod.ConfigError(f"--prompt '{t}' has no {{label}}; expected e.g. \"a photo of a {{label}}\"")
    models = {"pretrained": objective}
    if "random" in baselines:
        models["random"] = random_objective(cfg, tok, dev)
    context = cfg.text.context
    results = {}
    if task == "zeroshot":
        test_set, inputs = _labeled_set(cfg, objective, tok, test_path)
        for name, model in models.items():
            results[name] = joint.zeroshot(model, tok, inputs, test_set.items, test_set.labels, test_set.classes,
                                           templates, context, batch_size, dev,
                                           progress=lambda it: _progress(it, f"encoding ({name})"))
        data = dict(test=test_set.counts(), skipped=test_set.skipped)
        title = (f"zeroshot on {test_path}: {len(test_set.classes)} classes, {len(test_set.items):,} "
                 f"{cfg.modality} items, {len(templates)} prompt templates")
        columns = ("top-1", "top-5", "macro-F1")
        rows = {n: (f"{100 * r['accuracy']:.1f}%", f"{100 * r['top5']:.1f}%", f"{100 * r['macro_f1']:.1f}%")
                for n, r in results.items()}
        rows["chance"] = (f"{100 * results['pretrained']['chance']:.1f}%", "", "")
    else:
        media = prepare_media(test_path, cfg.modality, settings(cfg.modality, cfg), 0.0, cfg.data.cache_dir,
                              log=lambda s: None, captions=True)
        split = media.train
        if split.captions is None:
            raise config_mod.ConfigError(f"--test '{test_path}' has no captions; retrieval needs pairs (a .jsonl "
                                         f"with '{cfg.modality}' and 'text', or .tar shards with .txt)")
        if cfg.modality == "image":
            inputs, items = ImageInputs(cfg.image.size, cfg.image.mean, cfg.image.std), split.rows
        else:
            inputs, items = MediaInputs(objective.view, cfg.modality), Clips(split.rows, split.lengths)
        for name, model in models.items():
            results[name] = joint.retrieval(model, tok, inputs, items, split.captions, context, batch_size, dev,
                                            progress=lambda it: _progress(it, f"encoding ({name})"))
        data = dict(test=dict(path=test_path, items=len(split.captions)), skipped=media.meta["skipped"])
        title = (f"retrieval on {test_path}: {len(split.captions):,} {cfg.modality} items, "
                 f"{results['pretrained']['texts']:,} distinct captions")
        columns = ("direction", *(f"R@{k}" for k in joint.KS), "mean R")
        rows = {}
        for n, r in results.items():
            for d, key in ((f"{cfg.modality}→text", "media_to_text"), (f"text→{cfg.modality}", "text_to_media")):
                rows[(n, d)] = (d, *(f"{100 * r[key][k]:.1f}%" for k in joint.KS),
                                f"{100 * r['mean_recall']:.1f}%" if key == "media_to_text" else "")
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    for col in columns:
        table.add_column(col, justify="left" if col == "direction" else "right", no_wrap=True)
    for name, cells in rows.items():
        table.add_row(name[0] if isinstance(name, tuple) else name, *cells)
    console.print(table)
    console.print(f"protocol: {results['pretrained']['protocol']}")
    if data["skipped"]:
        console.print(f"skipped: {data['skipped']}")
    return dict(task=task, run_dir=str(run_dir), recipe=cfg.recipe, objective=cfg.objective,
                protocol=results["pretrained"]["protocol"], data=data, **results)


def _transfer(task, run_dir, cfg, objective, tok, train_path, test_path, baselines, dev, opts) -> dict:
    """linear / knn / finetune on the trained trunk (and a random one): print the table, return the JSON."""
    from selfsup.eval.features import random_trunk
    from selfsup.eval.inputs import Pixels
    from selfsup.eval.labeled import evaluate as run_task

    trunk = objective.model
    train_set, inputs = _labeled_set(cfg, objective, tok, train_path)
    test_set, _ = _labeled_set(cfg, objective, tok, test_path, train_set.classes)
    progress = _progress

    measure = None
    if task == "finetune":  # the pretraining loss before and after: what fine-tuning made the trunk forget
        from selfsup.eval.objective_loss import objective_loss_probe

        probe = objective_loss_probe(cfg, run_dir, objective, dev)
        if probe is not None:
            before = probe(trunk)
            measure = lambda tuned: {"objective_loss_before": before, "objective_loss_after": probe(tuned)}  # noqa
    results = {"pretrained": run_task(task, trunk, inputs, train_set, test_set, dev, progress=progress,
                                      measure=measure, **opts)}
    if "random" in baselines:
        results["random"] = run_task(task, random_trunk(cfg, tok, dev), inputs, train_set, test_set, dev,
                                     progress=progress, **opts)
    if "pixels" in baselines:
        results["pixels"] = run_task(task, Pixels(cfg.image.channels, cfg.image.size), inputs, train_set, test_set,
                                     dev, progress=progress, **opts)
    result = dict(task=task, run_dir=str(run_dir), recipe=cfg.recipe,
                  objective=cfg.objective, protocol=results["pretrained"]["protocol"], classes=train_set.classes,
                  data=dict(train=train_set.counts(), test=test_set.counts()),
                  skipped=dict(train=train_set.skipped, test=test_set.skipped), **results)
    if "random" in results:
        result["gain"] = {m: results["pretrained"][m] - results["random"][m] for m in ("accuracy", "macro_f1")}

    table = Table(title=f"{task} on {test_path}: {len(train_set.classes)} classes, "
                        f"{len(train_set.items):,} train / {len(test_set.items):,} test "
                        f"{'texts' if cfg.modality == 'text' else cfg.modality + ' items'}")
    for col, justify in (("task", "left"), ("model", "left"), ("accuracy", "right"), ("macro-F1", "right")):
        table.add_column(col, justify=justify)
    for name, r in results.items():
        table.add_row(task, name, f"{100 * r['accuracy']:.1f}%", f"{100 * r['macro_f1']:.1f}%")
    if "gain" in result:
        g = result["gain"]
        table.add_row(task, "gain", f"{100 * g['accuracy']:+.1f} pts", f"{100 * g['macro_f1']:+.1f} pts")
    console.print(table)
    for name, r in results.items():
        if name == "pretrained" or r["protocol"] != result["protocol"]:
            console.print(f"protocol{'' if name == 'pretrained' else f' ({name})'}: {r['protocol']}")
        if task == "linear":
            console.print(f"{name}: l2 = {r['l2']:g} (validation accuracy per l2: {r['val_accuracy']})")
        if "objective_loss_before" in r:
            b, a = r["objective_loss_before"], r["objective_loss_after"]
            console.print(f"{name}: pretraining objective ({cfg.objective}) loss on the run's validation data: "
                          f"{b:.4f} before fine-tuning, {a:.4f} after ({100 * (a - b) / b:+.1f}%)")
        if task == "knn":
            console.print(f"{name}: accuracy by k: " + ", ".join(f"k={k} {100 * a:.1f}%"
                                                                  for k, a in r["accuracy_by_k"].items()))
    for name, s in result["skipped"].items():
        if s:
            console.print(f"skipped {name} lines: {s}")
    return result


@app.command()
def embed(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    input: str = typer.Argument(..., help="text runs: a .txt (one per line), a .jsonl ('text' per line) or a "
                                "folder of them; image runs: an image, a folder (recursive), .tar shards or .npz; "
                                "audio / video runs: a file, a folder, a .jsonl or .tar shards"),
    out: Path = typer.Option(..., help="output .npy: (N, D) float32, row i for the i-th item read"),
    jsonl: Optional[Path] = typer.Option(None, help="text runs: also write a .jsonl of {\"text\", \"embedding\"}"),
    joint: bool = typer.Option(False, help="clip / siglip runs: unit vectors in the joint media-text space "
                               "(after the projection) instead of the media tower's features"),
    batch_size: int = typer.Option(32, help="items per forward pass"),
    device: str = typer.Option("auto", help="auto, cpu, cuda"),
):
    """Embed texts, images, audio or video with a trained trunk (pooled features; see the printed protocol)."""
    from collections import Counter

    import numpy as np
    from rich.progress import track

    from selfsup.config import BUILTIN_CORPUS
    from selfsup.data.text import DataError, read_documents, source_files
    from selfsup.eval.inputs import Clips, ImageInputs, MediaInputs, TextInputs, encode
    from selfsup.eval.joint import JointMedia
    from selfsup.rundir import open_run
    from selfsup.train.trainer import resolve_device

    dev = resolve_device(device)
    cfg, objective, tok = open_run(run_dir, dev)
    if joint and cfg.objective not in config_mod.PAIR_OBJECTIVES:
        raise config_mod.ConfigError(f"--joint needs a joint media-text space (clip or siglip runs); '{run_dir}' "
                                     f"trained '{cfg.objective}'")
    trunk = JointMedia(objective) if joint else objective.model
    progress = lambda it: track(it, description="embedding", console=err)  # noqa: E731
    if cfg.modality == "image":
        from selfsup.data.images import prepare_images

        im = cfg.image
        data = prepare_images(input, im.size, im.channels, 0.0, cfg.data.cache_dir, log=lambda s: None)
        inputs, items, skipped, what = ImageInputs(im.size, im.mean, im.std), data.train, data.meta["skipped"], "images"
    elif cfg.modality in ("audio", "video"):
        from selfsup.data.media import prepare_media, settings

        data = prepare_media(input, cfg.modality, settings(cfg.modality, cfg), 0.0, cfg.data.cache_dir,
                             log=lambda s: None)
        inputs, items = MediaInputs(objective.view, cfg.modality), Clips(data.train.rows, data.train.lengths)
        skipped, what = data.meta["skipped"], f"{cfg.modality} clips"
    else:
        counts: Counter = Counter()
        items = list(read_documents(source_files(input), counts, cfg.data.max_doc_chars,
                                    builtin=input == BUILTIN_CORPUS))
        if not items:
            raise DataError(f"'{input}' holds no usable texts (skipped: {dict(counts) or 'none'})")
        inputs, skipped, what = TextInputs(tok, trunk), dict(sorted(counts.items())), "texts"
    emb = encode(trunk, inputs, items, batch_size, dev, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb.numpy())
    text_run = cfg.modality == "text"
    if jsonl is not None and text_run:
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(jsonl, "w", encoding="utf-8") as f:
            for text, row in zip(items, emb.tolist()):
                f.write(json.dumps({"text": text, "embedding": row}) + "\n")
    console.print(f"embedded {len(items):,} {what} -> {tuple(emb.shape)} float32: {out}"
                  + (f", {jsonl}" if jsonl is not None and text_run else ""))
    console.print(f"protocol: {inputs.describe(objective.model)}" + ("; projected into the joint space, "
                                                                    "L2-normalised" if joint else ""))
    console.print(f"skipped: {skipped or 'none'}")


data_app = typer.Typer(no_args_is_help=True, help="Make data sets (labeled-docstrings, docstrings, digits, tones, "
                       "moving-digits) and clean them (dedup, filter).")
app.add_typer(data_app, name="data")


@data_app.command("digits")
def digits(out: Path = typer.Option(..., help="output folder for train/ and test/ (one sub-folder per digit)")):
    """scikit-learn's bundled handwritten digits (1,797 grayscale 8×8 images) as PNG folders, stratified ~75/25:
    pretrain on OUT/train (its labels are ignored), evaluate with --train OUT/train --test OUT/test."""
    from selfsup.data.digits import write_digits

    counts = write_digits(out)
    console.print(f"written {counts['train']:,} train and {counts['test']:,} test images to {out}/train and "
                  f"{out}/test, "
                  f"with generated captions in {out}/train.jsonl and {out}/test.jsonl")


@data_app.command("dedup")
def dedup(
    input: str = typer.Argument(..., help="a .txt (a document per line) / .jsonl ('text' per line) file, an image, "
                                "or a folder of them (recursive)"),
    out: Path = typer.Option(..., help="a new folder: the kept data (same relative paths), removed.jsonl, "
                             "summary.json; the input is never changed"),
    near: float = typer.Option(0.8, help="near-duplicate threshold: text, estimated Jaccard similarity of word "
                               "5-grams (MinHash LSH); images, 1 − Hamming distance / 64 of perceptual hashes"),
    num_perm: int = typer.Option(128, help="MinHash permutations (more: a finer similarity estimate)"),
):
    """Remove exact and near-duplicate documents (and near-duplicate images), keeping the first occurrence; every
    removal is logged with what it duplicates."""
    from selfsup.data.dedup import dedup as run_dedup

    summary = run_dedup(input, str(out), near, num_perm)
    table = Table(title=f"dedup of {input} (near ≥ {near})")
    for col in ("", "count"):
        table.add_column(col, justify="left" if not col else "right")
    for key in ("documents", "images", "kept", "removed_exact", "removed_near", "kept_unparsed", "kept_unreadable",
                *(k for k in summary if k.startswith("skipped_"))):
        if summary.get(key):
            table.add_row(key.replace("_", " "), f"{summary[key]:,}")
    console.print(table)
    console.print(f"kept data in {out}; removals in {out}/removed.jsonl")


@data_app.command("filter")
def filter_data(
    input: str = typer.Argument(..., help="a .txt (a document per line) / .jsonl ('text' per line) file or a folder"),
    out: Path = typer.Option(..., help="a new folder: the kept documents (same relative paths), removed.jsonl "
                             "(rule and measured value), summary.json; the input is never changed"),
    min_chars: int = typer.Option(0, help="shorter documents are removed"),
    max_chars: Optional[int] = typer.Option(None, help="longer documents are removed"),
    max_symbol_ratio: Optional[float] = typer.Option(None, help="remove when more than this share of the non-space "
                                                     "characters are neither letters nor digits (any script)"),
    max_repetition: Optional[float] = typer.Option(None, help="remove when more than this share of the word "
                                                   "3-grams repeat an earlier one in the document"),
    ppl_model: Optional[str] = typer.Option(None, help="a gpt-clm run directory scoring each document"),
    max_ppl: Optional[float] = typer.Option(None, help="with --ppl-model: remove documents above this perplexity"),
    device: str = typer.Option("cpu", help="device of the perplexity model"),
):
    """Remove documents by length, symbol share, repetition and perplexity under a small trained LM; every removal
    is logged with the rule and the value measured."""
    import torch

    from selfsup.data.filters import filter_corpus
    from selfsup.data.text import DataError
    from selfsup.eval.perplexity import Perplexity

    if (ppl_model is None) != (max_ppl is None):  # before the model is opened
        raise DataError("--ppl-model and --max-ppl go together: a causal LM run and the highest perplexity kept")
    scorer = Perplexity(ppl_model, torch.device(device)) if ppl_model else None
    s = filter_corpus(input, str(out), min_chars, max_chars, max_symbol_ratio, max_repetition, scorer, max_ppl,
                      ppl_model)
    table = Table(title=f"filter of {input}")
    for col in ("", "count"):
        table.add_column(col, justify="left" if not col else "right")
    for key, value in s.items():
        if key in ("documents", "kept", "kept_unparsed") or key.startswith(("removed_", "skipped_")):
            table.add_row(key.replace("_", " "), f"{value:,}")
    console.print(table)
    console.print(f"kept documents in {out}; removals in {out}/removed.jsonl")


@data_app.command("tones")
def tones(out: Path = typer.Option(..., help="output folder for train/ and test/ (one sub-folder per sound)"),
          seed: int = typer.Option(0, help="the same seed writes the same files")):
    """Synthetic 1-second sounds of six kinds (hum, whistle, rising and falling sweeps, beeps, noise) as 16 kHz
    WAV folders with generated captions in OUT/train.jsonl and OUT/test.jsonl: pretrain audio-mask on OUT/train,
    clap on OUT/train.jsonl; evaluate with --train OUT/train --test OUT/test (or --task zeroshot / retrieval)."""
    from selfsup.data.tones import write_tones

    counts = write_tones(out, seed=seed)
    console.print(f"written {counts['train']:,} train and {counts['test']:,} test clips to {out}/train and {out}/test, "
                  f"with captions in {out}/train.jsonl and {out}/test.jsonl")


@data_app.command("moving-digits")
def moving_digits(out: Path = typer.Option(..., help="output folder for train/ and test/ (one sub-folder per "
                                           "direction)"),
                  seed: int = typer.Option(0, help="the same seed writes the same frames")):
    """Handwritten digits moving left, right, up or down across a 32×32 frame, 8 frames per MP4 clip, with captions
    naming digit and motion in OUT/train.jsonl and OUT/test.jsonl: pretrain videoclip on OUT/train.jsonl; evaluate
    with --task zeroshot --test OUT/test (classes are the directions) or --task retrieval --test OUT/test.jsonl."""
    from selfsup.data.moving_digits import write_moving_digits

    counts = write_moving_digits(out, seed=seed)
    console.print(f"written {counts['train']:,} train and {counts['test']:,} test clips to {out}/train and {out}/test, "
                  f"with captions in {out}/train.jsonl and {out}/test.jsonl")


@data_app.command("labeled-docstrings")
def labeled_docstrings(
    out: Path = typer.Option(..., help="output folder for train.jsonl and test.jsonl"),
    classes: int = typer.Option(8, help="the N stdlib packages with the most docstrings become the classes"),
    per_class: Optional[int] = typer.Option(None, help="at most this many texts per class (default: the size of "
                                            "the smallest class, so classes are balanced)"),
):
    """A small real labeled set for demos: Python stdlib docstrings labeled by their package, split 80/20 by a
    hash of the text. Note: the built-in pretraining corpus holds these same texts, without labels."""
    from selfsup.data.labeled_docstrings import build

    summary = build(out, classes, per_class)
    table = Table(title=f"stdlib docstrings by package: {len(summary['classes'])} classes")
    for col in ("class", "train", "test"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in summary["classes"]:
        table.add_row(c, str(summary["train"]["per_class"].get(c, 0)), str(summary["test"]["per_class"].get(c, 0)))
    table.add_row("total", f"{summary['train']['examples']:,}", f"{summary['test']['examples']:,}")
    console.print(table)
    console.print(f"written: {summary['train']['path']}, {summary['test']['path']}")


@data_app.command("docstrings")
def package_docstrings(
    packages: list[str] = typer.Argument(..., help="installed packages (e.g. numpy scipy sklearn) or source folders"),
    out: Path = typer.Option(..., help="output .jsonl: one {\"text\", \"package\"} line per docstring"),
    min_chars: int = typer.Option(1, help="shorter docstrings are left out"),
):
    """Docstrings of installed packages, read with ast (nothing imported), as a text corpus: a second real domain
    on every machine, e.g. to continue a run trained on the built-in stdlib docstrings (continual.data=OUT)."""
    from selfsup.data.package_docs import write_docstrings

    counts = write_docstrings(packages, out, min_chars)
    console.print(f"written {sum(counts.values()):,} docstrings to {out} ("
                  + ", ".join(f"{k}: {v:,}" for k, v in counts.items()) + ")")


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
    quantize: Optional[str] = typer.Option(None, help="with --format safetensors: int8 (dynamic quantization of the "
                                           "trunk's linear layers, for CPU inference) or bf16 (every weight); "
                                           "`selfsup eval` and `embed` open the export like a run"),
):
    """Export the trained model for other tools."""
    import torch

    from selfsup.export import export
    from selfsup.rundir import open_run

    cfg, objective, _ = open_run(run_dir, torch.device("cpu"))
    console.print(f"exported to {export(run_dir, cfg, objective, format, out, quantize)}")


@app.command()
def compare(run_dirs: list[Path] = typer.Argument(..., help="run directories to put side by side")):
    """One table of several runs: training steps and time, and every evaluation they hold (RUN_DIR/eval/*.json:
    accuracy of the pretrained model and of each baseline evaluated beside it)."""
    from selfsup.rundir import RunDirError

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
    table = Table(title="runs compared: accuracy of each evaluation")
    for col, justify in (("run", "left"), ("steps, time", "right"), ("task", "left"), ("pretrained", "right"),
                         ("random init", "right"), ("raw pixels", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for run, s, evals in rows:
        for i, task in enumerate(tasks or ["-"]):
            r = evals.get(task, {})
            cells = [f"{100 * r[m]['accuracy']:.1f}%" if m in r else "-" for m in ("pretrained", "random", "pixels")]
            name = run.name if run.name == s["objective"] else f"{run.name} ({s['objective']})"
            head = (name, f"{s['steps']:,}, {s['wall_time_s']:.0f} s") if i == 0 else ("", "")
            table.add_row(*head, task, *cells, end_section=i == len(tasks or ["-"]) - 1)
    console.print(table)


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
