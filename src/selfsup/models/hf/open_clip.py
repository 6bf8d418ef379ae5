"""A clip run in open_clip's layout (`selfsup export --format open_clip`): its `CLIP` model's state dict
(open_clip_model.safetensors, the file open_clip's local-dir: and hf-hub: loading look for first) and
open_clip_config.json ({"model_cfg": ..., "preprocess_cfg": ...}), read from open_clip's src/open_clip/model.py,
transformer.py and factory.py (CLIP, VisionTransformer, TextTransformer, ResidualAttentionBlock).

The towers are those CLIPModel takes (models/hf/clip.py's unfit), folded the same way: open_clip's patch
convolution has no bias, which the patch positions hold added in; the class token holds its position, so the
class position is zero. Its projections are matrices applied as x @ proj, our linear layers' weights transposed.
The text is pooled at the first end-of-text id (text_cfg.pool_type=eos), which closes every caption; open_clip's
text tower masks nothing but the future (causal), which at that token is ours too. What open_clip cannot express
is refused: one activation kind shared by both towers when it is QuickGELU (model_cfg.quick_gelu), three colour
channels (its patch convolution's in_channels), an MLP width that dim x mlp_ratio gives back.

The run's tokenizer goes along (tokenizer.json, with tokenizer_config.json for AutoTokenizer), named by
text_cfg.hf_tokenizer_name, so `open_clip.get_tokenizer("local-dir:FOLDER")` reads it (through transformers'
AutoTokenizer, after collapsing runs of whitespace, as open_clip cleans text).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfsup.config import RunConfig
from selfsup.models.hf import clip

if TYPE_CHECKING:  # torch is imported where weights move
    import torch
    from torch import nn

BLOCK = {"norm1": "ln_1", "attn.qkv": "attn.in_proj", "attn.out": "attn.out_proj", "norm2": "ln_2",
         "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}  # our block's modules -> a ResidualAttentionBlock's
ACT_KWARGS = {"gelu": None, "gelu_tanh": {"approximate": "tanh"}}  # nn.GELU's arguments (act_kwargs)


def blocks(ours: str, theirs: str, depth: int) -> dict[str, str]:
    """Every weight and bias of `depth` blocks; the fused q, k, v matrix is open_clip's in_proj_weight as it is."""
    return {f"{ours}.blocks.{i}.{o}.{part}": f"{theirs}.resblocks.{i}.{t}{'_' if t == 'attn.in_proj' else '.'}{part}"
            for i in range(depth) for o, t in BLOCK.items() for part in ("weight", "bias")}


def names(text_depth: int, vision_depth: int) -> dict[str, str]:
    """Our tensors that map one to one -> open_clip's names; the patch convolution, class token, positions and
    projections are folded by `to_open_clip`."""
    norms = {"model.embed_norm": "visual.ln_pre", "model.norm": "visual.ln_post", "text.norm": "ln_final"}
    return (blocks("model", "visual.transformer", vision_depth) | blocks("text", "transformer", text_depth)
            | {f"{o}.{part}": f"{t}.{part}" for o, t in norms.items() for part in ("weight", "bias")}
            | {"text.embed.weight": "token_embedding.weight", "text.positions.weight": "positional_embedding"})


def mlp_ratio(dim: int, hidden: int) -> float | None:
    """open_clip's mlp_ratio for an MLP of width `hidden`, None where int(dim * ratio) does not give it back."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else None


def unfit(cfg: RunConfig, vision_hidden: int, text_hidden: int) -> str | None:
    """Why this run does not map onto open_clip's CLIP, or None."""
    why = clip.unfit(cfg)
    if why is not None:
        return why
    m, t = cfg.model, cfg.text
    if cfg.image.channels != 3:
        return f"image.channels=3 (open_clip's patch convolution reads RGB; this run has {cfg.image.channels})"
    if (m.mlp == "quick_gelu") != (t.mlp == "quick_gelu"):
        return (f"model.mlp and text.mlp both quick_gelu or neither (open_clip's quick_gelu sets both towers; this "
                f"run has {m.mlp} and {t.mlp})")
    for section, c, hidden in (("model", m, vision_hidden), ("text", t, text_hidden)):
        if mlp_ratio(c.dim, hidden) is None:
            return f"a {section} MLP width that {section}.dim x mlp_ratio gives back (this run: {hidden} on {c.dim})"
    return None


def tower_options(c) -> dict:
    """act_kwargs and norm_kwargs of a tower, where they differ from open_clip's defaults."""
    out = {}
    if ACT_KWARGS.get(c.mlp):
        out["act_kwargs"] = ACT_KWARGS[c.mlp]
    if c.norm_eps is not None:
        out["norm_kwargs"] = {"eps": c.norm_eps}
    return out


def to_open_clip(cfg: RunConfig, objective: nn.Module, eos: int, tokenizer: str) -> tuple[dict[str, torch.Tensor],
                                                                                           dict]:
    """The run as open_clip's CLIP: (state dict, open_clip_config.json). eos: the end-of-text id; tokenizer: the
    text_cfg.hf_tokenizer_name written (the folder the export goes to)."""
    import torch

    model, text = objective.model, objective.text
    sd = {theirs: clip.ours_or_zero(objective.state_dict(), ours)
          for ours, theirs in names(cfg.text.depth, cfg.model.depth).items()}
    cls = model.cls.view(-1)  # (D,) its position is in it already
    pos = model.positions(model.grid, model.grid) + model.embed.bias  # (T, D): the convolution has no bias
    sd |= {"visual.conv1.weight": model.embed.weight, "visual.class_embedding": cls,
           "visual.positional_embedding": torch.cat([torch.zeros_like(cls)[None], pos]),
           "visual.proj": objective.media_proj.weight.t(), "text_projection": objective.text_proj.weight.t(),
           "logit_scale": objective.logit_scale.reshape(())}
    m, t = cfg.model, cfg.text
    vision_hidden, text_hidden = model.blocks[0].mlp.down.in_features, text.hidden
    config = {
        "model_cfg": {
            "embed_dim": cfg.align.embed_dim, "quick_gelu": m.mlp == "quick_gelu",
            "vision_cfg": {"image_size": cfg.image.size, "patch_size": m.patch, "width": m.dim, "layers": m.depth,
                           "head_width": m.dim // m.heads, "mlp_ratio": mlp_ratio(m.dim, vision_hidden),
                           **tower_options(m)},
            "text_cfg": {"context_length": t.context, "vocab_size": text.vocab, "width": t.dim, "heads": t.heads,
                         "layers": t.depth, "mlp_ratio": mlp_ratio(t.dim, text_hidden), "pool_type": "eos",
                         "eos_id": eos, "pad_id": eos, "hf_tokenizer_name": tokenizer, **tower_options(t)}},
        "preprocess_cfg": {"size": cfg.image.size, "mode": "RGB", "mean": cfg.image.mean, "std": cfg.image.std,
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}, config
