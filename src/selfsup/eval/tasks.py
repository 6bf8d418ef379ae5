"""The tasks of `selfsup eval` and the options each needs, as data, with the checks that read it: a wrong
combination of options fails with one line before any model is loaded, and a run that cannot do the task
(perplexity of an encoder, zero-shot without a joint space) fails as soon as it is opened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selfsup.config import ConfigError, RunConfig
from selfsup.eval.joint import TEMPLATES

BASELINES = ("random", "pixels")
NO_BASELINE = "--baseline is for the transfer tasks: linear, knn, finetune"


@dataclass(frozen=True)
class Task:
    name: str
    required: tuple[str, ...]  # options that must be given ('data', 'train', 'test')
    missing: str  # the error when one of them is not
    baselines: tuple[str, ...] | None  # --baseline values it takes; None: refused before any other check
    optional: bool = False  # the required options may also all be left out (forgetting: no probe)
    accepts: Callable[[RunConfig], bool] | None = None  # whether it can evaluate a run; None: any
    wrong_run: str = ""  # the error for another objective; {run_dir} and {objective} are filled in


def _transfer(name: str, baselines: tuple[str, ...]) -> Task:
    return Task(name, ("train", "test"), f"--task {name} needs --train and --test: labeled .jsonl files with 'text' "
                "and 'label' (text runs, e.g. `selfsup data labeled-docstrings --out DIR`) or folders of class "
                "sub-folders (image runs, e.g. `selfsup data digits --out DIR`)", baselines)


def _joint(name: str, what: str) -> Task:
    return Task(name, ("test",), f"--task {name} needs --test: {what}", ("random",), accepts=lambda cfg: cfg.pairs,
                wrong_run=f"--task {name} needs a joint media-text space (clip or siglip runs); '{{run_dir}}' trained "
                          "'{objective}'")


TASKS = {t.name: t for t in (
    Task("perplexity", ("data",), "--data is required for --task perplexity (a held-out .txt/.jsonl/.parquet file)", (),
         accepts=lambda cfg: cfg.causal, wrong_run="--task perplexity scores a causal LM; '{run_dir}' trained objective "
                                        "'{objective}' (use --task linear, knn or finetune)"),
    # a continued run and its parent; with --train/--test also a linear probe of both
    Task("forgetting", ("train", "test"), "--task forgetting: give both --train and --test (labeled data for a "
         "linear probe of the parent and the continued run), or neither", None, optional=True),
    _transfer("linear", BASELINES),
    _transfer("knn", BASELINES),
    _transfer("finetune", ("random",)),
    _joint("zeroshot", "labeled items (a folder of class sub-folders, or a .jsonl with a 'label')"),
    _joint("retrieval", "held-out pairs (a .jsonl with the media path and 'text', or .tar shards)"),
)}


def check_options(name: str, options: dict[str, str | None], baselines: list[str],
                  whiten: bool = False) -> Task:
    """The task named, once the options given (`options`: option name -> value or None; `whiten`: --whiten) suit
    it."""
    if name not in TASKS:
        raise ConfigError(f"--task '{name}': expected one of: {', '.join(TASKS)}")
    if whiten and name not in ("linear", "knn"):
        raise ConfigError(f"--whiten is for --task linear and knn (got --task {name})")
    task = TASKS[name]
    if options.get("old_data") and name != "forgetting":
        raise ConfigError(f"--old-data is for --task forgetting (got --task {name})")
    if task.baselines is None and baselines:
        raise ConfigError(NO_BASELINE)
    for b in baselines:
        if b not in BASELINES:
            raise ConfigError(f"--baseline '{b}': expected random or pixels")
    if "pixels" in baselines and "pixels" not in task.baselines:
        raise ConfigError(f"--baseline pixels is for --task linear and knn (got --task {name})")
    given = [bool(options[o]) for o in task.required]
    if not all(given) and not (task.optional and not any(given)):
        raise ConfigError(task.missing)
    if any(b not in task.baselines for b in baselines):
        raise ConfigError(NO_BASELINE)
    return task


def check_run(task: Task, run_dir: Path, cfg: RunConfig, baselines: list[str]) -> None:
    """Fail when the opened run cannot do the task, or its data cannot have the baselines asked for."""
    if task.accepts is not None and not task.accepts(cfg):
        raise ConfigError(task.wrong_run.format(run_dir=run_dir, objective=cfg.objective))
    if "pixels" in baselines and cfg.modality != "image":
        raise ConfigError(f"--baseline pixels is for image runs; '{run_dir}' trained '{cfg.objective}' on "
                          f"{cfg.modality}")


def prompt_templates(prompts: list[str] | None, modality: str) -> list[str]:
    """zeroshot's prompt templates: the ones given, or a few generic ones for the modality."""
    templates = list(prompts or TEMPLATES[modality])
    for t in templates:  # before any decoding
        if "{label}" not in t:
            raise ConfigError(f"--prompt '{t}' has no {{label}}; expected e.g. \"a photo of a {{label}}\"")
    return templates
