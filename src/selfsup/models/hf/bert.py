"""Our encoder with BERT's options and Hugging Face transformers' BertForMaskedLM and RobertaForMaskedLM (and the
bare BertModel / RobertaModel), tensor for tensor: one table (`bert_names`) that the export reads one way (`to_hf`)
and `model.init` the other (`weights`).

BERT is our encoder with model.norm_position=post, model.bias=all, model.mlp=gelu (exact), LayerNorm of eps
layer_norm_eps, model.learned_positions and the MLM head (dense, GELU, LayerNorm, tied decoder with a bias). Token
types: we feed one segment, so token_type_embeddings[0] is folded into our position table on import (the same sum);
the export writes that table beside token types of zeros. RoBERTa is BERT whose position ids start at
padding_idx + 1 (2): its table is read from that row on, so it holds max_position_embeddings - 2 positions. A run
with an mlm term exports as a BertForMaskedLM: the same model for the single-segment input it was trained on. One
without (simcse) has no MLM head to give, so its encoder exports as the bare BertModel; it has no pooler either
(embed pools the trunk's states), so load it with `AutoModel.from_pretrained(out, add_pooling_layer=False)`, or
BertModel adds a random dense+tanh pooler that last_hidden_state never passes through.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from selfsup.config import RunConfig
from selfsup.models.hf.folder import Tensors, Unsupported, pad_rows, positive

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch
    from torch import nn

ARCHITECTURE = "BertForMaskedLM"
MODEL_TYPES = ("bert", "roberta")
OBJECTIVES = ("mlm", "simcse")
TOKENIZER = True

BLOCK = {  # ours -> BERT's; a tuple: our fused matrix is BERT's matrices stacked by rows, in that order
    **{f"attn.qkv.{p}": tuple(f"attention.self.{m}.{p}" for m in ("query", "key", "value"))
       for p in ("weight", "bias")},
    **{f"{ours}.{p}": f"{theirs}.{p}" for ours, theirs in (
        ("attn.out", "attention.output.dense"), ("norm1", "attention.output.LayerNorm"),
        ("mlp.up", "intermediate.dense"), ("mlp.down", "output.dense"), ("norm2", "output.LayerNorm"))
       for p in ("weight", "bias")},
}
HEADS = {  # our MLM head -> BERT's, RoBERTa's
    "bert": {"dense.weight": "cls.predictions.transform.dense.weight",
             "dense.bias": "cls.predictions.transform.dense.bias",
             "norm.weight": "cls.predictions.transform.LayerNorm.weight",
             "norm.bias": "cls.predictions.transform.LayerNorm.bias", "bias": "cls.predictions.bias"},
    "roberta": {"dense.weight": "lm_head.dense.weight", "dense.bias": "lm_head.dense.bias",
                "norm.weight": "lm_head.layer_norm.weight", "norm.bias": "lm_head.layer_norm.bias",
                "bias": "lm_head.bias"},
}
SHAPE = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads",
         "vocab_size": "vocab_size", "mlp_hidden": "intermediate_size", "norm_eps": "layer_norm_eps"}
KEYS = {f"model.{k}": v for k, v in SHAPE.items()} | {"model.mlp": "hidden_act"}  # ours -> theirs, for errors


def bert_names(depth: int, prefix: str) -> dict[str, str | tuple[str, ...]]:
    """Every tensor of our trunk's state dict but the embedding and position table (which are computed) -> the BERT
    tensor (or stacked tensors) it is; prefix: 'bert.', 'roberta.' (a masked LM) or '' (a bare model)."""
    e = prefix + "embeddings."
    names = {"embed_norm.weight": e + "LayerNorm.weight", "embed_norm.bias": e + "LayerNorm.bias"}
    for i in range(depth):
        p = f"{prefix}encoder.layer.{i}."
        for ours, theirs in BLOCK.items():
            names[f"blocks.{i}.{ours}"] = (tuple(p + t for t in theirs) if isinstance(theirs, tuple) else p + theirs)
    return names


def _offset(hf: dict) -> int:
    """The position id of a sequence's first token: RoBERTa's padding_idx + 1, BERT's 0."""
    pad = hf.get("pad_token_id")
    return (pad if isinstance(pad, int) else 1) + 1 if hf.get("model_type") == "roberta" else 0


def _unsupported(hf: dict) -> str | None:
    """Why our trunk cannot hold this model, or None."""
    if hf["hidden_size"] % hf["num_attention_heads"]:
        return f"hidden_size {hf['hidden_size']} not a multiple of num_attention_heads {hf['num_attention_heads']}"
    if hf.get("hidden_act", "gelu") != "gelu":
        return f"hidden_act {hf['hidden_act']!r} (our BERT MLP and MLM head are exact gelu)"
    if hf.get("position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {hf['position_embedding_type']!r} (only absolute positions)"
    for key in ("is_decoder", "add_cross_attention"):
        if hf.get(key):
            return f"{key} true (our encoder is bidirectional, without cross-attention)"
    if not hf.get("tie_word_embeddings", True):
        return "tie_word_embeddings false (our MLM decoder is the token embedding)"
    if hf.get("max_position_embeddings", 0) - _offset(hf) < 2:
        return f"max_position_embeddings {hf.get('max_position_embeddings')} (fewer than 2 positions)"
    return None


def config_values(hf: dict) -> dict[str, object]:
    """Our model keys from a BERT or RoBERTa config.json (BertConfig's defaults where it is silent); model.context:
    the most positions it holds."""
    hf = {"layer_norm_eps": 1e-12, "max_position_embeddings": 512} | hf
    positive(hf, SHAPE.values())
    why = _unsupported(hf)
    if why:
        raise Unsupported(why)
    return {f"model.{k}": hf[v] for k, v in SHAPE.items()} | {
        "model.mlp": "gelu", "model.norm": "layernorm", "model.bias": "all", "model.norm_position": "post",
        "model.learned_positions": True, "model.kv_heads": None, "model.layer_scale": None,
        "model.local_attention": None, "model.context": hf["max_position_embeddings"] - _offset(hf)}


def head_prefix(objective: nn.Module) -> str | None:
    """Where the objective keeps its MLM head: a masked LM's, a hybrid's mlm term's; None: it has none."""
    names = objective.state_dict()
    return next((p for p in ("head.", "terms.mlm.head.") if p + "bias" in names), None)


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names, one at a time: the query, key and value stacked, token type 0
    folded into the position table (from RoBERTa's offset), the vocabulary padded to x64. Without their MLM head (a
    bare model) ours keeps its fresh weights."""
    import torch

    hf, model = theirs.config, objective.model
    kind = hf.get("model_type", "bert")

    def get(key: str) -> torch.Tensor:  # a LayerNorm's weight and bias are gamma and beta in TF-era checkpoints
        old = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        return theirs[old] if key not in theirs and old in theirs else theirs[key]

    prefix = f"{kind}." if f"{kind}.embeddings.word_embeddings.weight" in theirs else ""
    for ours, keys in bert_names(model.cfg.depth, prefix).items():
        yield "model." + ours, torch.cat([get(k) for k in keys]) if isinstance(keys, tuple) else get(keys)
    e, start = prefix + "embeddings.", _offset(hf)
    yield "model.embed.weight", pad_rows(get(e + "word_embeddings.weight"), model.vocab)
    positions = get(e + "position_embeddings.weight")[start:start + model.cfg.context]  # (T, D)
    yield "model.positions.weight", positions + get(e + "token_type_embeddings.weight")[0]
    head, names = head_prefix(objective), HEADS[kind]
    if head is not None and names["bias"] in theirs:
        for ours, key in names.items():
            yield head + ours, pad_rows(get(key), model.vocab) if ours == "bias" else get(key)


def unfit(cfg: RunConfig) -> str | None:
    m = cfg.model
    bert = ("gelu", "layernorm", "all", "post", True)
    if not set(cfg.parts) <= set(OBJECTIVES) or (m.mlp, m.norm, m.bias, m.norm_position, m.learned_positions) != bert:
        return ("a masked LM or a hybrid with one (or, as the bare BertModel, simcse), with model.mlp=gelu, "
                "model.norm=layernorm, model.bias=all, model.norm_position=post, model.learned_positions=true")
    if m.kv_heads not in (None, m.heads):
        return f"multi-head attention (BERT has no grouped-query attention; model.kv_heads={m.kv_heads})"
    if m.layer_scale is not None or m.local_attention is not None:
        return "no model.layer_scale and no model.local_attention (BERT has neither)"
    return None


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's encoder and its MLM head as BertForMaskedLM, or, for a run without an mlm term (simcse), the encoder
    alone as the bare BertModel, without a pooler: (tensors, config.json). SimCSE's projector is training-only (embed
    pools the trunk), so it stays behind."""
    import torch

    from selfsup.data.read.tokenizer import PAD

    model, m = objective.model, cfg.model
    ours, head = objective.state_dict(), head_prefix(objective)
    prefix = "" if head is None else "bert."  # the bare model's tensors have no "bert." in front
    sd = {}
    for name, theirs in bert_names(m.depth, prefix).items():
        value = ours["model." + name]
        sd.update(zip(theirs, value.chunk(3)) if isinstance(theirs, tuple) else {theirs: value})  # qkv: (3D, D), (3D,)
    sd[prefix + "embeddings.word_embeddings.weight"] = model.embed.weight
    sd[prefix + "embeddings.position_embeddings.weight"] = model.positions.weight  # token type 0 is in it
    sd[prefix + "embeddings.token_type_embeddings.weight"] = torch.zeros(2, m.dim)
    if head is not None:
        sd.update({theirs: ours[head + name] for name, theirs in HEADS["bert"].items()})
    config = {
        "architectures": [ARCHITECTURE if head is not None else "BertModel"], "model_type": "bert",
        "vocab_size": model.vocab, "hidden_size": m.dim,
        "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "intermediate_size": model.hidden,
        "hidden_act": "gelu", "max_position_embeddings": m.context, "type_vocab_size": 2,
        "layer_norm_eps": m.norm_eps or 1e-5, "hidden_dropout_prob": m.dropout,
        "attention_probs_dropout_prob": m.dropout, "tie_word_embeddings": True, "pad_token_id": specials.get(PAD),
        "torch_dtype": "float32", "initializer_range": 0.02,
    }
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}, config
