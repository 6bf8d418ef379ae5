"""What `selfsup eval` prints for each task: tables and protocol lines built from the result alone (the JSON the
task writes to RUN_DIR/eval/<task>.json), returned in printing order."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from selfsup.eval.joint import KS


def perplexity(data: str, result: dict) -> list:
    table = Table(title=f"perplexity on {data}")
    for col in ("tokens", "loss", "perplexity"):
        table.add_column(col, justify="right")
    table.add_row(f"{result['tokens']:,}", f"{result['loss']:.4f}", f"{result['perplexity']:.2f}")
    lines = [table, f"protocol: {result['protocol']}"]
    if result["skipped"]:
        lines.append(f"skipped documents: {result['skipped']}")
    return lines


def forgetting(run_dir: Path, result: dict) -> list:
    """Parent and continued run on both domains' held-out data (and the linear probe of both)."""
    causal = "perplexity" in result["new"]["parent"]  # a causal LM's losses are also perplexities
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
    if "probe" in result:
        b, a = result["probe"]["parent"]["accuracy"], result["probe"]["continued"]["accuracy"]
        table.add_row("probe", "linear accuracy", f"{100 * b:.1f}%", f"{100 * a:.1f}%", f"{100 * (a - b):+.1f} pts")
    lines = [table, f"parent: {result['parent']}",
             f"old domain: {result['old']['data']} ({result['old']['named_by']}); new "
             f"domain: {result['new']['data']}",
             f"protocol: {result['protocol']}"]
    if "probe" in result:
        lines.append(f"probe protocol: {result['probe']['protocol']}")
    return lines


def joint(result: dict, modality: str, templates: int) -> list:
    """zeroshot or retrieval: each model's figures; `templates`: how many prompt templates zeroshot used."""
    test, task = result["data"]["test"], result["task"]
    models = {n: result[n] for n in ("pretrained", "random") if n in result}
    if task == "zeroshot":
        title = (f"zeroshot on {test['path']}: {len(test['per_class'])} classes, {test['examples']:,} "
                 f"{modality} items, {templates} prompt templates")
        columns = ("top-1", "top-5", "macro-F1")
        rows = {n: (f"{100 * r['accuracy']:.1f}%", f"{100 * r['top5']:.1f}%", f"{100 * r['macro_f1']:.1f}%")
                for n, r in models.items()}
        rows["chance"] = (f"{100 * result['pretrained']['chance']:.1f}%", "", "")
    else:
        title = (f"retrieval on {test['path']}: {test['items']:,} {modality} items, "
                 f"{result['pretrained']['texts']:,} distinct captions")
        columns = ("direction", *(f"R@{k}" for k in KS), "mean R")
        rows = {}
        for n, r in models.items():
            for d, key in ((f"{modality}→text", "media_to_text"), (f"text→{modality}", "text_to_media")):
                rows[(n, d)] = (d, *(f"{100 * r[key][k]:.1f}%" for k in KS),
                                f"{100 * r['mean_recall']:.1f}%" if key == "media_to_text" else "")
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    for col in columns:
        table.add_column(col, justify="left" if col == "direction" else "right", no_wrap=True)
    for name, cells in rows.items():
        table.add_row(name[0] if isinstance(name, tuple) else name, *cells)
    lines = [table, f"protocol: {result['protocol']}"]
    if result["data"]["skipped"]:
        lines.append(f"skipped: {result['data']['skipped']}")
    return lines


def transfer(result: dict, modality: str) -> list:
    """linear, knn or finetune: each model's figures, the gain over a random init, and the task's own figures."""
    task, data = result["task"], result["data"]
    models = {n: result[n] for n in ("pretrained", "random", "pixels") if n in result}
    table = Table(title=f"{task} on {data['test']['path']}: {len(result['classes'])} classes, "
                        f"{data['train']['examples']:,} train / {data['test']['examples']:,} test "
                        f"{'texts' if modality == 'text' else modality + ' items'}")
    for col, justify in (("task", "left"), ("model", "left"), ("accuracy", "right"), ("macro-F1", "right")):
        table.add_column(col, justify=justify)
    for name, r in models.items():
        table.add_row(task, name, f"{100 * r['accuracy']:.1f}%", f"{100 * r['macro_f1']:.1f}%")
    if "gain" in result:
        g = result["gain"]
        table.add_row(task, "gain", f"{100 * g['accuracy']:+.1f} pts", f"{100 * g['macro_f1']:+.1f} pts")
    lines = [table]
    for name, r in models.items():
        if name == "pretrained" or r["protocol"] != result["protocol"]:
            lines.append(f"protocol{'' if name == 'pretrained' else f' ({name})'}: {r['protocol']}")
        if task == "linear":
            lines.append(f"{name}: l2 = {r['l2']:g} (validation accuracy per l2: {r['val_accuracy']})")
        if "objective_loss_before" in r:
            b, a = r["objective_loss_before"], r["objective_loss_after"]
            lines.append(f"{name}: pretraining objective ({result['objective']}) loss on the run's validation "
                         f"data: {b:.4f} before fine-tuning, {a:.4f} after ({100 * (a - b) / b:+.1f}%)")
        if task == "knn":
            lines.append(f"{name}: accuracy by k: " + ", ".join(f"k={k} {100 * a:.1f}%"
                                                                 for k, a in r["accuracy_by_k"].items()))
    for name, s in result["skipped"].items():
        if s:
            lines.append(f"skipped {name} lines: {s}")
    return lines
