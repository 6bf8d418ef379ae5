"""The objective a config names, around a fresh backbone. One explicit branch per objective."""

from __future__ import annotations

from torch import nn

from selfsup.config import RunConfig
from selfsup.models.gpt import GPT
from selfsup.objectives.clm import CausalLM


def build_objective(cfg: RunConfig, eos_id: int) -> nn.Module:
    if cfg.objective == "clm":
        return CausalLM(GPT(cfg.model), eos_id, doc_mask=cfg.data.doc_mask)
    raise ValueError(f"objective '{cfg.objective}' has no builder")
