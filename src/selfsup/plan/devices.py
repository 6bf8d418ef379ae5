"""The accelerators a plan is made for: dense peak FLOP/s per precision, memory and board power, each from its maker's
data sheet (dense figures: the sparse ones are twice these). A CPU has no data-sheet peak worth planning with: its
peak is measured (train/mfu.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    name: str
    bf16_tflops: float  # dense tensor-core peak
    fp32_tflops: float  # plain fp32 (not TF32): what train.precision=fp32 computes in
    memory_gib: float
    watts: float  # board power (TDP)
    source: str


DEVICES = {d.name: d for d in (
    Device("h100", 989.4, 66.9, 74.5, 700, "NVIDIA H100 Tensor Core GPU datasheet, SXM5 80 GB"),
    Device("h200", 989.4, 66.9, 131.0, 700, "NVIDIA H200 Tensor Core GPU datasheet, SXM 141 GB"),
    Device("a100-80gb", 312.0, 19.5, 74.5, 400, "NVIDIA A100 Tensor Core GPU datasheet, SXM4 80 GB"),
    Device("a100-40gb", 312.0, 19.5, 37.3, 400, "NVIDIA A100 Tensor Core GPU datasheet, SXM4 40 GB"),
    Device("l4", 121.0, 30.3, 22.4, 72, "NVIDIA L4 Tensor Core GPU datasheet"),
    Device("mi300x", 1307.4, 163.4, 178.8, 750, "AMD Instinct MI300X accelerator datasheet"),
)}  # memory in GiB: the data sheets' GB are 10^9 bytes
