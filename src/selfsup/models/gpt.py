"""A decoder-only transformer (GPT): token embedding, pre-norm RoPE blocks, final norm, tied output head.

The vocabulary is padded to a multiple of 64 for fast matmuls; padded rows are never targets and are masked out
when sampling. Packed sequences carry several documents; with `doc_ids` a token attends only to earlier tokens
of its own document and positions restart at each document.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.config import ModelConfig
from selfsup.models.blocks import Block, Rotary, init_weights, mlp_hidden


def padded_vocab(vocab_size: int) -> int:
    return (vocab_size + 63) // 64 * 64


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab = padded_vocab(cfg.vocab_size)
        self.embed = nn.Embedding(self.vocab, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        hidden = mlp_hidden(cfg.dim, cfg.mlp_ratio, cfg.mlp)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, hidden, cfg.mlp, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.rotary = Rotary(cfg.dim // cfg.heads, cfg.context, cfg.rope_theta)
        init_weights(self, cfg.depth)

    def forward(self, idx: Tensor, doc_ids: Tensor | None = None) -> Tensor:
        """idx: (B, T) token ids; doc_ids: (B, T) non-decreasing document index per token, or None.
        Returns logits (B, T, V) with V the padded vocabulary."""
        return self.hidden(idx, doc_ids) @ self.embed.weight.t()  # tied head

    def hidden(self, idx: Tensor, doc_ids: Tensor | None = None) -> Tensor:
        """The final normalised hidden states (B, T, D), before the output head."""
        B, T = idx.shape
        if T > self.cfg.context:
            raise ValueError(f"sequence of {T} tokens is longer than model.context={self.cfg.context}")
        mask = positions = None
        if doc_ids is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()  # (T, T)
            mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal  # (B, T, T)
            mask = mask.unsqueeze(1)  # (B, 1, T, T)
            positions = document_positions(doc_ids)  # (B, T)
        x = self.drop(self.embed(idx))  # (B, T, D)
        rope = self.rotary(T, positions)
        for block in self.blocks:
            x = block(x, rope, mask, causal=True)
        return self.norm(x)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token as in PaLM appendix B / nanoGPT: 6N for the weights (forward + backward)
        plus 12 · L · D · T for attention scores and values."""
        c = self.cfg
        return 6 * self.num_params() + 12 * c.depth * c.dim * c.context


def document_positions(doc_ids: Tensor) -> Tensor:
    """(B, T) document index -> (B, T) position of each token inside its document."""
    B, T = doc_ids.shape
    t = torch.arange(T, device=doc_ids.device).expand(B, T)  # (B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, t, torch.zeros_like(t)).cummax(dim=1).values  # (B, T) start of own document
    return t - first
