"""A run's plan: memory per device for each strategy and with or without activation checkpointing, the largest
micro-batch that fits, FLOPs per step, step time at a stated MFU, wall-clock, device-hours, energy and cost, and
Chinchilla's tokens per parameter for language recipes. `selfsup plan` prints it; `selfsup train` prints its first
lines and warns when the run will not fit."""

from __future__ import annotations

from dataclasses import dataclass

from selfsup.config import RunConfig
from selfsup.plan.activations import MicroBatch, micro_batch
from selfsup.plan.devices import Device
from selfsup.plan.state import StateMemory, objective_on_meta, state_memory

GIB = 1024 ** 3
USABLE = 0.9  # of a device's memory: the CUDA context, NCCL's buffers and the allocator's fragmentation take the rest
MFU = 0.40  # default: bf16 transformer training at scale (PaLM reports 46%, Megatron-LM on A100s 40-52%)
MFU_SOURCE = "40%: the order of published bf16 transformer training (PaLM 46.2%, Chowdhery et al. 2022, Table 3)"
CHINCHILLA = 20  # compute-optimal training tokens per parameter (Hoffmann et al. 2022)
STRATEGIES = ("ddp", "fsdp", "hsdp")


@dataclass(frozen=True)
class Memory:
    strategy: str
    checkpointing: bool
    state: StateMemory
    activations: int  # the working memory at the step's peak: activations and temporaries
    largest_batch: int  # the most rows a micro-batch can have on the device (0: not even one)

    @property
    def total(self) -> int:
        return self.state.total + self.activations


@dataclass(frozen=True)
class Plan:
    cfg: RunConfig
    device: Device
    per_node: int
    nodes: int
    mfu: float
    price: float | None
    memory: list[Memory]  # per strategy and checkpointing
    micro: MicroBatch  # one micro-batch of train.batch_size rows on one device, as configured
    unit: str
    units_per_row: int  # tokens per sequence for text, else 1
    params: int

    @property
    def processes(self) -> int:
        return self.per_node * self.nodes

    @property
    def chosen(self) -> Memory:
        """The memory of the configured run (its strategy, its checkpointing)."""
        t = self.cfg.train
        return next(m for m in self.memory if m.strategy == self.cfg.dist.strategy
                    and m.checkpointing == t.activation_checkpointing)

    @property
    def fits(self) -> bool:
        return self.chosen.total <= USABLE * self.device.memory_gib * GIB

    @property
    def step_seconds(self) -> float:
        """One optimizer step: the device's share of the step's FLOPs (recomputation included) at the stated MFU."""
        peak = (self.device.bf16_tflops if self.cfg.train.precision == "bf16" else self.device.fp32_tflops) * 1e12
        return self.micro.flops * self.cfg.train.grad_accum / (peak * self.mfu)

    @property
    def units_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.train.grad_accum * self.processes * self.units_per_row

    @property
    def hours(self) -> float:
        return self.step_seconds * self.cfg.train.max_steps / 3600


@dataclass(frozen=True)
class Footprint:
    """What a config's micro-batch takes on any device: train.batch_size rows without and with activation
    checkpointing, and `fixed`, the working memory that does not grow with the rows (autocast's bf16 copies of the
    weights), from two rows and train.batch_size rows as configured."""
    plain: MicroBatch
    checkpointed: MicroBatch
    fixed: float

    def of(self, checkpointing: bool) -> MicroBatch:
        return self.checkpointed if checkpointing else self.plain

    def per_row(self, checkpointing: bool) -> float:
        m = self.of(checkpointing)
        return max(m.working - self.fixed, 0) / m.rows


def footprint(cfg: RunConfig) -> Footprint:
    rows, configured = cfg.train.batch_size, cfg.train.activation_checkpointing
    plain, checkpointed = (micro_batch(cfg, objective_on_meta(cfg), rows, c) for c in (False, True))
    full = checkpointed if configured else plain
    fixed = 0.0
    if rows > 2:  # a straight line through two rows (batch normalisation needs two) and the configured rows
        two = micro_batch(cfg, objective_on_meta(cfg), 2, configured)
        fixed = max(two.working - 2 * (full.working - two.working) / (rows - 2), 0.0)
    return Footprint(plain, checkpointed, fixed)


def make_plan(cfg: RunConfig, device: Device, per_node: int, nodes: int = 1, mfu: float = MFU,
              price: float | None = None, feet: Footprint | None = None) -> Plan:
    """The plan of `cfg` on `nodes` × `per_node` of `device`; `feet`: its footprint, when already made (it does not
    depend on the device)."""
    feet = feet or footprint(cfg)
    processes = per_node * nodes
    objective = objective_on_meta(cfg)
    params = sum(p.numel() for p in objective.model.parameters())
    rows = cfg.train.batch_size
    memory = []
    for strategy in STRATEGIES:
        state = state_memory(cfg.model_copy(update={"dist": cfg.dist.model_copy(update={"strategy": strategy})}),
                             objective, processes, per_node)
        for checkpointing in (False, True):
            per_row = feet.per_row(checkpointing)
            room = USABLE * device.memory_gib * GIB - state.total - feet.fixed
            largest = max(int(room // per_row), 0) if per_row > 0 else rows
            memory.append(Memory(strategy, checkpointing, state, feet.of(checkpointing).working, largest))
    micro = feet.of(cfg.train.activation_checkpointing)
    unit = objective.unit
    units_per_row = cfg.model.context if unit == "token" else 1
    return Plan(cfg, device, per_node, nodes, mfu, price, memory, micro, unit, units_per_row, params)


def start_lines(cfg: RunConfig, device: Device, per_node: int, nodes: int = 1) -> list[str]:
    """What a run prints at its start (summary_lines), from one fake micro-batch as configured; the whole plan, for
    the settings that would fit, only when that one does not."""
    processes = per_node * nodes
    objective = objective_on_meta(cfg)
    state = state_memory(cfg, objective, processes, per_node)
    t = cfg.train
    micro = micro_batch(cfg, objective_on_meta(cfg), t.batch_size, t.activation_checkpointing)
    if state.total + micro.working > USABLE * device.memory_gib * GIB:
        return summary_lines(make_plan(cfg, device, per_node, nodes))
    chosen = Memory(cfg.dist.strategy, t.activation_checkpointing, state, micro.working, t.batch_size)
    units_per_row = cfg.model.context if objective.unit == "token" else 1
    params = sum(p.numel() for p in objective.model.parameters())
    return summary_lines(Plan(cfg, device, per_node, nodes, MFU, None, [chosen], micro, objective.unit, units_per_row,
                              params))


def gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2 ** 20:.0f} MiB"


def duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 3600:.0f} s" if hours < 1 / 60 else f"{hours * 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def advice(plan: Plan) -> list[str]:
    """Config keys that would make a run fit that does not: each a change that does, from the plan's own figures."""
    cfg, t = plan.cfg, plan.cfg.train
    limit = USABLE * plan.device.memory_gib * GIB
    tips = []
    chosen = plan.chosen
    if 0 < chosen.largest_batch < t.batch_size:  # the same global batch in smaller micro-batches
        rows = t.batch_size * t.grad_accum
        b = max(d for d in range(1, chosen.largest_batch + 1) if rows % d == 0)
        tips.append(f"train.batch_size={b} train.grad_accum={rows // b}")
    for m in plan.memory:
        if m.total <= limit and m.strategy != cfg.dist.strategy and m.checkpointing == t.activation_checkpointing:
            tips.append(f"dist.strategy={m.strategy}")
    for m in plan.memory:
        if m.total <= limit and m.strategy == cfg.dist.strategy and m.checkpointing and not t.activation_checkpointing:
            tips.append("train.activation_checkpointing=true")
    if t.precision == "fp32":
        tips.append("train.precision=bf16 (halves most activations)")
    return tips


def summary_lines(plan: Plan) -> list[str]:
    """The one or two lines a run prints at its start."""
    t = plan.cfg.train
    lines = [f"plan: {size(plan.chosen.total)} per device of {plan.device.memory_gib:.0f} GiB ({plan.device.name}: "
             f"state {size(plan.chosen.state.total)}, activations {size(plan.chosen.activations)}); "
             f"{t.max_steps} steps in about {duration(plan.hours)} at {plan.mfu:.0%} MFU"]
    if not plan.fits:
        lines.append("warning: the plan says this run will not fit the device's memory; to fit: "
                     + "; ".join(advice(plan) or ["a device with more memory"]))
    return lines


def table_lines(plan: Plan) -> list[str]:
    cfg, t, d = plan.cfg, plan.cfg.train, plan.device
    lines = [f"{cfg.objective} on {plan.processes} × {d.name} ({plan.nodes} node(s) of {plan.per_node}; "
             f"{d.memory_gib:.0f} GiB, {d.bf16_tflops:g} bf16 / {d.fp32_tflops:g} fp32 TFLOP/s, {d.watts:g} W: "
             f"{d.source}); precision {t.precision}, micro-batch {t.batch_size} × {t.grad_accum} accumulated",
             f"model {plan.params / 1e6:.1f}M parameters; memory per device, GiB (fits: within {USABLE:.0%} of "
             f"{d.memory_gib:.0f}):",
             f"{'strategy':<9}{'ckpt':<6}{'weights':>8}{'grads':>8}{'optim':>8}{'gathered':>9}{'activ.':>8}"
             f"{'total':>8}  {'fits':<5}{'largest micro-batch':>20}"]
    limit = USABLE * d.memory_gib * GIB
    for m in plan.memory:
        mark = " <- this run" if m is plan.chosen else ""
        lines.append(f"{m.strategy:<9}{'on' if m.checkpointing else 'off':<6}{gib(m.state.weights):>8}"
                     f"{gib(m.state.gradients):>8}{gib(m.state.optimizer):>8}{gib(m.state.gathered):>9}"
                     f"{gib(m.activations):>8}{gib(m.total):>8}  {'yes' if m.total <= limit else 'NO':<5}"
                     f"{m.largest_batch:>20}{mark}")
    units = plan.units_per_step / plan.step_seconds
    hours = plan.hours
    device_hours = hours * plan.processes
    flops_step = plan.micro.flops * t.grad_accum * plan.processes
    lines += [f"FLOPs per step {flops_step:.3e} (forward and backward, teachers' forwards; FlopCounterMode's count)",
              f"step {plan.step_seconds:.3f} s at {plan.mfu:.0%} MFU ({MFU_SOURCE if plan.mfu == MFU else '--mfu'}): "
              f"{units:,.0f} {plan.unit}s/s, {plan.units_per_step:,} {plan.unit}s per step",
              f"{t.max_steps:,} steps: {duration(hours)} wall-clock, {device_hours:,.0f} device-hours, "
              f"{device_hours * d.watts / 1000:,.0f} kWh at {d.watts:g} W per device (board power)"
              + (f", ${device_hours * plan.price:,.0f} at ${plan.price:g}/device-hour" if plan.price else "")]
    if cfg.modality == "text" and not cfg.pairs:
        tokens = plan.units_per_step * t.max_steps
        lines.append(f"{tokens:.3e} training tokens = {tokens / plan.params:.1f} per parameter; Chinchilla's "
                     f"compute-optimal {CHINCHILLA} per parameter would be {CHINCHILLA * plan.params:.3e} tokens "
                     f"({CHINCHILLA * plan.params / plan.units_per_step:,.0f} steps)")
    if not plan.fits:
        lines.append("does not fit; to fit: " + "; ".join(advice(plan) or ["a device with more memory"]))
    return lines


def run_device(cfg: RunConfig) -> Device:
    """The device a run will train on, as the planner sees it: a GPU of the table by its CUDA name, or this machine's
    CPU (its memory; its peak from train.peak_tflops or measured once, train/mfu.py)."""
    import os

    import torch

    from selfsup.plan.devices import DEVICES
    from selfsup.train.mfu import peak_flops

    if cfg.train.device != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name().lower().replace(" ", "")
        gib = torch.cuda.get_device_properties(0).total_memory / GIB
        for key in ("h200", "h100", "mi300x", "l4"):
            if key in name:
                return DEVICES[key]
        if "a100" in name:
            return DEVICES["a100-80gb" if gib > 40 else "a100-40gb"]
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    peak = (cfg.train.peak_tflops * 1e12 if cfg.train.peak_tflops else peak_flops(torch.device("cpu"), dtype)) / 1e12
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return Device("cpu", peak, peak, memory, 10.0 * torch.get_num_threads(),
                  "this machine: its memory, its measured matmul peak (train/mfu.py)")
