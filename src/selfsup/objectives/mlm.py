"""Masked language modelling (BERT): predict the chosen 15% of tokens from the bidirectional context.

The batch holds packed windows of model.context tokens; masking is drawn anew for every batch (dynamic, as
RoBERTa) on the training device. Only the chosen positions go through the prediction head and the tied output
layer, as ModernBERT's sparse prediction does: the other 85% carry no loss, so computing their logits is waste.
The head is ModernBERT's and BERT's: dense, GELU, norm, then the tied embedding with a bias; with model.bias=all
the dense layer and the norm have biases too (BERT, RoBERTa).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.batch import TextBatch
from selfsup.data.read.tokenizer import IGNORE
from selfsup.models.blocks import make_norm
from selfsup.models.transformer import Transformer
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import linear_cross_entropy
from selfsup.objectives.output import LossOutput
from selfsup.views.masking import MaskingTable, mask_tokens


# The number of chosen tokens changes every batch; compiled, the chunk loop of the loss would be re-traced for each
# new count. Left eager, it is the same kernels either way.
_sparse_cross_entropy = torch.compiler.disable(linear_cross_entropy)


class MLMHead(nn.Module):
    def __init__(self, dim: int, norm: str, vocab: int, eps: float | None = None, bias: bool = False):
        super().__init__()
        self.dense = nn.Linear(dim, dim, bias=bias)
        self.norm = make_norm(norm, dim, eps, bias)
        self.bias = nn.Parameter(torch.zeros(vocab))  # of the tied output layer

    def forward(self, h: Tensor) -> Tensor:  # (N, D) -> (N, D)
        return self.norm(F.gelu(self.dense(h)))


class MaskedLM(nn.Module, Objective):
    unit = "token"
    window_overlap = 0  # windows of exactly model.context tokens
    token_nll = True  # of the chosen tokens: exp(loss) is their perplexity

    def __init__(self, encoder: Transformer, table: MaskingTable, eos_id: int, p: float = 0.15,
                 whole_word: bool = False, doc_mask: bool = True):
        super().__init__()
        self.model = encoder
        c = encoder.cfg
        self.head = MLMHead(c.dim, c.norm, encoder.vocab, c.norm_eps, c.bias == "all")
        nn.init.normal_(self.head.dense.weight, std=0.02)
        if self.head.dense.bias is not None:
            nn.init.zeros_(self.head.dense.bias)
        self.table = table
        self.eos_id, self.p, self.whole_word, self.doc_mask = eos_id, p, whole_word, doc_mask

    def forward(self, batch: TextBatch) -> LossOutput:
        tokens = batch["tokens"]  # (B, T)
        pad_mask = batch.get("pad_mask")  # (B, T) or None
        inputs, labels = mask_tokens(tokens, self.table.to(tokens.device), self.p, self.whole_word, pad_mask)
        doc_ids = torch.cumsum(tokens == self.eos_id, dim=1) if self.doc_mask else None  # EOS is never masked
        hidden = self.model(inputs, doc_ids, pad_mask)  # (B, T, D)
        chosen = labels != IGNORE  # (B, T)
        h = self.head(hidden[chosen])  # (N, D), N chosen tokens
        loss, count = _sparse_cross_entropy(h, self.model.embed.weight, labels[chosen], self.head.bias)
        return LossOutput(loss, count, units=tokens.numel())

    def flops_per_token(self) -> float:
        """The trunk on every token; the head and output layer only on the chosen share p."""
        embed, dense = self.model.embed.weight.numel(), self.head.dense.weight.numel()
        return self.model.flops_per_token() - 6 * embed + self.p * 6 * (embed + dense)
