"""Smaller, faster encoders for inference: int8 dynamic quantization of the trunk's linear layers, or bf16 weights.

int8: every nn.Linear weight of the trunk (attention and MLP projections, which hold nearly all its parameters)
becomes int8 with one scale per output channel (symmetric: max |w| / 127), stored in safetensors as
`<name>.weight_int8` + `<name>.weight_scale` (nothing pickled). Opened, each such layer is torch's dynamically
quantized Linear: activations are quantized per batch at run time and the product runs in int8 (fbgemm /
oneDNN), on the CPU. Embedding tables, convolutions, norms and the heads stay float. bf16: every float tensor is
stored in bf16 (half the size) and read back into the model's fp32.

    RUN_DIR or EXPORT_DIR/quantize.json  {"mode": "int8" | "bf16", "layers": N}
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

MODES = ("int8", "bf16")
MARKER = "quantize.json"


def _linears(objective: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The trunk's linear layers, named as in the objective's state dict."""
    return [(f"model.{n}", m) for n, m in objective.model.named_modules() if isinstance(m, nn.Linear)]


def quantized_state(objective: nn.Module, mode: str) -> dict[str, Tensor]:
    """The objective's state dict in `mode`, ready for safetensors."""
    state = {k: v.detach().contiguous() for k, v in objective.state_dict().items()}
    if mode == "bf16":
        return {k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}
    for name, layer in _linears(objective):
        w = state.pop(f"{name}.weight").float()  # (out, in)
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (out,)
        state[f"{name}.weight_int8"] = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        state[f"{name}.weight_scale"] = scale
    return state


def load_quantized(objective: nn.Module, path: Path, mode: str) -> nn.Module:
    """Fill a freshly built objective from a quantized model.safetensors, in place."""
    state = load_file(path)
    if mode == "bf16":
        objective.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        return objective
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    layers = _linears(objective)
    packed = {name: (state.pop(f"{name}.weight_int8"), state.pop(f"{name}.weight_scale")) for name, _ in layers}
    missing, unexpected = objective.load_state_dict(state, strict=False)  # all but the int8 weights
    if unexpected or set(missing) != {f"{name}.weight" for name, _ in layers}:
        raise ValueError(f"{path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, layer in layers:
        int8, scale = packed[name]
        zero = torch.zeros(len(scale), dtype=torch.long)
        with warnings.catch_warnings():  # torch marks its quantized tensors deprecated, not yet removed (2.13)
            warnings.simplefilter("ignore")
            weight = torch.quantize_per_channel(int8.float() * scale[:, None], scale.double(), zero, 0, torch.qint8)
            quantized = DynamicLinear(layer.in_features, layer.out_features, bias_=layer.bias is not None,
                                      dtype=torch.qint8)
            quantized.set_weight_bias(weight, layer.bias.detach() if layer.bias is not None else None)
        parent, _, child = name.rpartition(".")
        setattr(objective.get_submodule(parent), child, quantized)
    return objective


def mode_of(run_dir: Path) -> str | None:
    """The mode of a quantized export (None: not one); a marker that is not ours is a ValueError of one line."""
    marker = Path(run_dir) / MARKER
    if not marker.is_file():
        return None
    try:
        mode = json.loads(marker.read_text()).get("mode")
    except (ValueError, AttributeError):  # not JSON (or not UTF-8), or JSON but not an object
        mode = None
    if mode not in MODES:
        raise ValueError(f"'{marker}' is not a quantized export's marker: expected {{\"mode\": \"int8\" or \"bf16\", "
                         "\"layers\": N}, as `selfsup export --quantize` writes it")
    return mode
