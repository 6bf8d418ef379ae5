"""Our GPT trunk and Hugging Face transformers' LlamaForCausalLM, tensor for tensor: one table (`llama_names`) that
the export reads one way (`to_hf`) and `model.init` the other (`weights`).

Only the layout our trunk has: multi-head or grouped-query attention, no biases, SwiGLU, RMSNorm, plain RoPE, a
tied or untied output head.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from selfsup.config import RunConfig
from selfsup.models.hf.folder import Tensors, Unsupported, pad_rows

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch
    from torch import nn

ARCHITECTURE = "LlamaForCausalLM"
MODEL_TYPES = ("llama",)
OBJECTIVES = ("clm",)
TOKENIZER = True

TOP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
BLOCK = {  # ours -> Llama's; a tuple: our fused matrix is Llama's matrices stacked by rows, in that order
    "norm1.weight": "input_layernorm.weight", "norm2.weight": "post_attention_layernorm.weight",
    "attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.out.weight": "self_attn.o_proj.weight",
    "mlp.up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "mlp.down.weight": "mlp.down_proj.weight",
}
SHAPE = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads",
         "kv_heads": "num_key_value_heads", "vocab_size": "vocab_size", "mlp_hidden": "intermediate_size",
         "norm_eps": "rms_norm_eps"}  # model.KEY <- config.json's
KEYS = {f"model.{k}": v for k, v in SHAPE.items()} | {"model.tied": "tie_word_embeddings"}  # ours -> theirs, for errors


def llama_names(depth: int, tied: bool = True) -> dict[str, str | tuple[str, ...]]:
    """Every tensor of our trunk's state dict -> the Llama tensor (or stacked tensors) it is."""
    names = dict(TOP) if tied else TOP | {"head.weight": "lm_head.weight"}
    for i in range(depth):
        for ours, theirs in BLOCK.items():
            names[f"blocks.{i}.{ours}"] = (tuple(f"model.layers.{i}.{t}" for t in theirs) if isinstance(theirs, tuple)
                                           else f"model.layers.{i}.{theirs}")
    return names


def to_llama(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our trunk's weights under Llama's names (the fused matrices split into Llama's row blocks)."""
    ours, c = model.state_dict(), model.cfg
    KV = (c.kv_heads or c.heads) * (c.dim // c.heads)  # rows of k and of v: key/value heads × head size
    rows = {"attn.qkv.weight": [c.dim, KV, KV], "mlp.up.weight": [model.hidden, model.hidden]}
    sd = {}
    for name, theirs in llama_names(c.depth, c.tied).items():
        if isinstance(theirs, tuple):
            sd.update(zip(theirs, ours[name].split(rows[name.split(".", 2)[2]])))  # qkv: (D + 2KV, D); up: (2F, D)
        else:
            sd[theirs] = ours[name]
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _rope_theta(hf: dict) -> float:
    rope = hf.get("rope_parameters") or {}  # transformers 5 keeps rope_theta here
    return float(hf.get("rope_theta") or rope.get("rope_theta") or 10000.0)


def _unsupported(hf: dict) -> str | None:
    """Why our trunk cannot hold this model, or None."""
    heads = hf.get("num_attention_heads")
    if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
        return f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads ({hf['hidden_size'] // heads})"
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            return f"{key} true (our trunk has no biases)"
    if hf.get("hidden_act", "silu") != "silu":
        return f"hidden_act {hf['hidden_act']!r} (our SwiGLU is silu)"
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"rope type {rope.get('rope_type', rope.get('type'))!r} (only plain RoPE)"
    return None


def config_values(hf: dict) -> dict[str, object]:
    """Our model keys from a Llama config.json (LlamaConfig's defaults where it is silent)."""
    hf = {"num_key_value_heads": hf.get("num_attention_heads"), "rms_norm_eps": 1e-6} | hf
    absent = [k for k in SHAPE.values() if not isinstance(hf.get(k), (int, float)) or hf[k] <= 0]
    if absent:
        raise Unsupported(f"config.json has no positive number '{absent[0]}'")
    why = _unsupported(hf)
    if why:
        raise Unsupported(why)
    return {f"model.{k}": hf[v] for k, v in SHAPE.items()} | {
        "model.rope_theta": _rope_theta(hf), "model.mlp": "swiglu", "model.norm": "rmsnorm",
        "model.tied": bool(hf.get("tie_word_embeddings", True))}


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names, one at a time (the fused matrices stacked; the vocabulary padded
    to x64)."""
    import torch

    model = objective.model
    for name, keys in llama_names(model.cfg.depth, model.cfg.tied).items():
        keys = keys if isinstance(keys, tuple) else (keys,)
        value = torch.cat([theirs[k] for k in keys])
        yield "model." + name, pad_rows(value, model.vocab) if name in ("embed.weight", "head.weight") else value


def unfit(cfg: RunConfig) -> str | None:
    m = cfg.model
    if cfg.objective != "clm" or (m.mlp, m.norm) != ("swiglu", "rmsnorm"):
        return "a causal LM with model.mlp=swiglu, model.norm=rmsnorm"
    return None


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's decoder as LlamaForCausalLM: (tensors, config.json)."""
    from selfsup.data.read.tokenizer import EOS, PAD

    model, m = objective.model, cfg.model
    config = {
        "architectures": [ARCHITECTURE], "model_type": "llama", "vocab_size": model.vocab,
        "hidden_size": m.dim, "intermediate_size": model.hidden,
        "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "num_key_value_heads": m.kv_heads or m.heads,
        "head_dim": m.dim // m.heads, "hidden_act": "silu", "max_position_embeddings": m.context,
        "rms_norm_eps": m.norm_eps or 1e-6, "rope_theta": m.rope_theta, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": m.tied, "bos_token_id": specials.get(EOS), "eos_token_id": specials.get(EOS),
        "pad_token_id": specials.get(PAD), "torch_dtype": "float32", "initializer_range": 0.02,
    }
    return to_llama(model), config
