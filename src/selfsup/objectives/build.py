"""The objective a config names, around a fresh backbone. One explicit branch per objective."""

from __future__ import annotations

from tokenizers import Tokenizer
from torch import nn

from selfsup.config import RunConfig
from selfsup.data.tokenizer import eos_id
from selfsup.models.encoder import Encoder
from selfsup.models.gpt import GPT
from selfsup.objectives.clm import CausalLM
from selfsup.objectives.mlm import MaskedLM
from selfsup.objectives.plm import PermutationLM
from selfsup.views.masking import MaskingTable


def build_objective(cfg: RunConfig, tok: Tokenizer) -> nn.Module:
    eos = eos_id(tok)
    if cfg.objective == "clm":
        return CausalLM(GPT(cfg.model), eos, doc_mask=cfg.data.doc_mask)
    if cfg.objective == "mlm":
        encoder = Encoder(cfg.model)
        return MaskedLM(encoder, MaskingTable(tok, encoder.vocab), eos, cfg.mlm.p, cfg.mlm.whole_word,
                        doc_mask=cfg.data.doc_mask)
    if cfg.objective == "plm":
        encoder = Encoder(cfg.model)
        return PermutationLM(encoder, MaskingTable(tok, encoder.vocab).special, eos, cfg.plm.p, cfg.plm.max_span,
                             doc_mask=cfg.data.doc_mask)
    raise ValueError(f"objective '{cfg.objective}' has no builder")
