"""--format open_clip for a clip run (issue 16, part 3): the state dict and open_clip_config.json in open_clip's
layout. open_clip itself is not loaded (its package imports torchvision, which this CPU build of torch cannot
run): the expected names and shapes below are written from open_clip's source (src/open_clip/model.py CLIP,
transformer.py VisionTransformer / TextTransformer / ResidualAttentionBlock / Attention), the state dict is mapped
back onto our towers by a function of its own and gives the run's embeddings, and the tokenizer that open_clip's
HFTokenizer reads gives the run's caption ids."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from selfsup.data.read.captions import caption_arrays
from selfsup.export import ExportError, export
from selfsup.models.hf import open_clip
from selfsup.objectives.build import build_objective
from selfsup.train.continual import load_config
from tests.test_cli import invoke
from tests.test_hf_clip import CAPTIONS, images, pairs, scratch  # noqa: F401

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

# the fields of open_clip's CLIPVisionCfg and CLIPTextCfg (model.py) that an export may set
VISION_FIELDS = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value",
                 "no_ln_pre", "pos_embed_type", "pool_type", "act_kwargs", "norm_kwargs"}
TEXT_FIELDS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value",
               "pad_id", "eos_id", "pool_type", "proj_bias", "proj_type", "act_kwargs", "norm_kwargs",
               "hf_tokenizer_name", "tokenizer_kwargs", "no_causal_mask"}


def open_clip_shapes(model_cfg: dict) -> dict[str, tuple[int, ...]]:
    """The state dict of open_clip's CLIP(embed_dim, vision_cfg, text_cfg) with a ViT and the native text tower, as
    its modules define it: name -> shape (attn_mask is a non-persistent buffer)."""
    e, v, t = model_cfg["embed_dim"], model_cfg["vision_cfg"], model_cfg["text_cfg"]

    def resblocks(prefix: str, width: int, layers: int, ratio: float) -> dict:
        hidden = int(width * ratio)  # ResidualAttentionBlock: mlp_width = int(d_model * mlp_ratio)
        shapes = {}
        for i in range(layers):
            p = f"{prefix}.resblocks.{i}."
            for norm in ("ln_1", "ln_2"):
                shapes |= {f"{p}{norm}.weight": (width,), f"{p}{norm}.bias": (width,)}
            shapes |= {f"{p}attn.in_proj_weight": (3 * width, width), f"{p}attn.in_proj_bias": (3 * width,),
                       f"{p}attn.out_proj.weight": (width, width), f"{p}attn.out_proj.bias": (width,),
                       f"{p}mlp.c_fc.weight": (hidden, width), f"{p}mlp.c_fc.bias": (hidden,),
                       f"{p}mlp.c_proj.weight": (width, hidden), f"{p}mlp.c_proj.bias": (width,)}
        return shapes

    w, grid, patch = v["width"], v["image_size"] // v["patch_size"], v["patch_size"]
    tw = t["width"]
    return ({"visual.conv1.weight": (w, 3, patch, patch), "visual.class_embedding": (w,),
             "visual.positional_embedding": (grid * grid + 1, w), "visual.ln_pre.weight": (w,),
             "visual.ln_pre.bias": (w,), "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,),
             "visual.proj": (w, e)}
            | resblocks("visual.transformer", w, v["layers"], v.get("mlp_ratio", 4.0))
            | {"token_embedding.weight": (t["vocab_size"], tw), "positional_embedding": (t["context_length"], tw),
               "ln_final.weight": (tw,), "ln_final.bias": (tw,), "text_projection": (tw, e), "logit_scale": ()}
            | resblocks("transformer", tw, t["layers"], t.get("mlp_ratio", 4.0)))


BACK = {"ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
        "attn.out_proj": "attn.out", "ln_2": "norm2", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}


def ours_from_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's CLIP state dict -> our objective's: blocks renamed, projections transposed, the class position
    added into the class token, the patch convolution's bias zero."""
    out = {}
    for name, value in sd.items():
        block = re.fullmatch(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)", name)
        if block:
            tower, i, rest = "model" if block[1] else "text", block[2], block[3]
            key = next(k for k in BACK if rest.startswith(k))
            out[f"{tower}.blocks.{i}.{BACK[key]}{rest[len(key):]}"] = value
    pos = sd["visual.positional_embedding"]  # (1 + T, D)
    out |= {"model.embed.weight": sd["visual.conv1.weight"], "model.embed.bias": torch.zeros(pos.shape[1]),
            "model.cls": (sd["visual.class_embedding"] + pos[0]).view(1, 1, -1), "model.pos": pos[1:],
            "model.embed_norm.weight": sd["visual.ln_pre.weight"], "model.embed_norm.bias": sd["visual.ln_pre.bias"],
            "model.norm.weight": sd["visual.ln_post.weight"], "model.norm.bias": sd["visual.ln_post.bias"],
            "media_proj.weight": sd["visual.proj"].t(), "text.embed.weight": sd["token_embedding.weight"],
            "text.positions.weight": sd["positional_embedding"], "text.norm.weight": sd["ln_final.weight"],
            "text.norm.bias": sd["ln_final.bias"], "text_proj.weight": sd["text_projection"].t(),
            "logit_scale": sd["logit_scale"].reshape(1)}
    return out


def test_a_clip_run_in_open_clips_layout(scratch, tmp_path):  # noqa: F811
    from selfsup.rundir import open_run

    run, _ = scratch
    out = tmp_path / "oc"
    invoke("export", run, "--format", "open_clip", "--out", out)
    assert {"open_clip_model.safetensors", "open_clip_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md"} <= {f.name for f in out.iterdir()}
    assert "library_name: open_clip" in (out / "README.md").read_text()  # the model card says what loads it
    config = json.loads((out / "open_clip_config.json").read_text())
    model_cfg = config["model_cfg"]
    assert set(model_cfg["vision_cfg"]) <= VISION_FIELDS and set(model_cfg["text_cfg"]) <= TEXT_FIELDS
    assert model_cfg["quick_gelu"] is False and model_cfg["text_cfg"]["pool_type"] == "eos"
    sd = load_file(str(out / "open_clip_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in sd.items()} == open_clip_shapes(model_cfg)

    cfg, objective, tok = open_run(run, torch.device("cpu"))
    assert config["preprocess_cfg"] == {"size": 16, "mode": "RGB", "mean": cfg.image.mean, "std": cfg.image.std,
                                        "interpolation": "bicubic", "resize_mode": "shortest"}
    back = build_objective(cfg, tok).eval()
    back.load_state_dict(ours_from_open_clip(sd))  # strict: every tensor of ours, nothing left over
    ids, mask = (torch.from_numpy(a) for a in caption_arrays(tok, CAPTIONS, cfg.text.context))
    with torch.no_grad():
        for model in (objective, back):
            model.eval()
        for a, b in ((objective.project_media(objective.model(images())), back.project_media(back.model(images()))),
                     (objective.embed_text(ids.long(), mask), back.embed_text(ids.long(), mask))):
            assert torch.allclose(a, b, atol=1e-6)
    # open_clip's HFTokenizer: AutoTokenizer on the folder, padded to context_length; the end-of-text id it pools at
    theirs = transformers.AutoTokenizer.from_pretrained(out)(CAPTIONS, max_length=model_cfg["text_cfg"]
                                                             ["context_length"], padding="max_length",
                                                             truncation=True)["input_ids"]
    assert theirs == ids.tolist()
    first = (ids == model_cfg["text_cfg"]["eos_id"]).int().argmax(-1)  # text_global_pool(pool_type="eos")
    assert first.tolist() == (mask.sum(1) - 1).tolist()  # the last real token: where our tower pools


def test_what_open_clip_cannot_express_is_one_line(scratch, tmp_path):  # noqa: F811
    from selfsup.rundir import open_run

    run, _ = scratch
    cfg, objective, _ = open_run(run, torch.device("cpu"))
    grey = cfg.model_copy(update={"image": cfg.image.model_copy(update={"channels": 1})})
    with pytest.raises(ExportError) as e:
        export(run, grey, objective, "open_clip", tmp_path / "oc")
    assert str(e.value) == ("--format open_clip: this run (objective=clip) does not map onto open_clip's CLIP, which "
                            "needs image.channels=3 (open_clip's patch convolution reads RGB; this run has 1); use "
                            "--format safetensors")
    assert not (tmp_path / "oc").exists()
    mixed = load_config("clip", ["text.mlp=quick_gelu"])
    assert open_clip.unfit(mixed, 768, 768) == ("model.mlp and text.mlp both quick_gelu or neither (open_clip's "
                                                "quick_gelu sets both towers; this run has gelu and quick_gelu)")
    assert open_clip.unfit(load_config("clip", ["model.dim=28", "model.heads=2"]), 61, 768) == (
        "a model MLP width that model.dim x mlp_ratio gives back (this run: 61 on 28)")  # int(28 * (61 / 28)) = 60
    assert open_clip.unfit(load_config("siglip", []), 768, 768) == "objective clip on images with model.backbone=vit"
