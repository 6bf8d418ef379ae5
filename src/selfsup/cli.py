"""The `selfsup` command line: train, recipes, plan, eval, embed, generate, export, compare, report, inspect and data.
Parsing arguments and printing results only; the work is done on the floors below (docs/architecture.md)."""

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
from selfsup.progress import track

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
    allow_changes: Optional[list[str]] = typer.Option(
        None, "--allow-changes", metavar="KEY,...", help="resuming: let these config keys differ from the run's (comma-separated or "
        "repeated), e.g. --allow-changes optim.lr,data.path; recorded in RUN_DIR/history.jsonl. Without it a resume "
        "may change only " + ", ".join(config_mod.MAY_CHANGE_ON_RESUME) + "; other differences, or other data, are refused"),
):
    """Train a recipe. Writes the run directory (out_dir): config.yaml, metrics.jsonl, summary.json,
    checkpoints/, model.safetensors, tokenizer.json, report.html. Running it again on a run directory (or with
    the same out_dir) resumes from the last checkpoint, also after the process was killed, with the run's own
    settings and data (see --allow-changes). One trainer at a time per run directory. A finished run directory
    with continual.data=NEW (and continual.replay=SHARE) is continued on a new data stream in a new run directory
    (default RUN_DIR-continual), from its final weights, with the lr schedule warming up again. An interrupted run
    (SIGINT, SIGTERM) saves a checkpoint and exits with 128 + the signal's number."""
    from selfsup.train import continual

    cfg = continual.load_config(source, overrides or [])  # a recipe, a YAML, a run to resume or to continue
    from selfsup.report import summary_table, write_report  # torch: only once the config holds
    from selfsup.train import launch

    if "RANK" not in os.environ:  # once, before any worker starts: what the run will hold and take
        from selfsup.plan.estimate import run_device, start_lines

        try:
            lines = start_lines(cfg, run_device(cfg), cfg.dist.nproc_per_node, cfg.dist.nnodes)
        except Exception as e:  # a plan informs; one the planner cannot make never stops the run it describes
            lines = [f"plan: not made ({type(e).__name__}: {e})"]
        for line in lines:
            console.print(line, markup=False, highlight=False, style="yellow" if line.startswith("warning") else None)
    allowed = [f"--allow-changes={k}" for k in allow_changes or []]
    summary = launch.train_or_launch(cfg, ["train", source, *allowed, *(overrides or [])], console,
                                     allow_changes or [])
    status = 0
    if summary is not None:
        report = write_report(cfg.out_dir)
        console.print(summary_table(summary))
        console.print(f"report: {report}")
        status = launch.exit_status(summary)
    launch.end_worker(status)
    if status:
        raise typer.Exit(status)


@app.command()
def recipes(scale: bool = typer.Option(False, "--scale", help="also list the paper-scale recipes: the published "
                                       "architectures and hyper-parameters, sized for 8 processes")):
    """List the built-in recipes, one line each."""
    found = sorted(config_mod.recipe_files().items())
    for name, path in found:
        if not config_mod.paper_scale(path):
            console.print(f"{name:<16} {config_mod.recipe_summary(path)}")
    if scale:
        import torch  # the parameter counts: each model built on the meta device, without memory or data

        from selfsup.objectives.build import network

        console.print("\npaper scale (global batch = train.batch_size × train.grad_accum × 8 processes):")
        for name, path in found:
            if config_mod.paper_scale(path):
                with torch.device("meta"):
                    params = sum(p.numel() for p in network(config_mod.load(name)).parameters())
                console.print(f"{name:<16} {params / 1e6:>7.1f}M  {config_mod.recipe_summary(path)}")


@app.command()
def plan(
    recipe: str = typer.Argument(..., help="a recipe name (see `selfsup recipes --scale`) or a YAML file"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value settings, e.g. dist.strategy=fsdp"),
    gpus: int = typer.Option(8, "--gpus", min=1, help="devices per node"),
    gpu: str = typer.Option("h100", "--gpu", help="the device: h100, h200, a100-80gb, a100-40gb, l4, mi300x"),
    nodes: int = typer.Option(1, "--nodes", min=1, help="machines"),
    mfu: Optional[float] = typer.Option(None, "--mfu", min=0.01, max=1.0, help="model FLOPs utilisation to assume "
                                        "(default 0.40, bf16 transformer training)"),
    price: Optional[float] = typer.Option(None, "--price", min=0.0, help="$ per device-hour, for a cost"),
):
    """What a run will take before it starts: memory per device (weights, gradients, optimizer state, activations;
    per strategy, with and without activation checkpointing), the largest micro-batch that fits, FLOPs per step,
    step time, throughput, wall-clock, device-hours, energy and cost. Nothing is allocated: the model is built on
    the meta device and its passes run on fake tensors."""
    cfg = config_mod.load(recipe, overrides or [])
    from selfsup.plan.devices import DEVICES

    if gpu not in DEVICES:
        raise config_mod.ConfigError(f"--gpu {gpu!r} is not in the device table; expected one of {', '.join(DEVICES)}")
    from selfsup.plan.estimate import MFU, make_plan, table_lines

    for line in table_lines(make_plan(cfg, DEVICES[gpu], gpus, nodes, mfu or MFU, price)):
        console.print(line, markup=False, highlight=False)


@app.command(name="eval")
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    task: str = typer.Option("perplexity", help="perplexity (causal LM on held-out text); forgetting (a run made by "
                             "continual.data or started from model.init: its parent, or the imported model, and it on "
                             "the old and the new domain's held-out data, and with --train/--test a linear probe of "
                             "both); or a transfer task on "
                             "labeled data: linear (probe on frozen features), knn (weighted kNN on frozen "
                             "features), finetune (whole trunk + linear head); clip/siglip runs also: zeroshot "
                             "(classes named by prompts, --test only), retrieval (recall@1/5/10 both ways on "
                             "--test pairs)"),
    data: Optional[str] = typer.Option(None, help="held-out .txt/.jsonl/.parquet file or folder, read as the "
                                                  "run read its corpus (perplexity)"),
    old_data: Optional[str] = typer.Option(None, "--old-data", help="forgetting: data of the old domain, read like "
                                           "data.path (its validation split is scored); needed for a run started "
                                           "from model.init, whose training data selfsup does not know; for a "
                                           "continued run it replaces continual.old_data"),
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
    whiten: bool = typer.Option(False, "--whiten", help="linear, knn: BERT-whitening of the features (every model "
                                "evaluated, baselines too), the mean and covariance fitted on --train: removes the "
                                "common direction of a trained text encoder's anisotropic features (BENCHMARKS.md); "
                                "written to eval/TASK-whitened.json, beside the raw features' eval/TASK.json"),
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
    from selfsup.dist import resolve_device
    from selfsup.eval import tables
    from selfsup.eval.forgetting import forgetting, probe
    from selfsup.eval.joint import joint_task
    from selfsup.eval.perplexity import perplexity
    from selfsup.eval.tasks import check_options, check_run, prompt_templates
    from selfsup.eval.transfer import transfer
    from selfsup.rundir import open_run

    baselines = baseline or []
    spec = check_options(task, dict(data=data, train=train, test=test, old_data=old_data), baselines, whiten)
    dev = resolve_device(device, "--device")
    out = run_dir / "eval" / f"{task}{'-whitened' if whiten else ''}.json"  # beside the raw features' result
    if task == "forgetting":
        result, parent = forgetting(run_dir, dev, batch_size, old_data=old_data,
                                    log=lambda text: err.print(f"[dim]{text}"))
        if train:
            result["probe"] = probe(run_dir, parent, dev, batch_size, train, test, progress=_progress)
        _print(*tables.forgetting(run_dir, result))
        _save(out, result)
        console.print(f"written: {out}")
        return
    cfg, objective, tok = open_run(run_dir, dev)
    check_run(spec, run_dir, cfg, baselines)
    if task == "perplexity":
        result = perplexity(objective, tok, data, cfg.model.context, cfg.data, dev, batch_size,
                            progress=lambda it: track(it, "perplexity", "batches", err))
        _save(out, result)
        _print(*tables.perplexity(data, result), f"written: {out}")
        return
    if task in ("zeroshot", "retrieval"):
        templates = prompt_templates(prompt, cfg.modality)
        result = joint_task(task, run_dir, cfg, objective, tok, test, templates, baselines, dev, batch_size,
                            progress=_progress)
        _print(*tables.joint(result, cfg.modality, len(templates)))
    else:
        result = transfer(task, run_dir, cfg, objective, tok, train, test, baselines, dev,
                          dict(batch_size=batch_size, seed=cfg.seed, k=k, temperature=temperature, epochs=epochs,
                               lr=lr, layer_decay=layer_decay, patience=patience, freeze_blocks=freeze_blocks,
                               l2sp=l2sp, whiten=whiten), progress=_progress)
        _print(*tables.transfer(result, cfg.modality))
    _save(out, result)
    console.print(f"written: {out}")


def _save(out: Path, result: dict) -> None:
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


def _print(*lines) -> None:
    for line in lines:
        console.print(line)


def _progress(it, what):
    return track(it, what, console=err)


@app.command()
def embed(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    input: str = typer.Argument(..., help="text runs: a .txt (one per line), a .jsonl ('text' per line), a .parquet "
                                "or a folder of them; image runs: an image, a folder (recursive), .tar shards, .npz, "
                                ".parquet or a .jsonl of pairs; audio / video runs: a file, a folder, a .jsonl or .tar shards; "
                                "with --joint also texts (see --joint)"),
    out: Path = typer.Option(..., help="output .npy: (N, D) float32, row i for the i-th item read; beside it "
                             "OUT.rows.jsonl names each row's source ({row, file, key}, + text for texts) and "
                             "OUT.skipped.jsonl each item skipped ({file, key, skipped: reason}); .parquet files "
                             "instead when the input is .parquet"),
    jsonl: Optional[Path] = typer.Option(None, help="texts: also write a .jsonl of {\"text\", \"embedding\"}"),
    joint: bool = typer.Option(False, help="clip / siglip / clap / videoclip runs: unit vectors in the joint "
                               "media-text space (after the projection) instead of the media tower's features. "
                               "Texts go through the text tower when INPUT is one file of them: a .txt (a text a "
                               "line), or a .jsonl / .parquet whose rows have data.caption_field ('text') and no "
                               "media field (data.image_field, 'audio' / 'video', 'path'); else INPUT is media"),
    batch_size: int = typer.Option(32, help="items per forward pass"),
    device: str = typer.Option("auto", help="auto, cpu, cuda"),
):
    """Embed texts, images, audio or video with a trained trunk (pooled features; see the printed protocol)."""
    from selfsup.dist import resolve_device
    from selfsup.eval.embed import embed as run_embed

    r = run_embed(run_dir, input, out, jsonl, joint, batch_size, resolve_device(device, "--device"),
                  progress=lambda it: track(it, "embedding", "batches", err))
    console.print(f"embedded {r.items:,} {r.what} -> {r.shape} float32: {r.out}, {r.rows}"
                  + (f", {r.jsonl}" if r.jsonl is not None else ""))
    console.print(f"protocol: {r.protocol}")
    console.print(f"skipped: {r.skipped or 'none'}" + (f" (named in {r.skipped_file})" if r.skipped else ""))


data_app = typer.Typer(no_args_is_help=True, help="Make data sets (labeled-docstrings, labeled-packages, "
                       "labeled-libraries, docstrings, digits, tones, speech, moving-digits), clean them (dedup, "
                       "filter) and tokenize text ahead of training (tokenize).")
app.add_typer(data_app, name="data")


@data_app.command("digits")
def digits(out: Path = typer.Option(..., help="output folder for train/ and test/ (one sub-folder per digit)")):
    """scikit-learn's bundled handwritten digits (1,797 grayscale 8×8 images) as PNG folders, stratified ~75/25:
    pretrain on OUT/train (its labels are ignored), evaluate with --train OUT/train --test OUT/test."""
    from selfsup.data.builtin.digits import write_digits

    counts = write_digits(out)
    console.print(f"written {counts['train']:,} train and {counts['test']:,} test images to {out}/train and "
                  f"{out}/test, "
                  f"with generated captions in {out}/train.jsonl and {out}/test.jsonl")


TEXT_FIELD_HELP = ("the text of a .jsonl line or a .parquet row, as data.text_field: .jsonl lines without it and rows "
                   "where it is null are kept unjudged (kept unparsed); a .parquet file without it is refused")


@data_app.command("dedup")
def dedup(
    input: str = typer.Argument(..., help="a .txt (a document per line) / .jsonl (a record per line) / .parquet (a "
                                "row per document) file, an image, or a folder of them (recursive)"),
    out: Path = typer.Option(..., help="a new folder: the kept data (same relative paths), removed.jsonl, "
                             "summary.json; the input is never changed"),
    near: float = typer.Option(0.8, help="near-duplicate threshold. Text of 50+ words: estimated Jaccard similarity "
                               "of word 5-grams (MinHash LSH); 5–49 words: Jaccard similarity of character 5-grams, "
                               "or one word apart (replaced, inserted, deleted, two neighbours swapped) when one word "
                               "is at most 1 − near of the text; under 5 words: exact copies only. Images: 1 − "
                               "Hamming distance / 64 of perceptual hashes"),
    num_perm: int = typer.Option(128, help="MinHash permutations, at least 8 (more: a finer similarity estimate)"),
    text_field: str = typer.Option("text", help=TEXT_FIELD_HELP),
):
    """Remove exact and near-duplicate documents (and near-duplicate images), keeping the first occurrence; every
    removal is logged with what it duplicates."""
    from selfsup.data.quality.dedup import dedup as run_dedup

    summary = run_dedup(input, str(out), near, num_perm, field=text_field)
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
    input: str = typer.Argument(..., help="a .txt (a document per line) / .jsonl (a record per line) / .parquet (a "
                                "row per document) file or a folder of them (recursive)"),
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
    text_field: str = typer.Option("text", help=TEXT_FIELD_HELP),
):
    """Remove documents by length, symbol share, repetition and perplexity under a small trained LM; every removal
    is logged with the rule and the value measured."""
    from selfsup.data.errors import DataError
    from selfsup.data.quality.filters import filter_corpus
    from selfsup.dist import resolve_device
    from selfsup.eval.perplexity import Perplexity

    if (ppl_model is None) != (max_ppl is None):  # before the model is opened
        raise DataError("--ppl-model and --max-ppl go together: a causal LM run and the highest perplexity kept")
    dev = resolve_device(device, "--device")
    scorer = (lambda: Perplexity(ppl_model, dev)) if ppl_model else None
    s = filter_corpus(input, str(out), min_chars, max_chars, max_symbol_ratio, max_repetition, scorer, max_ppl,
                      ppl_model, text_field)
    table = Table(title=f"filter of {input}")
    for col in ("", "count"):
        table.add_column(col, justify="left" if not col else "right")
    for key, value in s.items():
        if key in ("documents", "kept", "kept_unparsed") or key.startswith(("removed_", "skipped_")):
            table.add_row(key.replace("_", " "), f"{value:,}")
    console.print(table)
    console.print(f"kept documents in {out}; removals in {out}/removed.jsonl")


@data_app.command("tokenize")
def tokenize(
    corpus: str = typer.Argument(..., help="text as data.path reads it: a .txt/.jsonl/.parquet file or a folder of "
                                 "them, a datasets folder, hf:datasets/ORG/NAME or builtin:python-docstrings"),
    settings: Optional[list[str]] = typer.Argument(None, help="data.KEY=VALUE settings the shards depend on, as a "
                                                   "run's: data.document, data.extensions, data.text_field, "
                                                   "data.val_fraction, data.max_doc_chars (a run reading the shards "
                                                   "must have the same)"),
    out: Path = typer.Option(..., help="a new or empty folder, neither inside CORPUS nor holding it: .bin shards, "
                             "tokenizer.json and meta.json; train with data.path=OUT"),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenize with this tokenizer.json (e.g. a run's)"),
    vocab_size: Optional[int] = typer.Option(None, help="or train a byte-level BPE of this many tokens on the "
                                             "training documents, as a run with model.vocab_size=N does"),
    workers: Optional[int] = typer.Option(None, help="tokenizing processes (default: min(cores, 8); 0: in this "
                                          "process, on tokenizers' own threads); the shards are the same bytes for "
                                          "any number"),
):
    """Tokenize a corpus into token shards ahead of training, on every core, so that runs on many machines read the
    same shards (data.path=OUT) instead of each tokenizing it. A run on OUT gets the batches a run on CORPUS would,
    given the same data settings and model.vocab_size. Bad documents and unreadable files are skipped and counted."""
    from selfsup.data.cache.tokens import SETTINGS, tokenize as write_tokens
    from selfsup.data.errors import DataError

    if (tokenizer is None) == (vocab_size is None):
        raise DataError("expected one of --tokenizer FILE (tokenize with it) and --vocab-size N (train a BPE of N "
                        "tokens first)")
    if vocab_size is not None and vocab_size < 260:
        raise DataError(f"--vocab-size {vocab_size}: expected at least 260 (256 bytes, 3 special tokens, a merge)")
    if workers is not None and workers < 0:
        raise DataError(f"--workers {workers}: expected 0 (in this process) or more")
    data = {"path": corpus, "tokenizer": str(tokenizer) if tokenizer else None, "workers": workers}
    for text in settings or []:
        key, value = config_mod.parse_override(text)
        if key not in [f"data.{k}" for k in SETTINGS]:
            raise config_mod.ConfigError(f"'{key}' is not a setting token shards depend on; expected one of "
                                         + ", ".join(f"data.{k}" for k in SETTINGS))
        data[key.removeprefix("data.")] = value
    cfg = config_mod.validate({"data": data}).data
    meta = write_tokens(cfg, vocab_size, out, log=lambda line: err.print(line, soft_wrap=True, markup=False,
                                                                         highlight=False))
    table = Table(title=f"token shards of {corpus}")
    for col in ("", "train", "val"):
        table.add_column(col, justify="left" if not col else "right")
    for key in ("documents", "tokens"):
        table.add_row(key, *(f"{meta[key][s]:,}" for s in ("train", "val")))
    table.add_row("shards", *(str(len(meta["shards"][s])) for s in ("train", "val")))
    console.print(table)
    console.print(f"skipped: {', '.join(f'{k}: {v:,}' for k, v in meta['skipped'].items()) or 'none'}")
    keys = " ".join(f"data.{k}={','.join(v) if isinstance(v, list) else v}"
                    for k, v in cfg.model_dump(include=set(SETTINGS)).items()
                    if v != config_mod.DataConfig.model_fields[k].default)
    console.print(f"{meta['vocab']:,}-token tokenizer; train with data.path={out} model.vocab_size={meta['vocab']}"
                  + (f" {keys}" if keys else ""))


@data_app.command("tones")
def tones(out: Path = typer.Option(..., help="output folder for train/ and test/ (one sub-folder per sound)"),
          seed: int = typer.Option(0, help="the same seed writes the same files")):
    """Synthetic 1-second sounds of six kinds (hum, whistle, rising and falling sweeps, beeps, noise) as 16 kHz
    WAV folders with generated captions in OUT/train.jsonl and OUT/test.jsonl: pretrain audio-mask on OUT/train,
    clap on OUT/train.jsonl; evaluate with --train OUT/train --test OUT/test (or --task zeroshot / retrieval)."""
    from selfsup.data.builtin.tones import write_tones

    counts = write_tones(out, seed=seed)
    console.print(f"written {counts['train']:,} train and {counts['test']:,} test clips to {out}/train and {out}/test, "
                  f"with captions in {out}/train.jsonl and {out}/test.jsonl")


@data_app.command("speech")
def speech(out: Path = typer.Option(..., help="output folder for train/ and test/ (one sub-folder per vowel)"),
           seed: int = typer.Option(0, help="the same seed writes the same files")):
    """Synthetic spoken words (h-vowel-d, ten vowels) from a formant synthesiser as 16 kHz WAV folders, by 30
    training speakers and 10 other test speakers: pretrain audio-mask on OUT/train; evaluate with --train OUT/train
    --test OUT/test (vowels of voices never heard in training)."""
    from selfsup.data.builtin.speech import write_speech

    counts = write_speech(out, seed=seed)
    console.print(f"written {counts['train']:,} train and {counts['test']:,} test clips (other speakers) to "
                  f"{out}/train and {out}/test")


@data_app.command("moving-digits")
def moving_digits(out: Path = typer.Option(..., help="output folder for train/ and test/ (one sub-folder per "
                                           "direction)"),
                  seed: int = typer.Option(0, help="the same seed writes the same frames")):
    """Handwritten digits moving left, right, up or down across a 32×32 frame, 8 frames per MP4 clip, with captions
    naming digit and motion in OUT/train.jsonl and OUT/test.jsonl: pretrain videoclip on OUT/train.jsonl; evaluate
    with --task zeroshot --test OUT/test (classes are the directions) or --task retrieval --test OUT/test.jsonl."""
    from selfsup.data.builtin.moving_digits import write_moving_digits

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
    from selfsup.data.builtin.labeled_docstrings import build

    summary = build(out, classes, per_class)
    _print_labeled(f"stdlib docstrings by package: {len(summary['classes'])} classes", summary)


@data_app.command("labeled-packages")
def labeled_packages(
    out: Path = typer.Option(..., help="output folder for train.jsonl and test.jsonl"),
    classes: int = typer.Option(12, help="the N Sections with the most package descriptions become the classes"),
    per_class: Optional[int] = typer.Option(400, help="at most this many texts per class (classes are balanced: "
                                            "each has the size of the smallest kept one, at most this)"),
    min_per_class: int = typer.Option(50, help="Sections with fewer descriptions than this are dropped"),
    source: Optional[Path] = typer.Option(None, help="a file in dpkg's status format to read instead of "
                                          "`apt-cache dumpavail` (else /var/lib/dpkg/status)"),
):
    """A second real labeled text set on Debian-based machines: package descriptions labeled by their Section
    (libs, python, games, ...), from `apt-cache dumpavail` or dpkg's status database, split 80/20 by a hash of the
    text. Unlike the labeled docstrings, the built-in pretraining corpus does not hold these texts."""
    from selfsup.data.builtin.labeled_packages import build

    summary = build(out, classes, per_class, min_per_class, source=source)
    _print_labeled(f"package descriptions by Section ({summary['source']}): {len(summary['classes'])} classes", summary)


@data_app.command("labeled-libraries")
def labeled_libraries(
    libraries: Optional[list[str]] = typer.Argument(None, help="installed packages or source folders, each a class "
                                                    "(default: selfsup's own dependencies torch numpy scipy sklearn "
                                                    "sympy matplotlib networkx kornia pydantic huggingface_hub rich)"),
    out: Path = typer.Option(..., help="output folder for train.jsonl, test.jsonl and unlabeled/"),
    per_class: Optional[int] = typer.Option(500, help="at most this many texts per class (classes are balanced: "
                                            "each has the size of the smallest, at most this)"),
    min_chars: int = typer.Option(40, help="shorter docstrings are not labeled (they stay in unlabeled/)"),
):
    """A labeled text set with its own unlabeled corpus, on every machine: docstrings of installed libraries labeled
    by library, split 80/20 by a hash of the text, and the libraries' other docstrings in OUT/unlabeled (a file
    per module, no labeled text in it) to pretrain on: `selfsup train contriever data.path=OUT/unlabeled`, then
    `selfsup eval RUN --task knn --train OUT/train.jsonl --test OUT/test.jsonl --baseline random`."""
    from selfsup.data.builtin.labeled_libraries import build

    summary = build(out, libraries, per_class, min_chars)
    _print_labeled(f"library docstrings by library: {len(summary['classes'])} classes", summary)
    pool = summary["unlabeled"]
    console.print(f"unlabeled: {pool['texts']:,} other docstrings in {pool['files']:,} files under {pool['path']} "
                  f"({pool['copies_left_out']:,} left out: they repeated a labeled text)")


def _print_labeled(title: str, summary: dict) -> None:
    """A labeled set's texts per class and split, and where it was written."""
    table = Table(title=title)
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
    from selfsup.data.builtin.package_docs import write_docstrings
    from selfsup.rundir import refuse_run_file

    refuse_run_file(out, "--out")
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
    from selfsup.dist import resolve_device
    from selfsup.generate import generate as sample
    from selfsup.rundir import open_run

    cfg, objective, tok = open_run(run_dir, resolve_device(device, "--device"))
    if not cfg.causal:
        raise config_mod.ConfigError(f"'{run_dir}' trained objective '{cfg.objective}'; generate needs a causal LM")
    text = sample(objective.model, tok, prompt, max_new_tokens, temperature, top_k or None, seed)
    print(text)


@app.command(name="export")
def export_run(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    format: str = typer.Option("hf", "--format", help="hf: a directory transformers loads with its Auto classes "
                               "(the GPT maps onto Llama, a ResNet onto ResNetModel); open_clip: a clip run as "
                               "open_clip's state dict and open_clip_config.json; safetensors: weights + "
                               "config.yaml + tokenizer.json; onnx: each encoder as an ONNX graph of its features "
                               "(media-text runs: text.onnx and the media tower's, joint embeddings; the GPT: "
                               "logits) + onnx.json, for onnxruntime"),
    out: Path = typer.Option(..., help="output folder: a new or empty one (never the run directory, inside it or "
                             "holding it); written whole or not at all"),
    quantize: Optional[str] = typer.Option(None, help="with --format safetensors: int8 (dynamic quantization of the "
                                           "trunk's linear layers, for CPU inference) or bf16 (every weight); "
                                           "`selfsup eval` and `embed` open the export like a run; with --format "
                                           "onnx: int8 (onnxruntime's dynamic quantization of the linear layers)"),
    force: bool = typer.Option(False, "--force", help="--out may hold files: the export replaces them, once it is "
                               "written"),
    license: Optional[str] = typer.Option(None, help="the model card's license (a Hub license id, e.g. apache-2.0, "
                                          "mit, cc-by-4.0); none: the card names none"),
    dataset: list[str] = typer.Option([], help="a data set the model was trained on, for the model card's metadata "
                                      "(a Hub id ORG/NAME); repeat for several"),
    push: Optional[str] = typer.Option(None, help="with --format hf: also upload the export to the Hub repository "
                                       "ORG/NAME (made private if missing), with the token of `hf auth login` or "
                                       "HF_TOKEN; checked before any work"),
):
    """Export the trained model for other tools, with a model card (README.md)."""
    if push is not None:
        from selfsup.export import ExportError, check_push

        if format != "hf":
            raise ExportError(f"--push uploads a Hugging Face export; expected --format hf, got --format {format}")
        check_push(push)
    import torch

    from selfsup.export import export, push as push_folder
    from selfsup.rundir import open_run

    cfg, objective, _ = open_run(run_dir, torch.device("cpu"))
    written = export(run_dir, cfg, objective, format, out, quantize, force, license, tuple(dataset), push)
    console.print(f"exported to {written}")
    if push is not None:
        console.print(f"uploaded to {push_folder(out, push)}")


@app.command()
def compare(run_dirs: list[Path] = typer.Argument(..., help="run directories to put side by side")):
    """One table of several runs: training steps and time, validation loss and perplexity, the online probe's last
    accuracies, and every evaluation they hold (RUN_DIR/eval/*.json: accuracy, retrieval's mean recall R or
    perplexity, of the pretrained model and of each baseline evaluated beside it)."""
    from selfsup.eval.compare import headline, read_runs

    rows, tasks = read_runs(run_dirs)
    own = ("val loss", "val ppl", "probe kNN", "probe linear")  # every run kind has these columns
    table = Table(title="runs compared")
    for col in ("run", "steps, time", *own):
        table.add_column(col, justify="left" if col == "run" else "right", no_wrap=True)
    for run, s, figures, _ in rows:
        table.add_row(_run_name(run, s), f"{s['steps']:,}, {s['wall_time_s']:.0f} s", *(figures[c] for c in own))
    console.print(table)
    if not tasks:
        console.print("no evaluations in these runs yet: `selfsup eval RUN_DIR --task ...` writes RUN_DIR/eval/")
        return
    models = [m for m in ("pretrained", "random", "pixels")  # baselines only where some run was measured beside one
              if m == "pretrained" or any(headline(r, m) for *_, evals in rows for r in evals.values())]
    table = Table(title="evaluations (RUN_DIR/eval/*.json)")
    for col in ("run", "task", *({"pretrained": "pretrained", "random": "random init", "pixels": "raw pixels"}[m]
                                 for m in models)):
        table.add_column(col, justify="left" if col in ("run", "task") else "right", no_wrap=True)
    for run, s, _, evals in rows:
        held = [t for t in tasks if t in evals] or ["-"]
        for i, task in enumerate(held):
            cells = [headline(evals.get(task, {}), m) or "-" for m in models]
            table.add_row(_run_name(run, s) if i == 0 else "", task, *cells, end_section=i == len(held) - 1)
    console.print(table)


def _run_name(run: Path, s: dict) -> str:
    return run.name if run.name == s["objective"] else f"{run.name} ({s['objective']})"


@app.command()
def inspect(
    path: str = typer.Argument(..., help="a data file or folder (text, images, pairs .jsonl, audio, video), a run "
                               "directory, or a Hugging Face model folder or hf:ORG/NAME id"),
    kind: Optional[str] = typer.Option(None, help="text, image, pairs, audio or video: how to read a data path "
                                       "(default: guessed from the suffixes, and said)"),
):
    """What selfsup sees at PATH, read cheaply (no image decoded, no model loaded): for data, the files by suffix,
    rows, fields, label classes and one sample; for a run directory, recipe, model, parameters, tokenizer, steps,
    the latest verified checkpoint, the data's fingerprint, sessions, status and the model it started from; for a
    Hugging Face model, what model.init would make of it (objective, shape, parameters, weight files, tokenizer)."""
    from selfsup.inspect import inspect_path

    title, rows = inspect_path(path, kind)
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("")
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory")):
    """(Re)write RUN_DIR/report.html: a plot of every metric the run logged, config and summary."""
    from selfsup.report import write_report

    console.print(f"report: {write_report(run_dir)}")


def _one_line_errors() -> tuple[type, ...]:
    """The error types the CLI prints as one line. export and rundir import torch, so theirs are looked up only
    where the command imported them (a module never imported raised nothing): `--help` and a config error stay
    quick."""
    from selfsup.data.errors import DataError
    from selfsup.train.errors import TrainingError

    found = [config_mod.ConfigError, DataError, TrainingError]
    for module, name in (("selfsup.export", "ExportError"), ("selfsup.rundir", "RunDirError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main() -> None:
    try:
        app()
    except Exception as e:
        if not isinstance(e, _one_line_errors()):
            raise
        err.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
