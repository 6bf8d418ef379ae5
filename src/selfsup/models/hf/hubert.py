"""Our waveform audio encoder (audio.input=waveform, audio.positions=conv) and Hugging Face transformers'
HubertModel, tensor for tensor: one table (`hubert_names`) that the export reads one way (`to_hf`) and `model.init`
the other (`weights`), for the audio-mask objective (HuBERT's masked prediction).

HubertModel's layout, ours option by option: the feature encoder (audio.conv_dim / conv_kernel / conv_stride,
conv_norm group or layer, conv_bias), its projection (LayerNorm and Linear to D), the convolutional position
embedding (audio.conv_positions, conv_position_groups; weight norm as torch's parametrization: original0 the norm
per kernel tap, original1 the direction), then post-norm layers after the encoder's LayerNorm (HuBERT Base,
do_stable_layer_norm false: model.norm_position=post) or pre-norm layers and a final LayerNorm (Large: pre), with
biases everywhere (model.bias=all), LayerNorm, a GELU MLP. Its masked_spec_embed is our objective's mask_embed.
What it lacks: its SpecAugment feature masking and LayerDrop (training only), and HuBERT's pre-training head
(transformers has none: our projection and unit embeddings start fresh).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from selfsup.config import RunConfig
from selfsup.models.hf.folder import Tensors, Unsupported

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch
    from torch import nn

ARCHITECTURE = "HubertModel"
MODEL_TYPES = ("hubert",)
OBJECTIVES = ("hubert",)
TOKENIZER = False

DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "hidden_act": "gelu", "layer_norm_eps": 1e-5, "feat_extract_norm": "group",
            "feat_extract_activation": "gelu", "conv_dim": [512] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2],
            "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_bias": False, "num_conv_pos_embeddings": 128,
            "num_conv_pos_embedding_groups": 16, "conv_pos_batch_norm": False, "do_stable_layer_norm": False,
            "feat_proj_layer_norm": True}  # HubertConfig's, where a config.json is silent
ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}
SHAPE = {"model.dim": "hidden_size", "model.depth": "num_hidden_layers", "model.heads": "num_attention_heads",
         "model.mlp_hidden": "intermediate_size", "model.norm_eps": "layer_norm_eps", "audio.conv_dim": "conv_dim",
         "audio.conv_kernel": "conv_kernel", "audio.conv_stride": "conv_stride", "audio.conv_bias": "conv_bias",
         "audio.conv_norm": "feat_extract_norm", "audio.conv_positions": "num_conv_pos_embeddings",
         "audio.conv_position_groups": "num_conv_pos_embedding_groups"}  # ours <- config.json's
KEYS = SHAPE | {"model.norm_position": "do_stable_layer_norm", "model.mlp": "hidden_act"}  # ours -> theirs
SAMPLE_RATE = 16000  # every published HuBERT / wav2vec 2.0 conv stack is 16 kHz audio
BLOCK = {  # ours -> HubertEncoderLayer's (both layer kinds name them alike); a tuple: stacked by rows, q, k, v
    "norm1": "layer_norm", "norm2": "final_layer_norm", "attn.out": "attention.out_proj",
    "mlp.up": "feed_forward.intermediate_dense", "mlp.down": "feed_forward.output_dense",
}
QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
POSITIONS = {"positions.conv.bias": "encoder.pos_conv_embed.conv.bias",
             "positions.conv.parametrizations.weight.original0": "encoder.pos_conv_embed.conv.parametrizations"
                                                                ".weight.original0",
             "positions.conv.parametrizations.weight.original1": "encoder.pos_conv_embed.conv.parametrizations"
                                                                ".weight.original1"}


def hubert_names(depth: int, convs: int, conv_norm: str, conv_bias: bool,
                 stable: bool) -> dict[str, str | tuple[str, ...]]:
    """Every tensor of our waveform encoder's state dict -> the HubertModel tensor (or q, k, v stacked) it is."""
    names = {}
    for i in range(convs):
        theirs = f"feature_extractor.conv_layers.{i}"
        names[f"front.convs.{i}.conv.weight"] = f"{theirs}.conv.weight"
        if conv_bias:
            names[f"front.convs.{i}.conv.bias"] = f"{theirs}.conv.bias"
        if conv_norm == "layer" or i == 0:
            names |= {f"front.convs.{i}.norm.{p}": f"{theirs}.layer_norm.{p}" for p in ("weight", "bias")}
    for p in ("weight", "bias"):
        names |= {f"front.norm.{p}": f"feature_projection.layer_norm.{p}",
                  f"front.proj.{p}": f"feature_projection.projection.{p}",
                  f"{'norm' if stable else 'norm_in'}.{p}": f"encoder.layer_norm.{p}"}
        for i in range(depth):
            names |= {f"blocks.{i}.{ours}.{p}": f"encoder.layers.{i}.{t}.{p}" for ours, t in BLOCK.items()}
            names[f"blocks.{i}.attn.qkv.{p}"] = tuple(f"encoder.layers.{i}.{t}.{p}" for t in QKV)
    return names | POSITIONS


def _names(model: nn.Module) -> dict[str, str | tuple[str, ...]]:
    front = model.front
    return hubert_names(model.cfg.depth, len(front.convs), front.conv_norm, front.conv_bias,
                        model.cfg.norm_position == "pre")


def _old_weight_norm(key: str) -> str:
    """The name a checkpoint saved before torch's weight-norm parametrization gives the tensor `key` names."""
    return key.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                               "weight_v")


def _unsupported(hf: dict) -> str | None:
    """Why our encoder cannot hold this model, or None."""
    if hf["feat_extract_activation"] != "gelu":
        return f"feat_extract_activation {hf['feat_extract_activation']!r} (our feature encoder's is gelu)"
    if hf["hidden_act"] not in ACTS:
        return f"hidden_act {hf['hidden_act']!r} (ours: {', '.join(ACTS)})"
    if hf["feat_extract_norm"] not in ("group", "layer"):
        return f"feat_extract_norm {hf['feat_extract_norm']!r} (group or layer)"
    if hf["conv_pos_batch_norm"]:
        return "conv_pos_batch_norm true (our position convolution has weight norm)"
    if not hf["feat_proj_layer_norm"]:
        return "feat_proj_layer_norm false (our feature projection starts with a LayerNorm)"
    if not len(hf["conv_dim"]) == len(hf["conv_kernel"]) == len(hf["conv_stride"]):
        return "conv_dim, conv_kernel and conv_stride of different lengths"
    return None


def config_values(hf: dict) -> dict[str, object]:
    """Our keys from a HuBERT config.json (HubertConfig's defaults where it is silent)."""
    hf = DEFAULTS | hf
    absent = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
              if not isinstance(hf.get(k), int) or hf[k] <= 0]
    if absent:
        raise Unsupported(f"config.json has no positive number '{absent[0]}'")
    why = _unsupported(hf)
    if why:
        raise Unsupported(why)
    lists = ("conv_dim", "conv_kernel", "conv_stride")
    return {ours: list(hf[t]) if t in lists else hf[t] for ours, t in SHAPE.items()} | {
        "model.mlp": ACTS[hf["hidden_act"]], "model.norm": "layernorm", "model.bias": "all",
        "model.norm_position": "pre" if hf["do_stable_layer_norm"] else "post", "model.layer_scale": None,
        "model.kv_heads": None, "audio.input": "waveform", "audio.positions": "conv",
        "audio.sample_rate": SAMPLE_RATE}


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names, one at a time (q, k, v stacked; the mask embedding, where the
    folder has one, as the objective's)."""
    import torch

    for name, keys in _names(objective.model).items():
        if name in POSITIONS and keys not in theirs and _old_weight_norm(keys) in theirs:
            keys = _old_weight_norm(keys)
        keys = keys if isinstance(keys, tuple) else (keys,)
        yield "model." + name, torch.cat([theirs[k] for k in keys])
    if "masked_spec_embed" in theirs:  # HubertModel keeps it only with mask_time_prob or mask_feature_prob > 0
        yield "mask_embed", theirs["masked_spec_embed"]


def unfit(cfg: RunConfig) -> str | None:
    m, a = cfg.model, cfg.audio
    if (cfg.objective != "hubert" or (a.input, a.positions) != ("waveform", "conv") or m.norm != "layernorm"
            or m.bias != "all" or m.mlp not in ACTS.values() or m.layer_scale is not None
            or m.kv_heads not in (None, m.heads)):
        return ("objective hubert with audio.input=waveform, audio.positions=conv, model.norm=layernorm, "
                "model.bias=all, a GELU MLP, no layer scale")
    return None


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's encoder as HubertModel: (tensors, config.json)."""
    model, m, a = objective.model, cfg.model, cfg.audio
    ours, KV = model.state_dict(), [m.dim] * 3
    sd = {"masked_spec_embed": objective.mask_embed}
    for name, theirs in _names(model).items():
        sd.update(zip(theirs, ours[name].split(KV)) if isinstance(theirs, tuple) else {theirs: ours[name]})
    config = DEFAULTS | {
        "architectures": [ARCHITECTURE], "model_type": "hubert", "hidden_size": m.dim, "num_hidden_layers": m.depth,
        "num_attention_heads": m.heads, "intermediate_size": model.blocks[0].mlp.down.in_features,
        "hidden_act": {v: k for k, v in ACTS.items()}[m.mlp], "layer_norm_eps": m.norm_eps or 1e-5,
        "feat_extract_norm": a.conv_norm, "conv_dim": a.conv_dim, "conv_kernel": a.conv_kernel,
        "conv_stride": a.conv_stride, "conv_bias": a.conv_bias, "num_conv_pos_embeddings": a.conv_positions,
        "num_conv_pos_embedding_groups": a.conv_position_groups, "do_stable_layer_norm": m.norm_position == "pre",
        "hidden_dropout": m.dropout, "attention_dropout": m.dropout, "activation_dropout": 0.0,
        "feat_proj_dropout": 0.0, "layerdrop": 0.0, "torch_dtype": "float32"}
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}, config


def feature_extractor(cfg: RunConfig) -> dict:
    """Wav2Vec2FeatureExtractor settings that give the input our view gives (views/media.py): mono samples at
    audio.sample_rate, each clip normalised over its real samples, zeros after them, and the attention mask our
    encoder reads."""
    return {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
            "sampling_rate": cfg.audio.sample_rate, "padding_value": 0.0, "padding_side": "right",
            "do_normalize": True, "return_attention_mask": True}
