"""Our ViT and Hugging Face transformers' ViTModel, tensor for tensor: one table (`vit_names`) that the export reads
one way (`to_hf`) and `model.init` the other (`weights`); dinov2.py is the same with DINOv2's block names.

Only the layout our ViT has: a biased patch convolution, a class token, pre-norm blocks with LayerNorm and an exact
GELU MLP, a final LayerNorm. ViTModel's pooler (dense + tanh) is not ours: our feature is the class token after the
final norm (last_hidden_state[:, 0]) or, with model.pooling=mean, the mean of the patch tokens; an import leaves the
pooler out and an export writes none (load it with `AutoModel.from_pretrained(out, add_pooling_layer=False)`). A
ViTForImageClassification folder imports its backbone (the classifier is left out), and so does a ViTMAEModel or
ViTMAEForPreTraining (its encoder; its fixed sin-cos table becomes our learned one, and its decoder is left out).

A run with fixed sin-cos positions is written with them as ViT's learned table (a zero row for the class token, which
has no position): the same at the training grid; at other grids transformers interpolates the table bicubically where
our ViT computes sin-cos for that grid. Missing biases (model.bias none or qkv, LayerNorm without bias) are written
as zeros.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from selfsup.config import IMAGE_OBJECTIVES, RunConfig
from selfsup.models.hf.folder import Tensors, Unsupported

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    from collections.abc import Iterator

    import torch
    from torch import nn

ARCHITECTURE = "ViTModel"
MODEL_TYPES = ("vit", "vit_mae")  # ViTMAEModel's encoder is ViT's, tensor for tensor
OBJECTIVES = IMAGE_OBJECTIVES
TOKENIZER = False

TOP = {"embed.weight": "embeddings.patch_embeddings.projection.weight",
       "embed.bias": "embeddings.patch_embeddings.projection.bias", "norm.weight": "layernorm.weight",
       "norm.bias": "layernorm.bias"}
# their class token and (1, 1 + N, D) position table: the class row's position is part of our class token (the same
# sum), the patch rows are our (N, D) table
CLS, POSITIONS = "embeddings.cls_token", "embeddings.position_embeddings"
ATTENTION = {  # ours -> theirs; a tuple: our fused matrix is their matrices stacked by rows, in that order
    "attn.qkv.weight": tuple(f"attention.attention.{p}.weight" for p in ("query", "key", "value")),
    "attn.qkv.bias": tuple(f"attention.attention.{p}.bias" for p in ("query", "key", "value")),
    "attn.out.weight": "attention.output.dense.weight", "attn.out.bias": "attention.output.dense.bias"}
BLOCK = ATTENTION | {
    "norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
    "mlp.up.weight": "intermediate.dense.weight", "mlp.up.bias": "intermediate.dense.bias",
    "mlp.down.weight": "output.dense.weight", "mlp.down.bias": "output.dense.bias"}
DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12, "image_size": 224, "patch_size": 16, "num_channels": 3,
            "qkv_bias": True}  # ViTConfig's, where a config.json is silent
SHAPE = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads",
         "mlp_hidden": "intermediate_size", "norm_eps": "layer_norm_eps", "patch": "patch_size"}  # model.KEY <- theirs
KEYS = ({f"model.{k}": v for k, v in SHAPE.items()}
        | {"image.channels": "num_channels", "model.position_grid": "image_size / patch_size"})  # for messages


def vit_names(depth: int, block: dict[str, str | tuple[str, ...]] = BLOCK) -> dict[str, str | tuple[str, ...]]:
    """Every tensor of our ViT's state dict (with learned positions, biases everywhere) -> the tensor (or stacked
    tensors) it is in transformers' layout; `block`: the per-layer names (ViT's or DINOv2's)."""
    names = dict(TOP)
    for i in range(depth):
        for ours, theirs in block.items():
            names[f"blocks.{i}.{ours}"] = (tuple(f"encoder.layer.{i}.{t}" for t in theirs) if isinstance(theirs, tuple)
                                           else f"encoder.layer.{i}.{theirs}")
    return names


def common_values(hf: dict, defaults: dict) -> dict[str, object]:
    """Our keys for the parts ViT and DINOv2 share (`defaults`: its config class's, where config.json is silent);
    raises Unsupported for what our ViT cannot hold."""
    hf = defaults | hf
    for key in ("image_size", "patch_size"):
        if isinstance(hf[key], (list, tuple)):
            if len(set(hf[key])) != 1:
                raise Unsupported(f"{key} {hf[key]} (our ViT is square)")
            hf[key] = hf[key][0]
    numbers = ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")
    absent = [k for k in numbers if not isinstance(hf.get(k), int) or hf[k] <= 0]
    if absent:
        raise Unsupported(f"config.json has no positive integer '{absent[0]}'")
    if hf["hidden_act"] != "gelu":
        raise Unsupported(f"hidden_act {hf['hidden_act']!r} (our ViT's MLP is the exact gelu)")
    if not hf["qkv_bias"]:
        raise Unsupported("qkv_bias false (our ViT has biases on every layer: model.bias=all)")
    if hf["num_channels"] not in (1, 3):
        raise Unsupported(f"num_channels {hf['num_channels']} (images are 1 or 3 channels)")
    if hf["image_size"] < hf["patch_size"]:
        raise Unsupported(f"image_size {hf['image_size']} < patch_size {hf['patch_size']}")
    return {"model.dim": hf["hidden_size"], "model.depth": hf["num_hidden_layers"],
            "model.heads": hf["num_attention_heads"], "model.patch": hf["patch_size"],
            "model.norm_eps": float(hf["layer_norm_eps"]), "model.backbone": "vit", "model.mlp": "gelu",
            "model.norm": "layernorm", "model.bias": "all", "model.norm_position": "pre",
            "model.learned_positions": True, "model.position_grid": hf["image_size"] // hf["patch_size"],
            "image.channels": hf["num_channels"]}


def config_values(hf: dict) -> dict[str, object]:
    """Our model and image keys from a ViT config.json (ViTConfig's defaults where it is silent)."""
    intermediate = (DEFAULTS | hf)["intermediate_size"]
    if not isinstance(intermediate, int) or intermediate <= 0:
        raise Unsupported("config.json has no positive integer 'intermediate_size'")
    return common_values(hf, DEFAULTS) | {"model.mlp_hidden": intermediate}


def backbones(objective: nn.Module) -> list[str]:
    """The state-dict prefixes of every copy of the ViT in `objective`: the student and any momentum teacher."""
    from selfsup.models.vit import ViT

    return [name + "." for name, module in objective.named_modules(remove_duplicate=False) if isinstance(module, ViT)]


def load(theirs: Tensors, objective: nn.Module, block: dict[str, str | tuple[str, ...]],
         base: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under the names of every ViT copy in our objective (the teacher starts equal to the student),
    one at a time. base: the backbone's prefix in a model with a task head (ViTForImageClassification's "vit.")."""
    import torch

    base = base if base + CLS in theirs else ""
    copies = backbones(objective)
    for name, keys in vit_names(objective.model.cfg.depth, block).items():
        keys = keys if isinstance(keys, tuple) else (keys,)
        value = torch.cat([theirs[base + k] for k in keys])
        for prefix in copies:
            yield prefix + name, value
    table = theirs[base + POSITIONS][0]  # (1 + N, D)
    cls = theirs[base + CLS] + table[0]  # (1, 1, D): the class token at its position
    for prefix in copies:
        yield prefix + "cls", cls
        yield prefix + "pos", table[1:]


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names (q, k, v stacked); the pooler and a classifier are left out."""
    return load(theirs, objective, BLOCK, "vit.")


def vit_unfit(cfg: RunConfig, mlps: tuple[str, ...] = ("gelu",)) -> str | None:
    """Why the run's backbone is no transformers ViT (ViTModel's or DINOv2's layout, with one of `mlps`), or None."""
    m = cfg.model
    if cfg.modality != "image" or not all(p in IMAGE_OBJECTIVES for p in cfg.parts) or m.backbone != "vit":
        return "an image objective with model.backbone=vit"
    if m.mlp not in mlps or (m.norm, m.norm_position) != ("layernorm", "pre"):
        return f"model.mlp={' or '.join(mlps)}, model.norm=layernorm, model.norm_position=pre"
    if m.kv_heads not in (None, m.heads):
        return f"multi-head attention (model.kv_heads={m.kv_heads})"
    return None


def unfit(cfg: RunConfig) -> str | None:
    why = vit_unfit(cfg)
    if why is None and cfg.model.layer_scale is not None:
        return "no model.layer_scale (a run with it exports as Dinov2Model)"
    return why


def to_tensors(vit: nn.Module, block: dict[str, str | tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """Our ViT's weights under transformers' names: q, k, v split, zeros for the biases our layers lack, sin-cos
    positions as the learned table, the class token's position a zero row (it is part of our class token)."""
    import torch

    ours = dict(vit.state_dict())
    patches = vit.positions(vit.grid, vit.grid) if not vit.cfg.learned_positions else ours["pos"]  # (N, D)
    sd = {CLS: ours["cls"], POSITIONS: torch.cat([torch.zeros_like(patches[:1]), patches])[None]}
    for name, theirs in vit_names(vit.cfg.depth, block).items():
        if name not in ours:  # a bias our layer does not have
            weight = ours[name.removesuffix(".bias") + ".weight"]
            ours[name] = weight.new_zeros(weight.shape[0])
        if isinstance(theirs, tuple):
            sd.update(zip(theirs, ours[name].chunk(len(theirs))))  # qkv: (3D, D) -> 3 × (D, D)
        else:
            sd[theirs] = ours[name]
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def common_config(cfg: RunConfig, vit: nn.Module) -> dict:
    """config.json keys ViTConfig and Dinov2Config share, and how our features are pooled (`selfsup_pooling`)."""
    m = cfg.model
    side = math.isqrt(vit.pos.shape[0]) if m.learned_positions else vit.grid  # the table's grid
    pooling = ("last_hidden_state[:, 0], the class token after the final layernorm" if m.pooling == "cls" else
               "last_hidden_state[:, 1:].mean(1), the mean of the patch tokens after the final layernorm")
    return {"hidden_size": m.dim, "num_hidden_layers": m.depth, "num_attention_heads": m.heads,
            "hidden_act": "gelu", "layer_norm_eps": m.norm_eps or 1e-5, "qkv_bias": True,
            "image_size": side * m.patch, "patch_size": m.patch, "num_channels": cfg.image.channels,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
            "torch_dtype": "float32", "selfsup_pooling": pooling}


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's ViT as ViTModel without its pooler: (tensors, config.json)."""
    vit = objective.model
    config = {"architectures": [ARCHITECTURE], "model_type": "vit", "encoder_stride": cfg.model.patch,
              "intermediate_size": vit.blocks[0].mlp.down.in_features} | common_config(cfg, vit)
    return to_tensors(vit, BLOCK), config

