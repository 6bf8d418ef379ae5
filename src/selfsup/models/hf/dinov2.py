"""Our ViT with model.layer_scale and Hugging Face transformers' Dinov2Model: ViT's table (vit.py) with DINOv2's block
names (norm1/norm2, mlp.fc1/fc2, layer_scale1/2.lambda1); its pooler_output is the class token after the final
layernorm, our cls feature.

DINOv2 always interpolates its learned positions from their grid (37 × 37 for 518 px at patch 14) to the image's:
model.position_grid keeps that grid, so an import matches Dinov2Model at every image size. Its mask_token is used
only with bool_masked_pos, which our objectives never pass: an import leaves it out and an export writes zeros
(Dinov2's own initial value), so the folder loads without a missing tensor. The giant model's SwiGLU MLP
(use_swiglu_ffn: a fused weights_in, gate rows first, as our swiglu's up) is model.mlp=swiglu with biases. Not
supported: Dinov2WithRegisters (model_type dinov2_with_registers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfsup.config import IMAGE_OBJECTIVES, RunConfig
from selfsup.models.hf.folder import Tensors, Unsupported
from selfsup.models.hf.vit import ATTENTION, KEYS, common_config, common_values, load, to_tensors, vit_unfit

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    from collections.abc import Iterator

    import torch
    from torch import nn

ARCHITECTURE = "Dinov2Model"
MODEL_TYPES = ("dinov2",)
OBJECTIVES = IMAGE_OBJECTIVES
TOKENIZER = False
KEYS = KEYS | {"model.mlp_hidden": "hidden_size × mlp_ratio", "model.layer_scale": "layerscale_value"}

BLOCK = ATTENTION | {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias", "mlp.up.weight": "mlp.fc1.weight", "mlp.up.bias": "mlp.fc1.bias",
    "mlp.down.weight": "mlp.fc2.weight", "mlp.down.bias": "mlp.fc2.bias",
    "scale1": "layer_scale1.lambda1", "scale2": "layer_scale2.lambda1"}
SWIGLU = BLOCK | {"mlp.up.weight": "mlp.weights_in.weight", "mlp.up.bias": "mlp.weights_in.bias",
                  "mlp.down.weight": "mlp.weights_out.weight", "mlp.down.bias": "mlp.weights_out.bias"}
DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
            "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": 224, "patch_size": 14, "num_channels": 3,
            "qkv_bias": True, "layerscale_value": 1.0, "use_swiglu_ffn": False}  # Dinov2Config's


def config_values(hf: dict) -> dict[str, object]:
    """Our model and image keys from a DINOv2 config.json (Dinov2Config's defaults where it is silent)."""
    full = DEFAULTS | hf
    ratio, scale = full["mlp_ratio"], full["layerscale_value"]
    if not isinstance(ratio, (int, float)) or ratio <= 0 or not isinstance(scale, (int, float)) or scale <= 0:
        raise Unsupported(f"mlp_ratio {ratio!r} or layerscale_value {scale!r} (expected positive numbers)")
    values = common_values(hf, DEFAULTS)
    hidden = int(values["model.dim"] * ratio)
    if full["use_swiglu_ffn"]:
        return values | {"model.mlp": "swiglu", "model.mlp_hidden": swiglu_hidden(hidden),
                         "model.layer_scale": float(scale)}
    return values | {"model.mlp_hidden": hidden, "model.layer_scale": float(scale)}


def swiglu_hidden(hidden: int) -> int:
    """Dinov2SwiGLUFFN's width: 2/3 of int(dim × mlp_ratio), rounded up to x8."""
    return (int(hidden * 2 / 3) + 7) // 8 * 8


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names (q, k, v stacked); the mask token and a classifier are left out."""
    return load(theirs, objective, SWIGLU if objective.model.cfg.mlp == "swiglu" else BLOCK, "dinov2.")


def mlp_ratio(cfg: RunConfig) -> int | None:
    """Dinov2Config's mlp_ratio (an integer) for the run's MLP width, or None where none gives it: it sizes the MLP as
    dim × mlp_ratio, its SwiGLU as swiglu_hidden of that."""
    from selfsup.models.blocks import mlp_hidden  # torch: not for a config error or `selfsup inspect`

    m = cfg.model
    hidden = m.mlp_hidden or mlp_hidden(m.dim, m.mlp_ratio, m.mlp)
    width = swiglu_hidden if m.mlp == "swiglu" else int
    return next((r for r in range(1, 2 * hidden // m.dim + 2) if width(m.dim * r) == hidden), None)


def unfit(cfg: RunConfig) -> str | None:
    why, m = vit_unfit(cfg, ("gelu", "swiglu")), cfg.model
    if why is None and m.layer_scale is None:
        return "model.layer_scale (a run without it exports as ViTModel)"
    if why is None and mlp_ratio(cfg) is None:
        return "an MLP width that an integer mlp_ratio gives (model.mlp_hidden = model.dim × mlp_ratio)"
    return why


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's ViT as Dinov2Model: (tensors, config.json)."""
    vit, swiglu = objective.model, cfg.model.mlp == "swiglu"
    sd = to_tensors(vit, SWIGLU if swiglu else BLOCK)
    sd["embeddings.mask_token"] = sd["embeddings.cls_token"].new_zeros(1, cfg.model.dim)  # (1, D), never used by us
    config = {"architectures": [ARCHITECTURE], "model_type": "dinov2", "mlp_ratio": mlp_ratio(cfg),
              "layerscale_value": cfg.model.layer_scale, "use_swiglu_ffn": swiglu, "use_mask_token": True,
              "drop_path_rate": 0.0} | common_config(cfg, vit)
    return sd, config
