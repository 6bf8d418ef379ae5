"""The transformer trunk shared by the GPT decoder and the text encoder: token embedding, pre-norm blocks, final
norm, and an output head for token predictions (tied to the embedding unless model.tied=false).

The vocabulary is padded to a multiple of 64 for fast matmuls; padded rows are never targets and are masked out
when sampling. Packed windows carry several documents; with `doc_ids` a token attends only to tokens of its own
document (earlier ones, when causal) and positions restart at each document. With model.local_attention the
encoder's layers between every model.global_every-th see only keys within a window (ModernBERT's local layers).

    GPT     = Transformer(cfg, causal=True)                     maps onto Llama
    encoder = Transformer(cfg, causal=False, embed_norm=True)   maps onto ModernBERT (layernorm, geglu)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.config import ModelConfig
from selfsup.models.blocks import Rotary, init_weights, make_norm, mlp_hidden, transformer_blocks


def padded_vocab(vocab_size: int) -> int:
    return (vocab_size + 63) // 64 * 64


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool, embed_norm: bool = False):
        super().__init__()
        self.cfg = cfg
        self.causal = causal
        self.vocab = padded_vocab(cfg.vocab_size)
        self.embed = nn.Embedding(self.vocab, cfg.dim)
        self.embed_norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias == "all") if embed_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.hidden = cfg.mlp_hidden or mlp_hidden(cfg.dim, cfg.mlp_ratio, cfg.mlp)  # F
        self.blocks = transformer_blocks(cfg, self.hidden)
        post = cfg.norm_position == "post"
        if embed_norm and not post:
            self.blocks[0].norm1 = nn.Identity()  # its input is the normalised embedding already (ModernBERT)
        # post-norm blocks end on a norm (BERT has no final one)
        self.norm = nn.Identity() if post else make_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias == "all")
        self.head = None if cfg.tied else nn.Linear(cfg.dim, self.vocab, bias=False)  # the output head, untied
        if cfg.learned_positions:
            self.positions = nn.Embedding(cfg.context, cfg.dim)  # GPT-2, BERT: added to the token embedding
            self.rotary = None
        else:
            self.positions = None
            self.rotary = Rotary(cfg.dim // cfg.heads, cfg.context, cfg.rope_theta)
        # ModernBERT: with model.local_attention, the layers between every global_every-th attend within a window,
        # with rotary angles of their own base
        self.local = [cfg.local_attention is not None and i % cfg.global_every != 0 for i in range(cfg.depth)]
        theta = cfg.local_rope_theta
        self.local_rotary = (Rotary(cfg.dim // cfg.heads, cfg.context, theta) if any(self.local) and self.rotary
                             is not None and theta not in (None, cfg.rope_theta) else None)
        init_weights(self, cfg.depth, scheme=cfg.weight_init)

    def forward(self, idx: Tensor, doc_ids: Tensor | None = None, pad_mask: Tensor | None = None) -> Tensor:
        """idx: (B, T) token ids; doc_ids: (B, T) non-decreasing document index per token, or None;
        pad_mask: (B, T) True on real tokens, False on padding, or None. Returns hidden states (B, T, D)."""
        B, T = idx.shape
        if T > self.cfg.context:
            raise ValueError(f"sequence of {T} tokens is longer than model.context={self.cfg.context}")
        mask = positions = None
        if doc_ids is not None:
            mask = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T) query, key in the same document
            positions = document_positions(doc_ids)  # (B, T)
        if pad_mask is not None:
            keys = pad_mask[:, None, :].expand(B, T, T)  # (B, T, T) no query attends to padding
            mask = keys if mask is None else mask & keys
        if mask is not None:
            if self.causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            mask = mask.unsqueeze(1)  # (B, 1, T, T)
        x = self.embed(idx)  # (B, T, D)
        if self.positions is not None:
            x = x + self.positions(torch.arange(T, device=idx.device) if positions is None else positions)
        x = self.drop(self.embed_norm(x))
        rope = None if self.rotary is None else self.rotary(T, positions)
        local_rope, local_mask = self._local(T, positions, rope, mask, idx.device)
        for block, local in zip(self.blocks, self.local):
            x = block(x, local_rope if local else rope, local_mask if local else mask, causal=self.causal)
        return self.norm(x)

    def _local(self, T: int, positions: Tensor | None, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
               device: torch.device) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
        """The rotary angles and the mask of the local layers: keys at most local_attention/2 tokens away (within a
        document, tokens apart are positions apart), besides what `mask` (B, 1, T, T) allows. None where no layer
        is local."""
        if not any(self.local):
            return None, None
        t = torch.arange(T, device=device)
        near = (t[:, None] - t[None, :]).abs() <= self.cfg.local_attention // 2  # (T, T)
        rope = rope if self.local_rotary is None else self.local_rotary(T, positions)
        return rope, near if mask is None else mask & near  # (T, T) or (B, 1, T, T)

    @property
    def out_weight(self) -> Tensor:
        """(V, D): the output head's weight, the token embedding's when tied."""
        return self.embed.weight if self.head is None else self.head.weight

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., D) -> (..., V) through the output head."""
        return hidden @ self.out_weight.t()

    @property
    def out_dim(self) -> int:  # width of the pooled features, as every backbone states it
        return self.cfg.dim

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token as in PaLM appendix B / nanoGPT: 6N for the weights (forward + backward)
        plus 12 · L · D · T for attention scores and values (not halved for causal masks, as they do)."""
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


def pool(hidden: Tensor, pad_mask: Tensor | None, kind: str) -> Tensor:
    """(B, T, D) -> (B, D): the first token ('cls'; EOS opens every document), the mean over real tokens, or the last
    real token ('last': CLIP's end-of-text; without a mask the last position, SigLIP's)."""
    if kind == "cls":
        return hidden[:, 0]
    if kind == "last":
        if pad_mask is None:
            return hidden[:, -1]
        last = pad_mask.long().cumsum(dim=1).argmax(dim=1)  # (B,) the first position holding the full count
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pad_mask is None:
        return hidden.mean(dim=1)
    w = pad_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)
