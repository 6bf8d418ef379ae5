"""Our two towers (objectives/align.py) and Hugging Face transformers' SiglipModel, tensor for tensor: one table
(`siglip_names`) that the export reads one way (`to_hf`) and `model.init` the other (`weights`). The blocks are
CLIP's (models/hf/clip.py reads them alike).

The image tower is our ViT without class token, pooled by attention from a learned probe (model.pooling=map:
SigLIP's multihead attention pooling head, torch's MultiheadAttention in both), after the final norm (SigLIP's
post_layernorm); its pooled features are the joint embedding (align.media_proj=false). Fixed sin-cos positions
export as the table they are.

The text tower is our encoder without the embedding norm (text.embed_norm=false), with learned positions, reading
captions padded to text.context whole (align.attend_padding: SigLIP is trained and used without an attention mask),
pooled at the last position (text.pooling=last), then a head with a bias (align.text_proj_bias).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from selfsup.config import RunConfig
from selfsup.models.hf.clip import KEYS as CLIP_KEYS
from selfsup.models.hf.clip import (encoder_names, logit_scale, modules, split, text_names, text_values,
                                    tower_config, tower_unfit, tower_values)
from selfsup.models.hf.folder import Tensors, Unsupported, pad_rows, positive

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch
    from torch import nn

ARCHITECTURE = "SiglipModel"
MODEL_TYPES = ("siglip",)
OBJECTIVES = ("siglip",)
TOKENIZER = True

# SiglipTextConfig's and SiglipVisionConfig's defaults, where a config.json written by save_pretrained is silent
TEXT = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "max_position_embeddings": 64, "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6}
VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "num_channels": 3, "image_size": 224, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
          "layer_norm_eps": 1e-6, "vision_use_head": True}
KEYS = CLIP_KEYS | {"align.embed_dim": "vision_config.hidden_size"}  # for messages: CLIP's, but no projection


def siglip_names(text_depth: int, vision_depth: int) -> dict[str, str | tuple[str, ...]]:
    """Every tensor of the towers that maps one to one (or stacked) -> SigLIP's; the token embedding (its rows
    padded) and the patch positions (a table or our fixed ones) are moved by `weights` and `to_hf`."""
    head = "vision_model.head"
    return (text_names(text_depth, "final_layer_norm") | encoder_names("model", "vision_model", vision_depth)
            | modules({"text_proj": "text_model.head", "model.norm": "vision_model.post_layernorm",
                       "model.embed": "vision_model.embeddings.patch_embedding",
                       "model.attn_pool.attn.out_proj": f"{head}.attention.out_proj",
                       "model.attn_pool.norm": f"{head}.layernorm", "model.attn_pool.mlp.up": f"{head}.mlp.fc1",
                       "model.attn_pool.mlp.down": f"{head}.mlp.fc2"})
            | {"model.attn_pool.attn.in_proj_weight": f"{head}.attention.in_proj_weight",
               "model.attn_pool.attn.in_proj_bias": f"{head}.attention.in_proj_bias",
               "model.attn_pool.probe": f"{head}.probe", "logit_bias": "logit_bias"})


def config_values(hf: dict) -> dict[str, object]:
    """Our keys from a SigLIP config.json (SiglipConfig's defaults where it is silent)."""
    text, vision = TEXT | (hf.get("text_config") or {}), VISION | (hf.get("vision_config") or {})
    positive(vision, ("image_size", "patch_size", "num_channels"), "vision_config")
    if not vision["vision_use_head"]:
        raise Unsupported("vision_config.vision_use_head false (no pooled image embedding to align)")
    projection = text.get("projection_size") or text["hidden_size"]
    if projection != vision["hidden_size"]:
        raise Unsupported(f"text_config.projection_size {projection} != vision_config.hidden_size "
                          f"{vision['hidden_size']}")
    return text_values(text) | tower_values(vision, "model", "vision_config") | {
        "text.causal": False, "text.pooling": "last", "model.backbone": "vit", "model.embed_norm": None,
        "model.pooling": "map", "model.patch": vision["patch_size"], "image.size": vision["image_size"],
        "image.channels": vision["num_channels"], "align.embed_dim": vision["hidden_size"],
        "align.media_proj": False, "align.text_proj_bias": True, "align.attend_padding": True}


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names, one at a time (the fused matrices stacked, the vocabulary padded
    to x64)."""
    import torch

    yield "logit_scale", logit_scale(theirs, objective)  # first: a scale training would clamp stops the import
    for ours, keys in siglip_names(objective.text.cfg.depth, objective.model.cfg.depth).items():
        yield ours, torch.cat([theirs[k] for k in keys]) if isinstance(keys, tuple) else theirs[keys]
    yield "text.embed.weight", pad_rows(theirs["text_model.embeddings.token_embedding.weight"], objective.text.vocab)
    yield "model.pos", theirs["vision_model.embeddings.position_embedding.weight"]  # (T, D)


def unfit(cfg: RunConfig) -> str | None:
    m, t, a = cfg.model, cfg.text, cfg.align
    if cfg.objective != "siglip" or a.modality != "image" or m.backbone != "vit":
        return "objective siglip on images with model.backbone=vit"
    # every key at once: the siglip recipe is not SigLIP's shape (it learns faster; BENCHMARKS.md), so a run of it
    # is told all that makes a run exportable
    needs = [why for wrong, why in (
        (m.embed_norm or m.pooling != "map", "model.pooling=map (SigLIP's attention pooling head) and no "
                                              "model.embed_norm"),
        (t.causal or not t.learned_positions or t.embed_norm is not False or t.pooling != "last",
         "text.causal=false, text.learned_positions=true, text.embed_norm=false, text.pooling=last"),
        (a.media_proj or not a.attend_padding, "align.media_proj=false (align.embed_dim=model.dim), align.attend_padding=true"),
        (True, tower_unfit(m, "model")), (True, tower_unfit(t, "text"))) if wrong and why]
    return ", and ".join(needs) or None


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's towers as SiglipModel: (tensors, config.json)."""
    from selfsup.data.read.tokenizer import EOS

    model, text = objective.model, objective.text
    sd = split(objective.state_dict(), siglip_names(cfg.text.depth, cfg.model.depth))
    sd |= {"text_model.embeddings.token_embedding.weight": text.embed.weight,
           "vision_model.embeddings.position_embedding.weight": model.positions(model.grid, model.grid),
           "logit_scale": objective.logit_scale}
    eos = specials.get(EOS)
    config = {
        "architectures": [ARCHITECTURE], "model_type": "siglip", "torch_dtype": "float32",
        "text_config": tower_config(cfg.text, text.hidden) | {
            "vocab_size": text.vocab, "max_position_embeddings": cfg.text.context, "projection_size": cfg.model.dim,
            "eos_token_id": eos, "bos_token_id": eos, "pad_token_id": eos},
        "vision_config": tower_config(cfg.model, model.blocks[0].mlp.down.in_features) | {
            "image_size": cfg.image.size, "patch_size": cfg.model.patch, "num_channels": cfg.image.channels,
            "vision_use_head": True},
    }
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}, config


def processor_files(cfg: RunConfig, specials: dict[str, int]) -> dict[str, dict]:
    """tokenizer_config.json and preprocessor_config.json for AutoProcessor: captions by the run's tokenizer with its
    own special tokens, padded to text.context (call it with padding="max_length", as SigLIP's); images resized to
    image.size × image.size (bicubic; SiglipImageProcessor squashes a non-square image where training's decoding
    centre-crops it), scaled to [0, 1] and normalised by image.mean and image.std. specials: unused (SigLIP's
    tokenizer has no start token to name)."""
    from selfsup.data.read.tokenizer import EOS

    size = cfg.image.size
    return {
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": EOS,
                                  "model_max_length": cfg.text.context, "processor_class": "SiglipProcessor"},
        "preprocessor_config.json": {
            "image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
            "do_resize": True, "size": {"height": size, "width": size}, "resample": 3, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": cfg.image.mean,
            "image_std": cfg.image.std, "do_convert_rgb": True},
    }
