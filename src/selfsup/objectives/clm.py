"""Causal language modelling: predict token t+1 from tokens ≤ t.

The batch holds packed windows of context + 1 tokens; the shift into inputs and targets happens here and only
here. With `doc_mask`, EOS opens each document (it is the first token of the next one), so no token sees another
document and the first real token of a document is predicted from EOS alone.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.data.batch import TextBatch
from selfsup.models.transformer import Transformer
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import linear_cross_entropy
from selfsup.objectives.output import LossOutput


class CausalLM(nn.Module, Objective):
    unit = "token"
    window_overlap = 1  # windows of model.context + 1 tokens: inputs and targets shifted by one
    token_nll = True  # exp(validation loss) is the perplexity

    def __init__(self, model: Transformer, eos_id: int, doc_mask: bool = True):
        super().__init__()
        self.model = model
        self.eos_id = eos_id
        self.doc_mask = doc_mask

    def forward(self, batch: TextBatch) -> LossOutput:
        tokens = batch["tokens"]  # (B, T + 1)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each: the one shift
        if "labels" in batch:  # evaluation may pad the last window with IGNORE labels
            targets = batch["labels"][:, 1:]
        doc_ids = torch.cumsum(inputs == self.eos_id, dim=1) if self.doc_mask else None  # (B, T)
        hidden = self.model(inputs, doc_ids)  # (B, T, D)
        loss, count = linear_cross_entropy(hidden.flatten(0, 1), self.model.out_weight, targets.flatten())
        return LossOutput(loss, count, units=inputs.numel())

    def flops_per_token(self) -> float:
        return self.model.flops_per_token()
