"""Our two towers (objectives/align.py) and Hugging Face transformers' CLIPModel, tensor for tensor: one table
(`clip_names`) that the export reads one way (`to_hf`) and `model.init` the other (`weights`).

The image tower is our ViT with learned positions, CLIP's pre_layrnorm (model.embed_norm) and the class token; its
final norm is CLIP's post_layernorm (a LayerNorm is per token: normalising every token and taking the class token
is normalising the class token). Where the layouts differ, the difference is folded exactly: CLIP adds a position
to the class token, which our class token holds added in; CLIP's patch convolution has no bias, which our
positions hold added in on export (zero on import). Fixed sin-cos positions export as the table they are.

The text tower is our encoder made causal (text.causal), without the embedding norm (text.embed_norm=false), with
learned positions, pooled at the last real token (text.pooling=last): CLIP's end-of-text token, which closes every
caption its tokenizer makes, and every caption of the BPE a run trains for such a tower (data/read/captions.py;
transformers picks the first end-of-text id, the same token; export.py checks the run's tokenizer closes them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from selfsup.config import ConfigError, RunConfig
from selfsup.models.hf.folder import Tensors, Unsupported, pad_rows, positive

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch
    from torch import nn

ARCHITECTURE = "CLIPModel"
MODEL_TYPES = ("clip",)
OBJECTIVES = ("clip",)
TOKENIZER = True

# transformers' hidden_act <-> our model.mlp (gelu_new is the tanh approximation written out)
ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
HF_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
# CLIPTextConfig's and CLIPVisionConfig's defaults, where a config.json written by save_pretrained is silent
TEXT = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
        "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "eos_token_id": 49407}
VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
SHAPE = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads",
         "mlp_hidden": "intermediate_size", "norm_eps": "layer_norm_eps"}  # model.KEY / text.KEY <- its sub-config's
KEYS = ({f"model.{k}": f"vision_config.{v}" for k, v in SHAPE.items()}
        | {f"text.{k}": f"text_config.{v}" for k, v in SHAPE.items()}
        | {"image.size": "vision_config.image_size", "model.patch": "vision_config.patch_size",
           "image.channels": "vision_config.num_channels", "text.vocab_size": "text_config.vocab_size",
           "text.context": "text_config.max_position_embeddings", "model.mlp": "vision_config.hidden_act",
           "text.mlp": "text_config.hidden_act", "align.embed_dim": "projection_dim",
           "image.mean": "preprocessor_config.json's image_mean", "image.std": "preprocessor_config.json's image_std"})

BLOCK = {  # our block's modules -> a CLIP (or SigLIP) encoder layer's; a tuple: our fused matrix stacked by rows
    "norm1": "layer_norm1", "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.out": "self_attn.out_proj", "norm2": "layer_norm2", "mlp.up": "mlp.fc1", "mlp.down": "mlp.fc2"}


def modules(pairs: dict[str, str | tuple[str, ...]]) -> dict[str, str | tuple[str, ...]]:
    """Module names (ours -> theirs) -> the names of their weights and biases."""
    return {f"{ours}.{part}": (tuple(f"{t}.{part}" for t in theirs) if isinstance(theirs, tuple)
                               else f"{theirs}.{part}")
            for ours, theirs in pairs.items() for part in ("weight", "bias")}


def encoder_names(ours: str, theirs: str, depth: int) -> dict[str, str | tuple[str, ...]]:
    """Every weight and bias of `depth` blocks of `ours` -> the encoder layers of `theirs`."""
    return modules({f"{ours}.blocks.{i}.{o}": (tuple(f"{theirs}.encoder.layers.{i}.{x}" for x in t)
                                                if isinstance(t, tuple) else f"{theirs}.encoder.layers.{i}.{t}")
                    for i in range(depth) for o, t in BLOCK.items()})


def text_names(depth: int, final_norm: str) -> dict[str, str | tuple[str, ...]]:
    """The text tower's tensors (the token embedding apart: its rows are padded)."""
    return (encoder_names("text", "text_model", depth) | modules({"text.norm": f"text_model.{final_norm}"})
            | {"text.positions.weight": "text_model.embeddings.position_embedding.weight"})


def clip_names(text_depth: int, vision_depth: int) -> dict[str, str | tuple[str, ...]]:
    """Every tensor of the towers that maps one to one (or stacked) -> CLIP's; the patch embedding, the class token,
    the positions and the logit scale are folded by `weights` and `to_hf`."""
    return (text_names(text_depth, "final_layer_norm") | encoder_names("model", "vision_model", vision_depth)
            | modules({"model.embed_norm": "vision_model.pre_layrnorm", "model.norm": "vision_model.post_layernorm"})
            | {"text_proj.weight": "text_projection.weight", "media_proj.weight": "visual_projection.weight"})


def tower_values(hf: dict, section: str, where: str) -> dict[str, object]:
    """One tower's sub-config as our `section`.KEYs (shape, activation, LayerNorm with biases)."""
    positive(hf, SHAPE.values(), where)
    if hf["hidden_act"] not in ACTS:
        raise Unsupported(f"{where}.hidden_act {hf['hidden_act']!r} (expected one of {', '.join(ACTS)})")
    if hf["hidden_size"] % hf["num_attention_heads"] or hf["hidden_size"] // hf["num_attention_heads"] % 2:
        raise Unsupported(f"{where}: hidden_size {hf['hidden_size']} in {hf['num_attention_heads']} heads (our "
                          "trunk needs an even head size)")
    return {f"{section}.{k}": hf[v] for k, v in SHAPE.items()} | {
        f"{section}.mlp": ACTS[hf["hidden_act"]], f"{section}.norm": "layernorm", f"{section}.bias": "all",
        f"{section}.norm_position": "pre", f"{section}.learned_positions": True}


def text_values(text: dict) -> dict[str, object]:
    """The text tower's keys, CLIP's and SigLIP's alike but for causality and pooling."""
    positive(text, ("vocab_size", "max_position_embeddings"), "text_config")
    return tower_values(text, "text", "text_config") | {
        "text.vocab_size": text["vocab_size"], "text.context": text["max_position_embeddings"],
        "text.embed_norm": False}


def config_values(hf: dict) -> dict[str, object]:
    """Our keys from a CLIP config.json (CLIPConfig's defaults where it is silent)."""
    text, vision = TEXT | (hf.get("text_config") or {}), VISION | (hf.get("vision_config") or {})
    positive(vision, ("image_size", "patch_size", "num_channels"), "vision_config")
    return text_values(text) | tower_values(vision, "model", "vision_config") | {
        "text.causal": True, "text.pooling": "last", "model.backbone": "vit", "model.embed_norm": True,
        "model.pooling": "cls", "model.patch": vision["patch_size"], "image.size": vision["image_size"],
        "image.channels": vision["num_channels"], "align.embed_dim": hf.get("projection_dim", 512),
        "align.media_proj": True, "align.text_proj_bias": False, "align.attend_padding": False}


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names, one at a time: the fused matrices stacked, the vocabulary padded to
    x64, the class token's position added into it, the patch convolution given a zero bias."""
    import torch

    yield "logit_scale", logit_scale(theirs, objective)  # first: a scale training would clamp stops the import
    for ours, keys in clip_names(objective.text.cfg.depth, objective.model.cfg.depth).items():
        yield ours, torch.cat([theirs[k] for k in keys]) if isinstance(keys, tuple) else theirs[keys]
    yield "text.embed.weight", pad_rows(theirs["text_model.embeddings.token_embedding.weight"], objective.text.vocab)
    pos = theirs["vision_model.embeddings.position_embedding.weight"]  # (1 + T, D): the class token's first
    yield "model.cls", (theirs["vision_model.embeddings.class_embedding"] + pos[0]).view(1, 1, -1)
    yield "model.pos", pos[1:]
    yield "model.embed.weight", theirs["vision_model.embeddings.patch_embedding.weight"]
    yield "model.embed.bias", torch.zeros(pos.shape[1])  # CLIP's patch convolution has no bias


def logit_scale(theirs: Tensors, objective: nn.Module) -> torch.Tensor:
    """(1,) their learned ln scale, as ours; one the first step's clamp to [0, ln align.max_logit_scale] would
    change is refused before training."""
    import math

    value = theirs["logit_scale"].reshape(1)
    if not 0 <= float(value) <= objective.max_log_scale:
        raise ConfigError(f"model.init '{theirs.source}': its logit_scale is exp({float(value):.4g}) = "
                          f"{math.exp(float(value)):.4g}, outside [1, align.max_logit_scale="
                          f"{math.exp(objective.max_log_scale):.4g}] where training clamps it; expected "
                          f"align.max_logit_scale >= {math.ceil(math.exp(float(value)))}")
    return value


def tower_unfit(m, section: str) -> str | None:
    """Why a tower's blocks are not CLIP's or SigLIP's: pre-norm LayerNorm, a plain GELU MLP, multi-head attention."""
    if m.norm != "layernorm" or m.norm_position != "pre" or m.mlp not in HF_ACT or m.layer_scale is not None:
        return (f"{section}.norm=layernorm, {section}.norm_position=pre, {section}.mlp one of {', '.join(HF_ACT)}, "
                f"no {section}.layer_scale")
    if m.kv_heads not in (None, m.heads):
        return f"multi-head attention ({section}.kv_heads={m.kv_heads})"
    return None


def unfit(cfg: RunConfig) -> str | None:
    m, t, a = cfg.model, cfg.text, cfg.align
    if cfg.objective != "clip" or a.modality != "image" or m.backbone != "vit":
        return "objective clip on images with model.backbone=vit"
    if not m.embed_norm or m.pooling != "cls":
        return "model.embed_norm=true (CLIP's pre_layrnorm) and model.pooling=cls"
    if not (t.causal and t.learned_positions and t.embed_norm is False and t.pooling == "last"):
        return "text.causal=true, text.learned_positions=true, text.embed_norm=false, text.pooling=last"
    if not a.media_proj or a.text_proj_bias or a.attend_padding:
        return "align.media_proj=true, align.text_proj_bias=false, align.attend_padding=false"
    return tower_unfit(m, "model") or tower_unfit(t, "text")


def tower_config(m, hidden: int) -> dict:
    """A tower's shape as a CLIP/SigLIP sub-config."""
    return {"hidden_size": m.dim, "intermediate_size": hidden, "num_hidden_layers": m.depth,
            "num_attention_heads": m.heads, "hidden_act": HF_ACT[m.mlp], "layer_norm_eps": m.norm_eps or 1e-5,
            "attention_dropout": 0.0}


def ours_or_zero(sd: dict, name: str) -> torch.Tensor:
    """Our tensor, or the zero bias of a layer we built without one (model.bias=none, LayerNorm without bias)."""
    import torch

    return sd[name] if name in sd else torch.zeros(sd[name.removesuffix(".bias") + ".weight"].shape[0])


def split(sd: dict, names: dict) -> dict:
    """Our tensors under their names, the fused matrices split into equal row blocks."""
    out = {}
    for ours, theirs in names.items():
        value = ours_or_zero(sd, ours)
        out.update(zip(theirs, value.chunk(len(theirs))) if isinstance(theirs, tuple) else [(theirs, value)])
    return out


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's towers as CLIPModel: (tensors, config.json)."""
    import torch

    from selfsup.data.read.tokenizer import EOS

    model, text = objective.model, objective.text
    sd = split(objective.state_dict(), clip_names(cfg.text.depth, cfg.model.depth))
    pos = model.positions(model.grid, model.grid) + model.embed.bias  # (T, D): CLIP's patch convolution has no bias
    cls = model.cls.view(-1)  # (D,) its position is in it already: CLIP's class position is zero
    sd |= {"text_model.embeddings.token_embedding.weight": text.embed.weight,
           "vision_model.embeddings.class_embedding": cls,
           "vision_model.embeddings.position_embedding.weight": torch.cat([torch.zeros_like(cls)[None], pos]),
           "vision_model.embeddings.patch_embedding.weight": model.embed.weight,
           "logit_scale": objective.logit_scale.reshape(())}
    eos = specials.get(EOS)
    bos = specials.get("<|startoftext|>", eos)
    config = {
        "architectures": [ARCHITECTURE], "model_type": "clip", "projection_dim": cfg.align.embed_dim,
        "logit_scale_init_value": float(objective.logit_scale.detach()), "torch_dtype": "float32",
        "text_config": tower_config(cfg.text, text.hidden) | {
            "vocab_size": text.vocab, "max_position_embeddings": cfg.text.context, "eos_token_id": eos,
            "bos_token_id": bos, "pad_token_id": eos, "projection_dim": cfg.align.embed_dim},
        "vision_config": tower_config(cfg.model, model.blocks[0].mlp.down.in_features) | {
            "image_size": cfg.image.size, "patch_size": cfg.model.patch, "num_channels": cfg.image.channels,
            "projection_dim": cfg.align.embed_dim},
    }
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}, config


def processor_files(cfg: RunConfig, specials: dict[str, int]) -> dict[str, dict]:
    """tokenizer_config.json and preprocessor_config.json, so AutoProcessor prepares inputs as training did:
    captions by the run's tokenizer.json as it is (PreTrainedTokenizerFast: CLIPTokenizer would rebuild the BPE a
    run trained, and add a start token it lacks) with its own special tokens, padded to text.context; images with
    their shorter side resized to image.size (bicubic), centre-cropped, scaled to [0, 1] and normalised by image.mean
    and image.std."""
    from selfsup.data.read.tokenizer import EOS

    size = cfg.image.size
    bos = {"bos_token": "<|startoftext|>"} if "<|startoftext|>" in specials else {}  # CLIP's; our BPE has none
    return {
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", **bos, "eos_token": EOS,
                                  "pad_token": EOS, "unk_token": EOS, "model_max_length": cfg.text.context,
                                  "processor_class": "CLIPProcessor"},
        "preprocessor_config.json": {
            "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
            "do_resize": True, "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": cfg.image.mean, "image_std": cfg.image.std, "do_convert_rgb": True},
    }
