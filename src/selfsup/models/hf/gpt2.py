"""Our GPT trunk with GPT-2's options and Hugging Face transformers' GPT2LMHeadModel, tensor for tensor: one table
(`gpt2_names`) that the export reads one way (`to_hf`) and `model.init` the other (`weights`).

GPT-2's layout: learned positions (wpe, n_positions rows), pre-norm LayerNorm with biases, a plain GELU MLP (gelu_new
is our gelu_tanh), biases on every linear layer (model.bias=all), q, k, v stacked in one c_attn as our fused qkv.
Its Conv1D layers keep their weights as (in, out): ours are nn.Linear's (out, in), so every matrix is transposed.
A checkpoint saved from GPT2Model (openai-community/gpt2's own) names its tensors without the "transformer." prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from selfsup.config import RunConfig
from selfsup.models.hf.folder import Tensors, Unsupported, pad_rows, positive

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch
    from torch import nn

ARCHITECTURE = "GPT2LMHeadModel"
MODEL_TYPES = ("gpt2",)
OBJECTIVES = ("clm",)
TOKENIZER = True

TOP = {"embed.weight": "wte.weight", "positions.weight": "wpe.weight", "norm.weight": "ln_f.weight",
       "norm.bias": "ln_f.bias"}
BLOCK = {"norm1": "ln_1", "attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj", "norm2": "ln_2", "mlp.up": "mlp.c_fc",
         "mlp.down": "mlp.c_proj"}  # ours -> GPT-2's, each with a .weight and a .bias
LINEAR = ("attn.qkv.weight", "attn.out.weight", "mlp.up.weight", "mlp.down.weight")  # Conv1D in GPT-2: transposed
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
               "quick_gelu": "quick_gelu"}  # its activation_function -> our model.mlp (the same function)
SHAPE = {"dim": "n_embd", "depth": "n_layer", "heads": "n_head", "vocab_size": "vocab_size",
         "norm_eps": "layer_norm_epsilon"}  # model.KEY <- config.json's
KEYS = {f"model.{k}": v for k, v in SHAPE.items()} | {"model.kv_heads": "n_head", "model.mlp_hidden": "n_inner",
                                                      "model.tied": "tie_word_embeddings"}  # ours -> theirs


def gpt2_names(depth: int, tied: bool = True) -> dict[str, str]:
    """Every tensor of our trunk's state dict -> the GPT2LMHeadModel tensor it is."""
    names = {ours: f"transformer.{theirs}" for ours, theirs in TOP.items()}
    if not tied:
        names["head.weight"] = "lm_head.weight"
    for i in range(depth):
        for ours, theirs in BLOCK.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = f"transformer.h.{i}.{theirs}.{kind}"
    return names


def _transposed(name: str) -> bool:
    return name.split(".", 2)[-1] in LINEAR


def _unsupported(hf: dict) -> str | None:
    """Why our trunk cannot hold this model, or None. reorder_and_upcast_attn only changes the order of fp32 steps
    in transformers' eager attention, the same product to rounding: it maps."""
    if hf.get("activation_function", "gelu_new") not in ACTIVATIONS:
        return f"activation_function {hf['activation_function']!r} (expected one of: {', '.join(ACTIVATIONS)})"
    if hf.get("scale_attn_weights", True) is not True:
        return "scale_attn_weights false (our attention scales by 1/sqrt(head size))"
    if hf.get("scale_attn_by_inverse_layer_idx"):
        return "scale_attn_by_inverse_layer_idx true (our attention does not scale by layer)"
    if hf.get("add_cross_attention"):
        return "add_cross_attention true (our decoder has no cross-attention)"
    return None


def config_values(hf: dict) -> dict[str, object]:
    """Our model keys from a GPT-2 config.json (GPT2Config's defaults where it is silent)."""
    hf = {"layer_norm_epsilon": 1e-5} | hf
    positive(hf, SHAPE.values())
    why = _unsupported(hf)
    if why:
        raise Unsupported(why)
    return {f"model.{k}": hf[v] for k, v in SHAPE.items()} | {
        "model.kv_heads": hf["n_head"], "model.mlp_hidden": hf.get("n_inner") or 4 * hf["n_embd"],
        "model.mlp": ACTIVATIONS[hf.get("activation_function", "gelu_new")], "model.norm": "layernorm",
        "model.bias": "all", "model.learned_positions": True, "model.norm_position": "pre", "model.layer_scale": None,
        "model.tied": bool(hf.get("tie_word_embeddings", True))}


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names, one at a time (Conv1D matrices transposed, the vocabulary padded
    to x64, the first model.context rows of the position table)."""
    model = objective.model
    prefix = "transformer." if "transformer.wte.weight" in theirs else ""  # "": saved from GPT2Model
    for name, key in gpt2_names(model.cfg.depth, model.cfg.tied).items():
        value = theirs[key.replace("transformer.", prefix, 1)]
        if _transposed(name):
            value = value.t()  # (in, out) -> (out, in)
        elif name in ("embed.weight", "head.weight"):
            value = pad_rows(value, model.vocab)
        elif name == "positions.weight":
            value = value[: model.cfg.context]  # (n_positions, D) -> (T, D): init.py caps T at n_positions
        yield "model." + name, value


def unfit(cfg: RunConfig) -> str | None:
    m = cfg.model
    if (cfg.objective != "clm" or not m.learned_positions or (m.norm, m.bias, m.norm_position) != (
            "layernorm", "all", "pre") or m.mlp not in ACTIVATIONS.values() or m.layer_scale is not None):
        return ("a causal LM with model.learned_positions=true, model.bias=all, model.norm=layernorm, model.mlp="
                "gelu_tanh (or gelu, quick_gelu), pre-norm, no layer scale")
    if m.kv_heads not in (None, m.heads):
        return f"multi-head attention (GPT-2 has no grouped-query attention; model.kv_heads={m.kv_heads})"
    return None


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's decoder as GPT2LMHeadModel: (tensors, config.json)."""
    from selfsup.data.read.tokenizer import EOS, PAD

    model, m = objective.model, cfg.model
    ours = model.state_dict()
    sd = {theirs: ours[name].t() if _transposed(name) else ours[name]
          for name, theirs in gpt2_names(m.depth, m.tied).items()}
    activation = next(theirs for theirs, ours in ACTIVATIONS.items() if ours == m.mlp)  # gelu_tanh: gelu_new
    config = {
        "architectures": [ARCHITECTURE], "model_type": "gpt2", "vocab_size": model.vocab, "n_embd": m.dim,
        "n_layer": m.depth, "n_head": m.heads, "n_inner": model.hidden, "n_positions": m.context,
        "activation_function": activation, "layer_norm_epsilon": m.norm_eps or 1e-5,
        "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.dropout, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "add_cross_attention": False,
        "tie_word_embeddings": m.tied, "bos_token_id": specials.get(EOS), "eos_token_id": specials.get(EOS),
        "pad_token_id": specials.get(PAD), "torch_dtype": "float32", "initializer_range": 0.02,
    }
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}, config
