"""Our ResNet-18/50 and Hugging Face transformers' ResNetModel, tensor for tensor: one table (`resnet_names`) that
the export reads one way (`to_hf`) and `model.init` the other (`weights`).

Both are ResNet v1.5: the bottleneck's stride on its 3×3 (downsample_in_bottleneck false), a first stage that keeps
the resolution (downsample_in_first_stage false), a projection shortcut where channels or stride change. Only our
7×7 stride-2 stem with max-pool is theirs (model.small_stem=false). A ResNetForImageClassification folder imports
too: its `resnet.` trunk, without the classifier. BatchNorm running statistics travel with the weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from selfsup.config import RunConfig
from selfsup.models.hf.folder import Tensors, Unsupported

if TYPE_CHECKING:  # torch is imported where weights move: a config error answers at once
    import torch
    from torch import nn

ARCHITECTURE = "ResNetModel"
MODEL_TYPES = ("resnet",)
OBJECTIVES = ("simclr", "mocov2", "mocov3", "byol", "dino", "swav", "deepcluster")  # image objectives on a ResNet
TOKENIZER = False
KEYS = {"model.backbone": "layer_type, depths and hidden_sizes of", "image.channels": "num_channels",
        "model.small_stem": "a 7×7 stride-2 stem with max-pool, so small_stem"}  # ours -> theirs, for errors

LAYOUTS = {  # our backbone -> (layer_type, depths, hidden_sizes), embedding_size 64
    "resnet18": ("basic", [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet50": ("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048]),
}
DEFAULTS = {"num_channels": 3, "embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
            "layer_type": "bottleneck", "hidden_act": "relu", "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False}  # ResNetConfig's, where a config.json is silent
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv_bn(conv: str, bn: str, theirs: str) -> dict[str, str]:
    """A convolution and its BatchNorm of ours -> a ResNetConvLayer or ResNetShortCut of theirs."""
    return {f"{conv}.weight": f"{theirs}.convolution.weight"} | {f"{bn}.{t}": f"{theirs}.normalization.{t}" for t in BN}


def resnet_names(backbone: str) -> dict[str, str]:
    """Every tensor of our ResNet's state dict (small_stem false) -> the ResNetModel tensor it is."""
    layer_type, depths, _ = LAYOUTS[backbone]
    convs = 3 if layer_type == "bottleneck" else 2  # our branch: (conv, bn, relu) × convs, the last without relu
    names = _conv_bn("stem.0", "stem.1", "embedder.embedder")
    block = 0  # ours number the blocks through the stages; theirs within each stage
    for stage, depth in enumerate(depths):
        for i in range(depth):
            ours, theirs = f"layers.{block}", f"encoder.stages.{stage}.layers.{i}"
            for j in range(convs):
                names |= _conv_bn(f"{ours}.branch.{3 * j}", f"{ours}.branch.{3 * j + 1}", f"{theirs}.layer.{j}")
            if i == 0 and (stage > 0 or convs == 3):  # channels or stride change: ResNet-18's first block has none
                names |= _conv_bn(f"{ours}.shortcut.0", f"{ours}.shortcut.1", f"{theirs}.shortcut")
            block += 1
    return names


def config_values(hf: dict) -> dict[str, object]:
    """Our keys from a ResNet config.json (ResNetConfig's defaults where it is silent)."""
    hf = DEFAULTS | hf
    layout = (hf["layer_type"], hf["depths"], hf["hidden_sizes"])
    backbone = next((name for name, ours in LAYOUTS.items() if layout == ours), None)
    if backbone is None:
        ours = "; ".join(f"{name}: {t} {d} {h}" for name, (t, d, h) in LAYOUTS.items())
        raise Unsupported(f"layer_type {hf['layer_type']} with depths {hf['depths']} and hidden_sizes "
                          f"{hf['hidden_sizes']} (our ResNets are {ours})")
    for key in ("hidden_act", "embedding_size", "downsample_in_first_stage", "downsample_in_bottleneck"):
        if hf[key] != DEFAULTS[key]:
            raise Unsupported(f"{key} {json.dumps(hf[key])} (ours: {json.dumps(DEFAULTS[key])})")
    if hf["num_channels"] not in (1, 3):
        raise Unsupported(f"num_channels {hf['num_channels']} (image.channels is 1 or 3)")
    return {"model.backbone": backbone, "model.small_stem": False, "image.channels": hf["num_channels"]}


def weights(theirs: Tensors, objective: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Their tensors under our objective's names: its backbone's, and those of every copy of the backbone it holds
    (BYOL's target, MoCo's key encoder, DINO's teacher), which start equal to the student as in a fresh run."""
    from selfsup.models.resnet import Bottleneck, ResNet

    backbone = "resnet50" if isinstance(objective.model.layers[0], Bottleneck) else "resnet18"
    prefix = "resnet." if "resnet.embedder.embedder.convolution.weight" in theirs else ""  # ForImageClassification
    table = {ours: prefix + t for ours, t in resnet_names(backbone).items()  # BN's count, which eval never reads,
             if not t.endswith("num_batches_tracked") or prefix + t in theirs}  # stays ours where a file lacks it
    copies = [name for name, m in objective.named_modules() if isinstance(m, ResNet)]  # "model", "target.model", ...
    for at in copies:
        for ours, t in table.items():
            yield f"{at}.{ours}", theirs[t]


def unfit(cfg: RunConfig) -> str | None:
    m = cfg.model
    if not cfg.is_image or m.backbone == "vit":
        return "an image objective with model.backbone=resnet18 or resnet50"
    if m.small_stem:
        return "model.small_stem=false (its stem is the 7×7 stride-2 convolution and max-pool)"
    return None


def to_hf(cfg: RunConfig, objective: nn.Module, specials: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """The run's backbone as ResNetModel: (tensors, config.json)."""
    ours = objective.model.state_dict()
    layer_type, depths, hidden_sizes = LAYOUTS[cfg.model.backbone]
    config = DEFAULTS | {
        "architectures": [ARCHITECTURE], "model_type": "resnet", "num_channels": cfg.image.channels,
        "layer_type": layer_type, "depths": depths, "hidden_sizes": hidden_sizes, "torch_dtype": "float32",
    }
    return {t: ours[name].detach().contiguous().cpu() for name, t in resnet_names(cfg.model.backbone).items()}, config
