"""Model FLOPs utilisation: achieved training FLOP/s over the device's peak in the run's precision.

The peak is measured once per machine, precision and thread count with a large matmul (cached in
~/.cache/selfsup/peak_flops.json), or given by the user as `train.peak_tflops`. On a CPU this is the honest
peak: a data-sheet figure assumes clocks and vector units a 2-core slice never sees. A CPU measured while other
processes keep its cores busy reads low (and a later run's MFU above 1), so such a figure serves this process only.
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from selfsup.data.cache.tokens import default_cache
from selfsup.files import replace_text


_busy: dict[str, float] = {}  # peaks measured on a busy CPU: this process's runs use them, no later process


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    key = f"{_device_name(device)}|{dtype}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    path = default_cache() / "peak_flops.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if key in cache or key in _busy:
        return cache.get(key) or _busy[key]
    measured = _measure(device, dtype)
    if device.type == "cpu" and os.getloadavg()[0] >= 0.5 * (os.cpu_count() or 1):
        _busy[key] = measured
    else:
        cache[key] = measured
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_text(path, json.dumps(cache, indent=1))  # two runs starting at once never leave half a file
    return measured


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}:{platform.processor() or platform.machine()}"


def _measure(device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 0.5) -> float:
    # its own generator: measured on a machine's first run only, it must not move the run's random numbers
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _attention(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _attention_backward(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad, q, k, v)


# torch counts attention's FLOPs for its GPU kernels only; its CPU kernel gets the same formulas here, so a step on
# the CPU (and the planner's fake CPU tensors) counts what the same step counts on a GPU
ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention,
                   torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward}


def count_flops(fn):
    """Run fn() under torch's FlopCounterMode: (FLOPs of its matmuls, convolutions and attention, forward and
    backward, fn's result). Used where no closed formula is kept (image objectives: backbones, heads, teachers,
    views)."""
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter:
        result = fn()
    return counter.get_total_flops(), result
