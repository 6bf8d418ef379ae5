"""Exporting a trained run for the rest of the ecosystem.

`hf`: a directory that Hugging Face transformers loads with its Auto classes, mapped one to one (nothing is
permuted; the tokenizer goes along as `tokenizer.json`, which `PreTrainedTokenizerFast` loads):
- the GPT decoder onto Llama (`AutoModelForCausalLM`): pre-norm RMSNorm (eps 1e-6 or model.norm_eps), rotary
  embeddings in the "rotate half" layout, SwiGLU MLP, no biases, tied embeddings (or an lm_head, model.tied=false);
  our fused `qkv` and `up` (gate, up) matrices are split into Llama's separate projections (models/llama.py: the
  table `model.init` reads back).
- the masked-LM encoder onto ModernBERT (`AutoModelForMaskedLM`): normalised embedding, LayerNorm without bias
  (eps 1e-5), no norm before the first attention, fused Wqkv, GeGLU, RoPE, every layer global attention, the
  dense-GELU-norm head and a tied decoder with bias. Requires model.norm=layernorm and model.mlp=geglu (the
  bert-mlm recipe's defaults).

`safetensors`: the weights and the resolved config alone, for selfsup itself or your own code; with `quantize`
int8 (the trunk's linear layers) or bf16 (every weight), which `selfsup eval` / `embed` open directly
(selfsup/quantize.py).
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
from selfsup.data.read.tokenizer import EOS, MASK, PAD
from selfsup.models.llama import to_llama
from selfsup.models.transformer import Transformer
from selfsup.quantize import MARKER, MODES, quantized_state


class ExportError(ValueError):
    """An export that cannot be made; the message is one line meant for the user."""


def export(run_dir: Path, cfg: RunConfig, objective: nn.Module, fmt: str, out: Path,
           quantize: str | None = None, force: bool = False) -> Path:
    """Write the run's model in `fmt` to the folder `out` (see `check_out`), whole or not at all (`_staged`)."""
    if quantize is not None and (fmt != "safetensors" or quantize not in MODES):
        raise ExportError(f"--quantize {quantize}: expected {' or '.join(MODES)}, with --format safetensors")
    if fmt not in ("hf", "safetensors"):
        raise ExportError(f"--format '{fmt}': expected 'hf' or 'safetensors'")
    target = check_out(run_dir, out, force)
    hf = _hf_model(run_dir, cfg, objective) if fmt == "hf" else None  # an unmappable model fails before any write
    with _staged(target) as tmp:
        if hf is None:
            _write_safetensors(run_dir, objective, quantize, tmp)
        else:
            _write_hf(run_dir, cfg, *hf, tmp)
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
    """(weights, config.json) of the transformers model this run maps onto."""
    model, head = objective.model, getattr(objective, "head", None)
    if "mlm" in cfg.parts and cfg.objective == "hybrid":  # its MLM head makes it a ModernBERT masked LM
        head = objective.terms["mlm"].head
    m = cfg.model
    if cfg.objective == "clm" and (m.mlp, m.norm) == ("swiglu", "rmsnorm"):
        return to_llama(model), llama_config(cfg, model, run_dir)
    if "mlm" in cfg.parts and (m.mlp, m.norm) == ("geglu", "layernorm"):
        if m.kv_heads not in (None, m.heads):
            raise ExportError(f"--format hf: ModernBERT has no grouped-query attention, and this run has "
                              f"model.kv_heads={m.kv_heads} < model.heads={m.heads}; use --format safetensors")
        return modernbert_state_dict(model, head), modernbert_config(cfg, model, run_dir)
    raise ExportError("--format hf maps a causal LM with model.mlp=swiglu, model.norm=rmsnorm onto Llama and a "
                      "masked LM (or a hybrid with an mlm term) with model.mlp=geglu, model.norm=layernorm onto "
                      "ModernBERT (image backbones: use "
                      "--format safetensors); this run has "
                      f"objective={cfg.objective}, model.mlp={m.mlp}, model.norm={m.norm}")


def _write_hf(run_dir: Path, cfg: RunConfig, weights: dict[str, torch.Tensor], config: dict, out: Path) -> None:
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    shutil.copyfile(run_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS, "pad_token": PAD,
        "mask_token": MASK, "model_max_length": cfg.model.context, "add_prefix_space": False}, indent=1))


def llama_config(cfg: RunConfig, model: Transformer, run_dir: Path) -> dict:
    specials = _special_ids(run_dir)
    m = cfg.model
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": model.vocab,
        "hidden_size": m.dim, "intermediate_size": model.hidden,
        "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "num_key_value_heads": m.kv_heads or m.heads,
        "head_dim": m.dim // m.heads, "hidden_act": "silu", "max_position_embeddings": m.context,
        "rms_norm_eps": m.norm_eps or 1e-6, "rope_theta": m.rope_theta, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": m.tied, "bos_token_id": specials.get(EOS), "eos_token_id": specials.get(EOS),
        "pad_token_id": specials.get(PAD), "torch_dtype": "float32", "initializer_range": 0.02,
    }


def modernbert_state_dict(model: Transformer, head: nn.Module) -> dict[str, torch.Tensor]:
    sd = {"model.embeddings.tok_embeddings.weight": model.embed.weight,
          "model.embeddings.norm.weight": model.embed_norm.weight, "model.final_norm.weight": model.norm.weight,
          "head.dense.weight": head.dense.weight, "head.norm.weight": head.norm.weight,
          "decoder.bias": head.bias}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        if i > 0:  # layer 0 has no attention norm in either model
            sd[p + "attn_norm.weight"] = block.norm1.weight
        sd.update({p + "attn.Wqkv.weight": block.attn.qkv.weight, p + "attn.Wo.weight": block.attn.out.weight,
                   p + "mlp_norm.weight": block.norm2.weight, p + "mlp.Wi.weight": block.mlp.up.weight,
                   p + "mlp.Wo.weight": block.mlp.down.weight})
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def modernbert_config(cfg: RunConfig, model: Transformer, run_dir: Path) -> dict:
    specials = _special_ids(run_dir)
    m = cfg.model
    rope = {"rope_type": "default", "rope_theta": m.rope_theta}
    return {
        "architectures": ["ModernBertForMaskedLM"], "model_type": "modernbert", "vocab_size": model.vocab,
        "hidden_size": m.dim, "intermediate_size": model.hidden,
        "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "hidden_activation": "gelu",
        "max_position_embeddings": m.context, "norm_eps": m.norm_eps or 1e-5, "norm_bias": False,
        "attention_bias": False, "mlp_bias": False, "decoder_bias": True, "classifier_bias": False,
        "classifier_activation": "gelu",
        "classifier_pooling": m.pooling, "layer_types": ["full_attention"] * m.depth,
        "rope_parameters": {"full_attention": rope, "sliding_attention": rope}, "local_attention": 2 * m.context,
        "tie_word_embeddings": True, "pad_token_id": specials.get(PAD), "eos_token_id": specials.get(EOS),
        "bos_token_id": specials.get(EOS), "cls_token_id": specials.get(EOS), "sep_token_id": specials.get(EOS),
        "torch_dtype": "float32", "initializer_range": 0.02,
    }


def _special_ids(run_dir: Path) -> dict[str, int]:
    tok = json.loads((run_dir / "tokenizer.json").read_text())
    return {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
