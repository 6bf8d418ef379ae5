"""Our GPT trunk and Hugging Face transformers' LlamaForCausalLM, tensor for tensor: one table (`llama_names`) that
the export reads one way (`to_hf`) and `model.init` the other (`weights`). Mistral is Llama's layout; Qwen2 is
Llama's with biases on the query/key/value projections (model.bias=qkv), which the export writes as
Qwen2ForCausalLM.

Only the layout our trunk has: multi-head or grouped-query attention, no biases (or Qwen2's), SwiGLU, RMSNorm, plain
RoPE, a tied or untied output head; a sliding window (Mistral, Qwen2) only where it does not bind within
model.context (init.py caps the context at it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from selfsup.config import RunConfig
from selfsup.models.hf.folder import Tensors, Unsupported, pad_rows, positive

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch
    from torch import nn

ARCHITECTURE = "LlamaForCausalLM"
MODEL_TYPES = ("llama", "mistral", "qwen2")
QWEN2 = "Qwen2ForCausalLM"  # the export's class for model.bias=qkv
OBJECTIVES = ("clm",)
TOKENIZER = True

TOP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
BLOCK = {  # ours -> Llama's; a tuple: our fused matrix is Llama's matrices stacked by rows, in that order
    "norm1.weight": "input_layernorm.weight", "norm2.weight": "post_attention_layernorm.weight",
    "attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.out.weight": "self_attn.o_proj.weight",
    "mlp.up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "mlp.down.weight": "mlp.down_proj.weight",
}
QKV_BIAS = {"attn.qkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")}  # Qwen2
SHAPE = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads",
         "kv_heads": "num_key_value_heads", "vocab_size": "vocab_size", "mlp_hidden": "intermediate_size",
         "norm_eps": "rms_norm_eps"}  # model.KEY <- config.json's
KEYS = {f"model.{k}": v for k, v in SHAPE.items()} | {"model.tied": "tie_word_embeddings"}  # ours -> theirs, for errors


def llama_names(depth: int, tied: bool = True, bias: str = "none") -> dict[str, str | tuple[str, ...]]:
    """Every tensor of our trunk's state dict -> the Llama (or Qwen2, bias="qkv") tensor or stacked tensors it is."""
    names = dict(TOP) if tied else TOP | {"head.weight": "lm_head.weight"}
    block = BLOCK | QKV_BIAS if bias == "qkv" else BLOCK
    for i in range(depth):
        for ours, theirs in block.items():
            names[f"blocks.{i}.{ours}"] = (tuple(f"model.layers.{i}.{t}" for t in theirs) if isinstance(theirs, tuple)
                                           else f"model.layers.{i}.{theirs}")
    return names


def to_llama(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our trunk's weights under Llama's names (the fused matrices split into Llama's row blocks)."""
    ours, c = model.state_dict(), model.cfg
    KV = (c.kv_heads or c.heads) * (c.dim // c.heads)  # rows of k and of v: key/value heads × head size
    rows = {"attn.qkv.weight": [c.dim, KV, KV], "attn.qkv.bias": [c.dim, KV, KV], "mlp.up.weight": [model.hidden] * 2}
    sd = {}
    for name, theirs in llama_names(c.depth, c.tied, c.bias).items():
        if isinstance(theirs, tuple):  # qkv: (D + 2KV, D) and its bias (D + 2KV,); up: (2F, D)
            sd.update(zip(theirs, ours[name].split(rows[name.split(".", 2)[2]])))
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
            return f"{key} true (our Llama layout has no biases; Qwen2's are on q/k/v alone)"
    if hf.get("hidden_act", "silu") != "silu":
        return f"hidden_act {hf['hidden_act']!r} (our SwiGLU is silu)"
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"rope type {rope.get('rope_type', rope.get('type'))!r} (only plain RoPE)"
    return None


def config_values(hf: dict) -> dict[str, object]:
    """Our model keys from a Llama config.json (LlamaConfig's defaults where it is silent)."""
    hf = {"num_key_value_heads": hf.get("num_attention_heads"), "rms_norm_eps": 1e-6} | hf
    positive(hf, SHAPE.values())
    why = _unsupported(hf)
    if why:
        raise Unsupported(why)
    return {f"model.{k}": hf[v] for k, v in SHAPE.items()} | {
        "model.rope_theta": _rope_theta(hf), "model.mlp": "swiglu", "model.norm": "rmsnorm",
        "model.bias": "qkv" if hf.get("model_type") == "qwen2" else "none",  # Qwen2's q/k/v always have biases
        "model.learned_positions": False, "model.norm_position": "pre", "model.layer_scale": None,
        "model.tied": bool(hf.get("tie_word_embeddings", False))}  # False: the three classes' default


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names, one at a time (the fused matrices stacked; the vocabulary padded
    to x64)."""
    import torch

    model = objective.model
    for name, keys in llama_names(model.cfg.depth, model.cfg.tied, model.cfg.bias).items():
        keys = keys if isinstance(keys, tuple) else (keys,)
        value = torch.cat([theirs[k] for k in keys])
        yield "model." + name, pad_rows(value, model.vocab) if name in ("embed.weight", "head.weight") else value


def unfit(cfg: RunConfig) -> str | None:
    m = cfg.model
    if (cfg.objective != "clm" or (m.mlp, m.norm, m.norm_position) != ("swiglu", "rmsnorm", "pre") or m.bias == "all"
            or m.learned_positions or m.layer_scale is not None):
        return ("a causal LM with model.mlp=swiglu, model.norm=rmsnorm, model.bias=none (or qkv: Qwen2ForCausalLM), "
                "rotary positions, pre-norm, no layer scale")
    return None


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's decoder as LlamaForCausalLM, or Qwen2ForCausalLM with model.bias=qkv: (tensors, config.json)."""
    from selfsup.data.read.tokenizer import EOS, PAD

    model, m = objective.model, cfg.model
    config = {
        "architectures": [ARCHITECTURE], "model_type": "llama", "vocab_size": model.vocab,
        "hidden_size": m.dim, "intermediate_size": model.hidden,
        "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "num_key_value_heads": m.kv_heads or m.heads,
        "head_dim": m.dim // m.heads, "hidden_act": "silu", "max_position_embeddings": m.context,
        "rms_norm_eps": m.norm_eps or 1e-6, "rope_theta": m.rope_theta,
        "tie_word_embeddings": m.tied, "bos_token_id": specials.get(EOS), "eos_token_id": specials.get(EOS),
        "pad_token_id": specials.get(PAD), "torch_dtype": "float32", "initializer_range": 0.02,
    }
    if m.bias == "qkv":  # Qwen2's q/k/v biases are in its code, not its config
        config |= {"architectures": [QWEN2], "model_type": "qwen2", "use_sliding_window": False}
    else:
        config |= {"attention_bias": False, "mlp_bias": False}
    return to_llama(model), config
