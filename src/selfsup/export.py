"""Exporting a trained run for the rest of the ecosystem.

`hf`: a directory that Hugging Face transformers loads with its Auto classes. The GPT decoder maps one to one
onto Llama (`LlamaForCausalLM`): pre-norm RMSNorm (eps 1e-6), rotary embeddings in the same "rotate half"
layout, SwiGLU MLP, no biases, tied embeddings. Our fused `qkv` and `up` (gate, up) matrices are split into
Llama's separate projections; nothing is permuted. The tokenizer goes along as `tokenizer.json`, which
`PreTrainedTokenizerFast` loads.

`safetensors`: the weights and the resolved config alone, for selfsup itself or your own code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from selfsup.config import RunConfig
from selfsup.data.tokenizer import EOS, PAD
from selfsup.models.blocks import mlp_hidden
from selfsup.models.gpt import GPT


class ExportError(ValueError):
    """An export that cannot be made; the message is one line meant for the user."""


def export(run_dir: Path, cfg: RunConfig, model: GPT, fmt: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
        shutil.copyfile(run_dir / "config.yaml", out / "config.yaml")
        shutil.copyfile(run_dir / "tokenizer.json", out / "tokenizer.json")
        return out
    if fmt != "hf":
        raise ExportError(f"--format '{fmt}': expected 'hf' or 'safetensors'")
    if cfg.objective != "clm" or cfg.model.mlp != "swiglu" or cfg.model.norm != "rmsnorm":
        raise ExportError(f"--format hf maps the causal LM with model.mlp=swiglu and model.norm=rmsnorm onto Llama; "
                          f"this run has objective={cfg.objective}, model.mlp={cfg.model.mlp}, "
                          f"model.norm={cfg.model.norm}")
    save_file(llama_state_dict(model), out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(llama_config(cfg, model, run_dir), indent=1))
    shutil.copyfile(run_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS, "pad_token": PAD,
        "model_max_length": cfg.model.context, "add_prefix_space": False}, indent=1))
    return out


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    D = model.cfg.dim
    F = mlp_hidden(D, model.cfg.mlp_ratio, "swiglu")
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.qkv.weight.split(D)  # (D, D) each: rows are heads × head size, as in Llama
        gate, up = block.mlp.up.weight.split(F)  # (F, D) each
        sd.update({
            p + "input_layernorm.weight": block.norm1.weight, p + "post_attention_layernorm.weight": block.norm2.weight,
            p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": block.attn.out.weight,
            p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up, p + "mlp.down_proj.weight": block.mlp.down.weight,
        })
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def llama_config(cfg: RunConfig, model: GPT, run_dir: Path) -> dict:
    tok = json.loads((run_dir / "tokenizer.json").read_text())
    specials = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    m = cfg.model
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": model.vocab,
        "hidden_size": m.dim, "intermediate_size": mlp_hidden(m.dim, m.mlp_ratio, "swiglu"),
        "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "num_key_value_heads": m.heads,
        "head_dim": m.dim // m.heads, "hidden_act": "silu", "max_position_embeddings": m.context,
        "rms_norm_eps": 1e-6, "rope_theta": m.rope_theta, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": True, "bos_token_id": specials.get(EOS), "eos_token_id": specials.get(EOS),
        "pad_token_id": specials.get(PAD), "torch_dtype": "float32", "initializer_range": 0.02,
    }
