"""Our masked-LM encoder and Hugging Face transformers' ModernBertForMaskedLM: normalised embedding, LayerNorm
without bias (eps 1e-5), no norm before the first attention, fused Wqkv, GeGLU, RoPE, every layer global attention,
the dense-GELU-norm head and a tied decoder with bias. Requires model.norm=layernorm and model.mlp=geglu (the
bert-mlm recipe's defaults)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfsup.config import RunConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

ARCHITECTURE = "ModernBertForMaskedLM"


def unfit(cfg: RunConfig) -> str | None:
    m = cfg.model
    if "mlm" not in cfg.parts or (m.mlp, m.norm) != ("geglu", "layernorm"):
        return "a masked LM (or a hybrid with an mlm term) with model.mlp=geglu, model.norm=layernorm"
    if m.kv_heads not in (None, m.heads):
        return f"multi-head attention (ModernBERT has no grouped-query attention; model.kv_heads={m.kv_heads})"
    return None


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's encoder and its MLM head as ModernBertForMaskedLM: (tensors, config.json)."""
    from selfsup.data.read.tokenizer import EOS, PAD

    model = objective.model
    head = objective.terms["mlm"].head if cfg.objective == "hybrid" else objective.head
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
    m = cfg.model
    rope = {"rope_type": "default", "rope_theta": m.rope_theta}
    config = {
        "architectures": [ARCHITECTURE], "model_type": "modernbert", "vocab_size": model.vocab,
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
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}, config
