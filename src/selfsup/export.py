"""Exporting a trained run for the rest of the ecosystem.

`hf`: a directory that Hugging Face transformers loads with its Auto classes, mapped one to one (nothing is
permuted; the tokenizer goes along as `tokenizer.json`, which `PreTrainedTokenizerFast` loads). Each family's
module in models/hf/ holds its name table, which `model.init` reads the other way: the GPT decoder as
LlamaForCausalLM (models/hf/llama.py), the masked-LM encoder as ModernBertForMaskedLM (models/hf/modernbert.py).

`safetensors`: the weights and the resolved config alone, for selfsup itself or your own code; with `quantize`
int8 (the trunk's linear layers) or bf16 (every weight), which `selfsup eval` / `embed` open directly
(selfsup/quantize.py).

`onnx`: each encoder as an ONNX graph of the features `selfsup embed` computes (the GPT: logits; clip / siglip: the
joint embeddings of each tower), with onnx.json saying how to feed it, for onnxruntime (selfsup/onnx_export.py).

The tokenizer goes along with a post-processor that opens each text with EOS, as training did (`write_tokenizer`).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model
from torch import nn

from selfsup.config import RunConfig
from selfsup.data.read.tokenizer import EOS, MASK, PAD, opening_eos
from selfsup.data.read.tokenizer import load as load_tokenizer
from selfsup.models.hf import llama, modernbert
from selfsup.quantize import MARKER, MODES, quantized_state

HF_FAMILIES = (llama, modernbert)  # --format hf: each says why a run does not fit it (unfit) or writes it (to_hf)


class ExportError(ValueError):
    """An export that cannot be made; the message is one line meant for the user."""


def export(run_dir: Path, cfg: RunConfig, objective: nn.Module, fmt: str, out: Path,
           quantize: str | None = None, force: bool = False) -> Path:
    """Write the run's model in `fmt` to the folder `out` (see `check_out`), whole or not at all (`_staged`)."""
    if fmt == "onnx":
        return _export_onnx(run_dir, cfg, objective, out, quantize, force)
    if quantize is not None and (fmt != "safetensors" or quantize not in MODES):
        raise ExportError(f"--quantize {quantize}: expected {' or '.join(MODES)}, with --format safetensors "
                          "(or int8 with --format onnx)")
    if fmt not in ("hf", "safetensors"):
        raise ExportError(f"--format '{fmt}': expected 'hf', 'safetensors' or 'onnx'")
    target = check_out(run_dir, out, force)
    hf = _hf_model(run_dir, cfg, objective) if fmt == "hf" else None  # an unmappable model fails before any write
    with _staged(target) as tmp:
        if hf is None:
            _write_safetensors(run_dir, objective, quantize, tmp)
        else:
            _write_hf(run_dir, cfg, *hf, tmp)
    return out


def _export_onnx(run_dir: Path, cfg: RunConfig, objective: nn.Module, out: Path, quantize: str | None,
                 force: bool) -> Path:
    """--format onnx (selfsup/onnx_export.py): the graphs, onnx.json, and the tokenizer of a text or media-text run."""
    from selfsup import onnx_export

    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize} with --format onnx: expected int8 (onnxruntime's dynamic "
                          "quantization of the linear layers)")
    why = onnx_export.unfit(cfg, objective)
    if why is not None:
        raise ExportError(f"--format onnx: {why}")
    target = check_out(run_dir, out, force)
    with _staged(target) as tmp:
        scratch = tmp / ".fp32"  # the float graphs int8 is made from, removed before the folder is whole
        scratch.mkdir()
        try:
            onnx_export.write_onnx(cfg, objective, quantize, tmp, scratch)
        except onnx_export.Untraceable as e:
            raise ExportError(f"--format onnx: {e}") from None
        shutil.rmtree(scratch)
        if (run_dir / "tokenizer.json").is_file():
            write_tokenizer(run_dir, cfg.text.context if cfg.pairs else cfg.model.context, tmp)
    return out


def check_out(run_dir: Path, out: Path, force: bool) -> Path:
    """`out` resolved (links followed), where an export may go: a new folder, an empty one, or with `force` one whose
    contents it replaces; never the run directory, a folder inside it or one holding it (--force or not)."""
    run, target = run_dir.resolve(), out.resolve()
    if target == run or run in target.parents:
        where = "is the run directory" if target == run else "is inside the run directory"
        raise ExportError(f"--out '{out}' {where} '{run_dir}', which the export reads; expected a folder outside it")
    if target in run.parents:
        raise ExportError(f"--out '{out}' holds the run directory '{run_dir}'; expected a folder outside it")
    if target.exists() and not target.is_dir():
        raise ExportError(f"--out '{out}' is a file; expected a folder")
    if not force and target.is_dir() and any(target.iterdir()):
        raise ExportError(f"--out '{out}' is not empty; expected a new or empty folder, or --force to replace what it "
                          "holds")
    return target


@contextmanager
def _staged(target: Path):
    """A hidden folder on `target`'s file system to write into: beside a new `target`, renamed to it at the end;
    inside an existing one (a mount point or the working directory cannot be renamed), whose entries it replaces
    only once the export is whole. On an error it is removed, with any parent folders made for it."""
    new = not target.exists()
    made = next((p for p in reversed(target.parents) if not p.exists()), None)  # the first parent to be made
    tmp = target.with_name(f".{target.name}.export-{os.getpid()}") if new else target / f".export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed export of this process id
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    if new:
        os.replace(tmp, target)
        return
    for entry in target.iterdir():  # what --force let it replace (links are removed, never followed)
        if entry == tmp:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in tmp.iterdir():
        os.replace(entry, target / entry.name)
    tmp.rmdir()


def _write_safetensors(run_dir: Path, objective: nn.Module, quantize: str | None, out: Path) -> None:
    if quantize is None:
        save_model(objective, str(out / "model.safetensors"))  # backbone and heads, keyed as in selfsup
    else:  # selfsup opens it (eval, embed) as it opens a run directory
        state = quantized_state(objective, quantize)
        save_file(state, out / "model.safetensors")
        layers = sum(k.endswith(".weight_int8") for k in state)
        (out / MARKER).write_text(json.dumps({"mode": quantize, "layers": layers}))
    shutil.copyfile(run_dir / "config.yaml", out / "config.yaml")
    if (run_dir / "tokenizer.json").is_file():  # text runs, and the text tower of clip / siglip runs
        shutil.copyfile(run_dir / "tokenizer.json", out / "tokenizer.json")


def _hf_model(run_dir: Path, cfg: RunConfig, objective: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, config.json) of the transformers model this run maps onto: the first of HF_FAMILIES it fits."""
    whys = []
    for family in HF_FAMILIES:
        why = family.unfit(cfg)
        if why is None:
            return family.to_hf(cfg, objective, _special_ids(run_dir))
        whys.append(f"{family.ARCHITECTURE} needs {why}")
    m = cfg.model
    raise ExportError(f"--format hf: this run (objective={cfg.objective}, model.mlp={m.mlp}, model.norm={m.norm}) "
                      f"maps onto none of: {'; '.join(whys)}; use --format safetensors")


def _write_hf(run_dir: Path, cfg: RunConfig, weights: dict[str, torch.Tensor], config: dict, out: Path) -> None:
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    write_tokenizer(run_dir, cfg.model.context, out)
    if any(a.endswith("ForCausalLM") for a in config.get("architectures", [])):
        write_generation_config(config, out)


def write_generation_config(config: dict, out: Path) -> None:
    """generation_config.json of a causal export: `generate` opens with EOS (bos), stops at it, pads with PAD."""
    (out / "generation_config.json").write_text(json.dumps({
        key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}, indent=1))


def write_tokenizer(run_dir: Path, context: int, out: Path) -> None:
    """The run's tokenizer as transformers loads it (tokenizer.json + tokenizer_config.json), opening each text with
    EOS as training did (`opening_eos`), so AutoTokenizer gives the ids `selfsup embed` feeds the trunk."""
    opening_eos(load_tokenizer(run_dir / "tokenizer.json", "the run's tokenizer")).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS, "pad_token": PAD,
        "mask_token": MASK, "model_max_length": context, "add_prefix_space": False}, indent=1))


def _special_ids(run_dir: Path) -> dict[str, int]:
    tok = json.loads((run_dir / "tokenizer.json").read_text())
    return {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
