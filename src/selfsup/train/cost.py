"""What a run cost: total training FLOPs, device-hours and an energy estimate, so objectives can be compared by
cost as well as by accuracy. The energy is device-hours × a nominal power that the summary states with its
source: `train.device_watts` when set, a GPU's nominal board power (table below), or, on a CPU, an assumed
share of a server CPU's TDP per thread. It is an estimate of the order of magnitude, not a measurement."""

from __future__ import annotations

import torch

NOMINAL_WATTS = {"H200": 700, "H100": 700, "A100": 400, "L40S": 350, "A10G": 150, "A10": 150, "V100": 300,
                 "L4": 72, "T4": 70}  # board power of common accelerators (SXM variants where several exist)
CPU_WATTS_PER_THREAD = 10.0


def nominal_power(device: torch.device, override: float | None) -> tuple[float, str]:
    """(watts, where the figure comes from) for one device."""
    if override:
        return override, "train.device_watts"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, watts in NOMINAL_WATTS.items():
            if key in name:
                return float(watts), f"nominal board power of {name}"
        return 300.0, f"{name} is not in the table: 300 W assumed (set train.device_watts)"
    threads = torch.get_num_threads()
    return threads * CPU_WATTS_PER_THREAD, (f"{threads} CPU threads × {CPU_WATTS_PER_THREAD:g} W, an assumed share "
                                            "of a server CPU's TDP (set train.device_watts)")


def run_cost(flops_per_unit: float | None, units: int, elapsed_s: float, watts: float, source: str,
             devices: int = 1) -> dict:
    hours = elapsed_s * devices / 3600
    return dict(total_flops=flops_per_unit * units if flops_per_unit else None, device_hours=hours,
                energy_kwh=watts * hours / 1000, power_w=watts, power_source=source)
