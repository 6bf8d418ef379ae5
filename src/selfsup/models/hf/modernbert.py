"""Our masked-LM encoder and Hugging Face transformers' ModernBertForMaskedLM (and the bare ModernBertModel), tensor
for tensor: one table (`modernbert_names`) that the export reads one way (`to_hf`) and `model.init` the other
(`weights`). A run with an mlm term exports as ModernBertForMaskedLM; one without (simcse) has no MLM head to give,
so its encoder exports as the bare ModernBertModel.

Normalised embedding, LayerNorm (eps norm_eps) without biases or, with model.bias=all, with them on every layer
(ModernBERT's attention_bias, mlp_bias, norm_bias and classifier_bias all true), no norm before the first attention,
fused Wqkv, GeGLU, RoPE, the dense-GELU-norm head and a tied decoder with bias. Its local layers are our
model.local_attention (a token sees local_attention/2 tokens either side), model.global_every (every n-th layer,
from the first, global) and model.local_rope_theta; model.rope_theta is the global layers' base. Requires
model.norm=layernorm and model.mlp=geglu (the bert-mlm recipe's defaults).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from selfsup.config import RunConfig
from selfsup.models.hf.bert import head_prefix
from selfsup.models.hf.folder import Tensors, Unsupported, pad_rows, positive

if TYPE_CHECKING:
    import torch
    from torch import nn

ARCHITECTURE = "ModernBertForMaskedLM"
MODEL_TYPES = ("modernbert",)
OBJECTIVES = ("mlm", "simcse")
TOKENIZER = True

BLOCK = {"norm1": "attn_norm", "attn.qkv": "attn.Wqkv", "attn.out": "attn.Wo", "norm2": "mlp_norm",
         "mlp.up": "mlp.Wi", "mlp.down": "mlp.Wo"}  # ours -> ModernBERT's, each a weight (and a bias)
HEAD = {"dense.weight": "head.dense.weight", "dense.bias": "head.dense.bias", "norm.weight": "head.norm.weight",
        "norm.bias": "head.norm.bias", "bias": "decoder.bias"}  # our MLM head -> ModernBertForMaskedLM's
BIASES = ("attention_bias", "mlp_bias", "norm_bias", "classifier_bias")  # model.bias=all: every one true
SHAPE = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads",
         "vocab_size": "vocab_size", "mlp_hidden": "intermediate_size", "norm_eps": "norm_eps"}
KEYS = {f"model.{k}": v for k, v in SHAPE.items()} | {  # ours -> theirs, for errors
    "model.local_attention": "local_attention", "model.global_every": "global_attn_every_n_layers",
    "model.rope_theta": "global_rope_theta", "model.local_rope_theta": "local_rope_theta"}
DEFAULTS = {"hidden_activation": "gelu", "classifier_activation": "gelu", "norm_eps": 1e-5, "local_attention": 128,
            "global_attn_every_n_layers": 3, "global_rope_theta": 160_000.0, "local_rope_theta": 10_000.0,
            "max_position_embeddings": 8192}  # ModernBertConfig's, where a config.json is silent


def modernbert_names(depth: int, bias: bool, prefix: str = "model.") -> dict[str, str]:
    """Every tensor of our trunk's state dict -> the ModernBERT tensor it is; prefix: 'model.' (the masked LM) or
    '' (the bare model). Layer 0 has no attention norm in either model."""
    kinds = ("weight", "bias") if bias else ("weight",)
    names = {"embed.weight": prefix + "embeddings.tok_embeddings.weight"}
    for ours, theirs in (("embed_norm", "embeddings.norm"), ("norm", "final_norm")):
        names.update({f"{ours}.{k}": f"{prefix}{theirs}.{k}" for k in kinds})
    for i in range(depth):
        for ours, theirs in BLOCK.items():
            if i == 0 and ours == "norm1":
                continue
            names.update({f"blocks.{i}.{ours}.{k}": f"{prefix}layers.{i}.{theirs}.{k}" for k in kinds})
    return names


def layer_types(hf: dict) -> list[str]:
    """'full_attention' or 'sliding_attention' per layer: config.json's layer_types, or every
    global_attn_every_n_layers-th layer global as ModernBertConfig reads older files."""
    every = hf.get("global_attn_every_n_layers", DEFAULTS["global_attn_every_n_layers"])
    return hf.get("layer_types") or ["sliding_attention" if i % every else "full_attention"
                                     for i in range(hf["num_hidden_layers"])]


def rope_thetas(hf: dict) -> tuple[float, float]:
    """The global and the local layers' rotary base: rope_parameters per layer type (transformers 5), else
    global_rope_theta and local_rope_theta."""
    rope = hf.get("rope_parameters") or {}
    full, sliding = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
    return (float(full.get("rope_theta") or hf.get("global_rope_theta") or DEFAULTS["global_rope_theta"]),
            float(sliding.get("rope_theta") or hf.get("local_rope_theta") or DEFAULTS["local_rope_theta"]))


def _global_every(types: list[str]) -> int | None:
    """n when layer i is global exactly where i % n == 0 (n = depth: only the first); None for any other
    pattern."""
    depth = len(types)
    n = next((i for i in range(1, depth) if types[i] == "full_attention"), depth)
    pattern = ["sliding_attention" if i % n else "full_attention" for i in range(depth)]
    return n if types == pattern else None


def _unsupported(hf: dict) -> str | None:
    """Why our trunk cannot hold this model, or None."""
    if hf["hidden_size"] % hf["num_attention_heads"]:
        return f"hidden_size {hf['hidden_size']} not a multiple of num_attention_heads {hf['num_attention_heads']}"
    for key in ("hidden_activation", "classifier_activation"):
        if hf[key] != "gelu":
            return f"{key} {hf[key]!r} (our GeGLU and MLM head are exact gelu)"
    biases = [bool(hf.get(k)) for k in BIASES]
    if any(biases) and not all(biases):
        return (", ".join(f"{k} {str(b).lower()}" for k, b in zip(BIASES, biases))
                + " (our biases are on every layer or on none)")
    if not hf.get("tie_word_embeddings", True):
        return "tie_word_embeddings false (our MLM decoder is the token embedding)"
    rope = [hf.get("rope_scaling"), *(hf.get("rope_parameters") or {}).values()]
    kinds = {r.get("rope_type", r.get("type", "default")) for r in rope if isinstance(r, dict)} - {"default"}
    if kinds:
        return f"rope type {sorted(kinds)[0]!r} (only plain RoPE)"
    types = layer_types(hf)
    if len(types) != hf["num_hidden_layers"] or _global_every(types) is None:
        return f"layer_types {types} (only layer i global where i is a multiple of n)"
    return None


def config_values(hf: dict) -> dict[str, object]:
    """Our model keys from a ModernBERT config.json (ModernBertConfig's defaults where it is silent)."""
    hf = DEFAULTS | hf
    positive(hf, SHAPE.values())
    why = _unsupported(hf)
    if why:
        raise Unsupported(why)
    types = layer_types(hf)
    local = "sliding_attention" in types
    full, sliding = rope_thetas(hf)
    return {f"model.{k}": hf[v] for k, v in SHAPE.items()} | {
        "model.mlp": "geglu", "model.norm": "layernorm", "model.bias": "all" if hf.get("attention_bias") else "none",
        "model.norm_position": "pre", "model.learned_positions": False, "model.kv_heads": None,
        "model.layer_scale": None, "model.rope_theta": full,
        "model.local_attention": hf["local_attention"] if local else None,
        "model.global_every": _global_every(types) if local else 3,
        "model.local_rope_theta": sliding if local else None}


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names, one at a time (the vocabulary padded to x64). Without their MLM
    head (a bare ModernBertModel) ours keeps its fresh weights; without decoder_bias its bias starts at zero."""
    import torch

    model = objective.model
    prefix = "model." if "model.embeddings.tok_embeddings.weight" in theirs else ""
    for ours, name in modernbert_names(model.cfg.depth, model.cfg.bias == "all", prefix).items():
        yield "model." + ours, pad_rows(theirs[name], model.vocab) if ours == "embed.weight" else theirs[name]
    head = head_prefix(objective)
    if head is not None and "head.dense.weight" in theirs:
        for ours, name in HEAD.items():
            if ours == "bias":
                bias = theirs[name] if theirs.config.get("decoder_bias", True) else torch.zeros(model.vocab)
                yield head + ours, pad_rows(bias, model.vocab)
            elif ours.endswith(".weight") or model.cfg.bias == "all":
                yield head + ours, theirs[name]


def unfit(cfg: RunConfig) -> str | None:
    m = cfg.model
    if (not set(cfg.parts) <= set(OBJECTIVES) or (m.mlp, m.norm, m.norm_position, m.learned_positions)
            != ("geglu", "layernorm", "pre", False)):
        return ("a masked LM or a hybrid with one (or, as the bare ModernBertModel, simcse), with model.mlp=geglu, "
                "model.norm=layernorm")
    if m.kv_heads not in (None, m.heads):
        return f"multi-head attention (ModernBERT has no grouped-query attention; model.kv_heads={m.kv_heads})"
    if m.bias == "qkv" or m.layer_scale is not None:
        return "model.bias none or all and no model.layer_scale (ModernBERT has neither a qkv bias nor layer scale)"
    return None


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's encoder and its MLM head as ModernBertForMaskedLM, or, for a run without an mlm term (simcse), the
    encoder alone as the bare ModernBertModel: (tensors, config.json). SimCSE's projector is training-only (embed
    pools the trunk), so it stays behind."""
    from selfsup.data.read.tokenizer import EOS, PAD

    model, m = objective.model, cfg.model
    ours, bias = objective.state_dict(), m.bias == "all"
    head = head_prefix(objective)
    prefix = "" if head is None else "model."  # the bare model's tensors have no "model." in front
    sd = {theirs: ours["model." + name] for name, theirs in modernbert_names(m.depth, bias, prefix).items()}
    if head is not None:
        sd.update({theirs: ours[head + name] for name, theirs in HEAD.items() if bias or not name.endswith(".bias")})
    full = {"rope_type": "default", "rope_theta": m.rope_theta}
    local = {"rope_type": "default", "rope_theta": m.local_rope_theta or m.rope_theta}
    config = {
        "architectures": [ARCHITECTURE if head is not None else "ModernBertModel"], "model_type": "modernbert",
        "vocab_size": model.vocab, "hidden_size": m.dim, "intermediate_size": model.hidden,
        "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "hidden_activation": "gelu",
        "max_position_embeddings": m.context, "norm_eps": m.norm_eps or 1e-5, "norm_bias": bias,
        "attention_bias": bias, "mlp_bias": bias, "decoder_bias": True, "classifier_bias": bias,
        "classifier_activation": "gelu", "classifier_pooling": m.pooling,
        "layer_types": ["sliding_attention" if local_layer else "full_attention" for local_layer in model.local],
        "rope_parameters": {"full_attention": full, "sliding_attention": local},
        "local_attention": m.local_attention or 2 * m.context,
        "tie_word_embeddings": True, "pad_token_id": specials.get(PAD), "eos_token_id": specials.get(EOS),
        "bos_token_id": specials.get(EOS), "cls_token_id": specials.get(EOS), "sep_token_id": specials.get(EOS),
        "torch_dtype": "float32", "initializer_range": 0.02,
    }
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}, config
