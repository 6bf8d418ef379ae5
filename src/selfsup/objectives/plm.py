"""Permutation language modelling (XLNet, Yang et al. 2019): predict tokens in a random factorisation order.

Every batch (packed windows of model.context tokens, documents opened by EOS) draws anew, from torch's global
generator on the batch's device:

1. targets: spans walked along the sequence as XLNet's `_sample_mask` and Hugging Face's
   DataCollatorForPermutationLanguageModeling do: a span of l ~ U{1..max_span} tokens at a random offset inside a
   context of round(l / p) tokens, then the next context. Special tokens (EOS, PAD, MASK) and padding are never
   targets, so about p = 1/K of the tokens are predicted (K = 6 in XLNet).
2. a factorisation order: every non-target first (order -1, all equal: the shared context), then the targets in a
   random order, i.e. the last ~1/K of the permutation, the only part that carries a loss (XLNet section 2.3).
3. permutation masks (True = may attend), both within a document only: the content stream of token i sees j iff
   order(j) <= order(i) (itself included); the query stream sees j iff order(j) < order(i) (never itself, so a
   target cannot read its own token).

Two-stream attention (section 2.3): the content stream h is the encoder itself (embedded tokens through every
block under the content mask); the query stream g starts from one learned vector at each target and, in each
block with the same weights, queries with its own projection against the keys and values of that layer's content
stream. A target's prediction therefore knows its position (RoPE on its query) but not its token. The query stream
runs only on target rows (padded to a fixed bound, so shapes are static), and only those reach the ModernBERT-style
head and the tied output layer.

Like Hugging Face's XLNet collator (which splits each sequence in halves) the encoder's context must be even; the
masks here would not need it, but runs stay comparable.

Letters in shape comments: B batch, T tokens, D width, H heads, K head size, M query rows (a bound on targets per
sequence), N targets in the batch, V padded vocabulary.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import batch_random
from selfsup.data.batch import TextBatch
from selfsup.models.blocks import apply_rotary
from selfsup.models.transformer import Transformer, document_positions
from selfsup.objectives.contract import Objective
from selfsup.objectives.losses import linear_cross_entropy
from selfsup.objectives.mlm import MLMHead
from selfsup.objectives.output import LossOutput


def span_context(length: Tensor | int, p: float):
    """Tokens of context one span of `length` targets sits in: round(l / p), at least l."""
    if isinstance(length, int):
        return max(round(length / p), length)
    return torch.maximum(torch.round(length / p).long(), length)


def sample_spans(B: int, T: int, p: float, max_span: int, device=None) -> tuple[Tensor, Tensor]:
    """The walk of XLNet / Hugging Face, for B rows of T tokens at once: span i of a row has l ~ U{1..max_span}
    tokens at a random offset inside its context of span_context(l) tokens, which starts where the previous one
    ended. Returns start, end: (B, S) each, S spans per row (enough to pass the end: the shortest context is
    span_context(1)), clipped to T; spans past the end are empty."""
    S = -(-T // span_context(1, p))  # ceil
    length = batch_random.randint(1, max_span + 1, (B, S), device)  # (B, S); draws: batch_random.py
    context = span_context(length, p)  # (B, S)
    context_start = torch.cumsum(context, dim=1) - context  # (B, S)
    offset = (batch_random.rand((B, S), device) * (context - length + 1)).long()  # (B, S) in 0..context - length
    start = context_start + offset
    return start.clamp(max=T), (start + length).clamp(max=T)


def sample_targets(tokens: Tensor, special: Tensor, p: float, max_span: int,
                   pad_mask: Tensor | None = None) -> Tensor:
    """tokens: (B, T); special: (V,) bool by token id -> (B, T) bool, True on the tokens to predict: the tokens
    of sample_spans that are neither special nor padding."""
    B, T = tokens.shape
    start, end = sample_spans(B, T, p, max_span, tokens.device)  # (B, S) each
    edges = torch.zeros(B, T + 1, dtype=torch.long, device=tokens.device)  # +1 where a span opens, -1 where it ends
    edges.scatter_add_(1, start, torch.ones_like(start)).scatter_add_(1, end, -torch.ones_like(end))
    targets = edges.cumsum(dim=1)[:, :T] > 0  # (B, T) spans are disjoint, so coverage is 0 or 1
    targets &= ~special[tokens]
    if pad_mask is not None:
        targets &= pad_mask
    return targets


@lru_cache
def most_targets(T: int, p: float, max_span: int) -> int:
    """The most targets sample_targets can choose in T tokens (before specials are removed): the static number of
    query-stream rows. best[n] = most targets in the last n tokens when a context starts there; a span whose
    context runs past the end can still sit at offset 0."""
    best = [0] * (T + 1)
    for n in range(1, T + 1):
        best[n] = max(span + best[n - span_context(span, p)] if span_context(span, p) <= n else min(span, n)
                      for span in range(1, max_span + 1))
    return best[T]


def factorisation_order(targets: Tensor) -> Tensor:
    """targets: (B, T) bool -> order (B, T) long: -1 on every non-target (the shared context, visible to all), a
    uniformly random permutation's ranks on the targets (only comparisons between them matter)."""
    rank = batch_random.rand(targets.shape, targets.device).argsort(dim=1).argsort(dim=1)  # (B, T) distinct
    return torch.where(targets, rank, -1)


def permutation_masks(order: Tensor, doc_ids: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """order, doc_ids: (B, T) -> (content, query) masks, each (B, 1, T, T) bool, [b, 0, i, j] True where token i
    may attend to token j: same document, and order(j) <= order(i) (content) or order(j) < order(i) (query)."""
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    if pad_mask is not None:  # nobody reads padding; a padding row keeps itself so no content row is empty
        same_doc = same_doc & (pad_mask[:, None, :] | torch.eye(order.shape[1], dtype=torch.bool,
                                                                 device=order.device))
    before = order[:, None, :] < order[:, :, None]  # (B, T, T): order(j) < order(i)
    content = same_doc & (before | (order[:, None, :] == order[:, :, None]))
    query = same_doc & before
    return content.unsqueeze(1), query.unsqueeze(1)


class PermutationLM(nn.Module, Objective):
    unit = "token"
    window_overlap = 0  # windows of exactly model.context tokens
    token_nll = True  # of the target tokens: exp(loss) is their perplexity

    def __init__(self, encoder: Transformer, special: Tensor, eos_id: int, p: float = 1 / 6, max_span: int = 5,
                 doc_mask: bool = True):
        """special: (V,) bool, True on token ids that are never predicted (MaskingTable(tok, encoder.vocab).special)."""
        super().__init__()
        if encoder.cfg.context % 2:
            raise ValueError(f"model.context={encoder.cfg.context}: permutation LM needs an even sequence length "
                             "(as Hugging Face's XLNet collator, which splits it in halves); use an even model.context")
        self.model = encoder
        D = encoder.cfg.dim
        self.query = nn.Parameter(torch.randn(D) * 0.02)  # (D,) the query stream's start at every target
        self.head = MLMHead(D, encoder.cfg.norm, encoder.vocab)
        nn.init.normal_(self.head.dense.weight, std=0.02)
        self.register_buffer("special", special.bool().clone(), persistent=False)  # (V,)
        self.eos_id, self.p, self.max_span, self.doc_mask = eos_id, p, max_span, doc_mask

    def forward(self, batch: TextBatch) -> LossOutput:
        tokens = batch["tokens"]  # (B, T)
        pad_mask = batch.get("pad_mask")  # (B, T) or None
        if tokens.shape[1] % 2:
            raise ValueError(f"permutation LM needs an even sequence length, got {tokens.shape[1]} tokens")
        targets = sample_targets(tokens, self.special, self.p, self.max_span, pad_mask)  # (B, T)
        order = factorisation_order(targets)  # (B, T)
        _, hidden, rows, valid = self.two_stream(tokens, order, pad_mask)  # (B, M, D), (B, M), (B, M)
        h = self.head(hidden[valid])  # (N, D)
        labels = tokens.gather(1, rows)[valid]  # (N,)
        loss, count = linear_cross_entropy(h, self.model.embed.weight, labels, self.head.bias)
        return LossOutput(loss, count, units=tokens.numel())

    def doc_ids(self, tokens: Tensor) -> Tensor:
        """(B, T) -> (B, T) document index; EOS opens a document. One document per row without doc_mask."""
        return torch.cumsum(tokens == self.eos_id, dim=1) if self.doc_mask else torch.zeros_like(tokens)

    def two_stream(self, tokens: Tensor, order: Tensor, pad_mask: Tensor | None = None,
                   max_rows: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """tokens, order: (B, T); targets are where order >= 0. Returns the content stream after the last block
        (B, T, D, before the final norm: nothing reads it), the query stream after the final norm (B, M, D), the
        position of each query row (B, M) and which rows are real targets (B, M). Targets come in position order;
        M = max_rows or the most sample_targets can choose."""
        trunk = self.model
        B, T = tokens.shape
        H = trunk.cfg.heads
        D = trunk.cfg.dim
        targets = order >= 0  # (B, T)
        M = min(T, max_rows or most_targets(T, self.p, self.max_span))
        rows = torch.sort((~targets).to(torch.uint8), dim=1, stable=True).indices[:, :M]  # (B, M) targets first
        valid = torch.arange(M, device=tokens.device) < targets.sum(dim=1, keepdim=True)  # (B, M)

        doc_ids = self.doc_ids(tokens)  # (B, T)
        positions = document_positions(doc_ids)  # (B, T)
        content_mask, query_mask = permutation_masks(order, doc_ids, pad_mask)  # (B, 1, T, T) each
        query_mask = query_mask.gather(2, rows[:, None, :, None].expand(B, 1, M, T))  # (B, 1, M, T)
        query_mask = query_mask & valid[:, None, :, None]
        # a query with nothing to read (padding rows; the first target of a window's leading fragment that is all
        # targets) attends to everything and its output is zeroed, rather than softmax over nothing (NaN)
        blind = ~query_mask.any(dim=-1, keepdim=True)  # (B, 1, M, 1)
        query_mask = query_mask | blind
        seeing = (~blind).squeeze(1).to(self.query.dtype)  # (B, M, 1)

        rope = trunk.rotary(T, positions)  # cos, sin: (B, T, 1, 1, K/2)
        rope_query = trunk.rotary(M, positions.gather(1, rows))  # (B, M, 1, 1, K/2)
        h = trunk.drop(trunk.embed_norm(trunk.embed(tokens)))  # (B, T, D) content stream
        g = self.query.expand(B, M, D)  # (B, M, D) query stream
        for block in trunk.blocks:
            attn, dropout = block.attn, block.attn.dropout if self.training else 0.0
            qkv = attn.qkv(block.norm1(h)).view(B, T, 3, H, D // H)  # (B, T, 3, H, K)
            qk = apply_rotary(qkv[:, :, :2], *rope)  # (B, T, 2, H, K)
            q, k = qk.permute(2, 0, 3, 1, 4)  # 2 × (B, H, T, K)
            v = qkv[:, :, 2].transpose(1, 2)  # (B, H, T, K)
            q_g = F.linear(block.norm1(g), attn.qkv.weight[:D]).view(B, M, 1, H, D // H)  # (B, M, 1, H, K)
            q_g = apply_rotary(q_g, *rope_query)[:, :, 0].transpose(1, 2)  # (B, H, M, K)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=content_mask, dropout_p=dropout)  # (B, H, T, K)
            y_g = F.scaled_dot_product_attention(q_g, k, v, attn_mask=query_mask, dropout_p=dropout)  # (B, H, M, K)
            h = h + block.drop(attn.out(y.transpose(1, 2).reshape(B, T, D)))
            h = h + block.drop(block.mlp(block.norm2(h)))
            g = g + block.drop(attn.out(y_g.transpose(1, 2).reshape(B, M, D)) * seeing)
            g = g + block.drop(block.mlp(block.norm2(g)))
        return h, trunk.norm(g), rows, valid

    def flops_per_token(self) -> float:
        """The content stream is the encoder on every token; the query stream reuses its keys and values and runs
        its query, output and MLP weights and its attention on M of every T rows; the head and the output layer
        run on the targets, a share p."""
        c = self.model.cfg
        embed, dense = self.model.embed.weight.numel(), self.head.dense.weight.numel()
        query_weights = sum(p.numel() for p in self.model.blocks.parameters()) - c.depth * 2 * c.dim * c.dim
        query_rows = most_targets(c.context, self.p, self.max_span) / c.context
        query = 6 * query_weights + 12 * c.depth * c.dim * c.context
        return self.model.flops_per_token() - 6 * embed + query_rows * query + self.p * 6 * (embed + dense)
