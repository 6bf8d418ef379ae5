"""Labeled text for transfer evaluation, and running one transfer task (linear, knn, finetune) on a trunk.

A labeled set is a `.jsonl` file (or a folder of them) with a `text` and a `label` (a string or an integer) per
line. Bad lines are skipped and counted by reason, never a crash: invalid UTF-8 or JSON, no `text` string, an
empty or too long text, no usable `label`, and, in a test set, a label the training set does not have.
Class ids follow the sorted training labels (numerically when every label is an integer).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from selfsup.data.text import DataError, read_lines


@dataclass
class LabeledSet:
    path: str
    texts: list[str]
    labels: Tensor  # (N,) long class ids
    classes: list[str]  # class id -> label as written
    skipped: dict = field(default_factory=dict)

    def counts(self) -> dict:
        per_class = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(path=self.path, examples=len(self.texts), skipped=self.skipped,
                    per_class=dict(zip(self.classes, per_class)))


def _label(record: dict) -> str | None:
    label = record.get("label")
    if isinstance(label, bool):  # JSON true/false: almost always a mistake, not a class
        return None
    if isinstance(label, int):
        return str(label)
    if isinstance(label, str) and label.strip():
        return label.strip()
    return None


def _sort_key(label: str):
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)


def labeled_files(path: str | Path) -> list[Path]:
    p = Path(path).expanduser()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*.jsonl") if f.is_file()) if p.is_dir() else []
    if not files or any(f.suffix != ".jsonl" for f in files):
        what = ("does not exist" if not p.exists() else "is a folder without .jsonl files" if p.is_dir()
                else f"is a '{p.suffix or 'no suffix'}' file")
        raise DataError(f"labeled data '{path}' {what}; expected a .jsonl file (or a folder of them) with a "
                        "'text' and a 'label' per line")
    return files


def read_labeled(path: str, classes: list[str] | None = None, max_chars: int = 200_000) -> LabeledSet:
    """Read a labeled set. Without `classes` (a training set) the sorted labels found become the classes and at
    least two are required; with them (a test set) other labels are skipped as 'unknown_label'."""
    files = labeled_files(path)
    skipped: Counter = Counter()
    texts, labels = [], []
    for f in files:
        for line in read_lines(f, skipped):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped["bad_json"] += 1
                continue
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                skipped["no_text_field"] += 1
                continue
            text = record["text"].strip()
            if not text:
                skipped["empty"] += 1
                continue
            if len(text) > max_chars:
                skipped["too_long"] += 1
                continue
            label = _label(record)
            if label is None:
                skipped["no_label"] += 1
                continue
            if classes is not None and label not in classes:
                skipped["unknown_label"] += 1
                continue
            texts.append(text)
            labels.append(label)
    skipped = dict(sorted(skipped.items()))
    if not texts:
        raise DataError(f"labeled data '{path}' holds no usable examples with a 'text' and a 'label' "
                        f"(skipped: {skipped or 'none'})")
    if classes is None:
        classes = sorted(set(labels), key=_sort_key)
        if len(classes) < 2:
            raise DataError(f"labeled data '{path}' has {len(classes)} class ({classes[0]!r}); "
                            "classification needs at least 2")
    ids = {c: i for i, c in enumerate(classes)}
    return LabeledSet(str(path), texts, torch.tensor([ids[lab] for lab in labels], dtype=torch.long),
                      list(classes), skipped)


TASKS = ("linear", "knn", "finetune")


def evaluate(task: str, trunk, tok, train: LabeledSet, test: LabeledSet, device: torch.device,
             batch_size: int = 16, seed: int = 0, k: int = 20, temperature: float = 0.07, epochs: int = 10,
             lr: float = 3e-4, layer_decay: float = 0.75, patience: int = 3, progress=None) -> dict:
    """One transfer task on one trunk: accuracy, macro_f1, protocol and the task's own figures."""
    from selfsup.eval import features

    n = len(train.classes)
    if task == "finetune":
        from selfsup.eval.finetune import finetune

        return finetune(trunk, tok, train.texts, train.labels, test.texts, test.labels, n, device, lr=lr,
                        layer_decay=layer_decay, max_epochs=epochs, patience=patience, batch_size=batch_size,
                        seed=seed, progress=progress and (lambda it: progress(it, "fine-tuning")))
    if task not in TASKS:
        raise ValueError(f"task '{task}': expected one of {', '.join(TASKS)}")
    wrap = (lambda what: (lambda it: progress(it, what))) if progress else (lambda what: None)
    train_x = features.encode(trunk, tok, train.texts, batch_size, device, wrap("encoding train"))
    test_x = features.encode(trunk, tok, test.texts, batch_size, device, wrap("encoding test"))
    described = features.describe(trunk)
    if task == "linear":
        from selfsup.eval.linear import linear_probe

        return linear_probe(train_x, train.labels, test_x, test.labels, n, features=described, seed=seed)
    from selfsup.eval.knn import knn_eval

    return knn_eval(train_x, train.labels, test_x, test.labels, n, k=k, temperature=temperature,
                    features=described)
