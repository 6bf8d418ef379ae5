"""Transformer blocks shared by every sequence model (models/transformer.py: the GPT decoder, the text, ViT, audio
and video encoders), and `wide`, the precision every loss and statistic is computed in.

Residual blocks with RMSNorm or LayerNorm, rotary position embeddings (the "rotate half" layout used by Llama and
ModernBERT in Hugging Face transformers, so exports map weights one to one), `scaled_dot_product_attention`, and a
SwiGLU, GeGLU or GELU MLP. By default pre-norm without biases (Llama, ModernBERT); the options the published models
need beside them (model.bias, model.norm_position, model.layer_scale, the GELU variants) are the same blocks with
one more term, so every family maps onto one copy of the code: `transformer_blocks(cfg, hidden)`.

Letters in shape comments: B batch, T time (tokens), D model width, H heads, K head size, F MLP hidden width.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def wide(x: Tensor) -> Tensor:
    """x in at least fp32 (bf16 and fp16 are widened; float64, e.g. for gradient checks, stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class Rotary(nn.Module):
    """Rotary position embedding: rotates each (i, i + K/2) pair of a head by position × frequency_i."""

    def __init__(self, head_size: int, context: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (K/2,)
        angles = torch.outer(torch.arange(context, dtype=torch.float32), inv_freq)  # (T, K/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, T: int, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        """cos and sin for each token, shaped to broadcast over (B, T, 2, H, K/2): computed once per forward
        and shared by every block. positions: (B, T) or None for 0..T-1."""
        if positions is None:
            cos, sin = self.cos[:T], self.sin[:T]  # (T, K/2)
        else:
            cos, sin = self.cos[positions], self.sin[positions]  # (B, T, K/2)
        return cos[..., None, None, :], sin[..., None, None, :]  # (B?, T, 1, 1, K/2)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, T, 2, H, K), queries and keys together; the "rotate half" layout of Llama in transformers."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, 2, H, K/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # bf16 under autocast, as in transformers' Llama
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    """Multi-head attention; with kv_heads (G) < heads, grouped-query: each key/value head serves H/G query heads."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, kv_heads: int | None = None, bias: str = "none"):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.qkv = nn.Linear(dim, dim + 2 * self.kv_heads * (dim // heads), bias=bias != "none")  # q, k, v by rows
        self.out = nn.Linear(dim, dim, bias=bias == "all")
        self.dropout = dropout

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None, causal: bool) -> Tensor:
        # x: (B, T, D); rope: cos, sin from Rotary, or None (ViT: positions are added to the input);
        # mask: (B, 1, T, T) bool, True where a query may see a key
        B, T, D = x.shape
        if self.kv_heads == self.heads:
            qkv = self.qkv(x).view(B, T, 3, self.heads, D // self.heads)  # (B, T, 3, H, K)
            qk = qkv[:, :, :2] if rope is None else apply_rotary(qkv[:, :, :2], *rope)  # (B, T, 2, H, K)
            q, k = qk.permute(2, 0, 3, 1, 4)  # 2 × (B, H, T, K)
            v = qkv[:, :, 2].transpose(1, 2)  # (B, H, T, K)
        else:
            q, k, v = self._grouped(x, rope)
        p = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)  # (B, H, T, K)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # causality is in the mask
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def _grouped(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as (B, H, T, K), k and v repeated so query head h reads key/value head h // (H/G), as Llama."""
        B, T, D = x.shape
        H, G, K = self.heads, self.kv_heads, D // self.heads
        q, k, v = self.qkv(x).split([D, G * K, G * K], dim=-1)  # (B, T, D), (B, T, G·K) × 2
        q, k, v = q.view(B, T, 1, H, K), k.view(B, T, 1, G, K), v.view(B, T, G, K)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        k, v = (t.view(B, T, G, K).transpose(1, 2).repeat_interleave(H // G, dim=1) for t in (k, v))  # (B, H, T, K)
        return q.view(B, T, H, K).transpose(1, 2), k, v


def quick_gelu(x: Tensor) -> Tensor:
    """x · sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"swiglu": F.silu, "geglu": F.gelu, "gelu": F.gelu,  # exact GELU (BERT, ViT, ModernBERT)
               "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GPT-2's gelu_new, SigLIP's gelu_pytorch_tanh
               "quick_gelu": quick_gelu}
GATED = ("swiglu", "geglu")


class MLP(nn.Module):
    """Gated (SwiGLU as Llama, GeGLU as ModernBERT) or plain feed-forward (GELU exact, tanh or quick); `hidden` is
    F."""

    def __init__(self, dim: int, hidden: int, kind: str, bias: bool = False):
        super().__init__()
        self.act = ACTIVATIONS[kind]
        self.gated = kind in GATED
        self.up = nn.Linear(dim, 2 * hidden if self.gated else hidden, bias=bias)  # gated: (gate, up) fused
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        h = self.up(x)  # (B, T, 2F) or (B, T, F)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)  # the first half goes through the activation, as in both references
            return self.down(self.act(gate) * up)
        return self.down(self.act(h))


def mlp_hidden(dim: int, ratio: float, kind: str) -> int:
    """F: gated MLPs take 2/3 of ratio × dim so every kind has the same parameter count; rounded up to x64."""
    hidden = ratio * dim * (2 / 3 if kind in GATED else 1)
    return int(math.ceil(hidden / 64) * 64)


def make_norm(kind: str, dim: int, eps: float | None = None, bias: bool = False) -> nn.Module:
    """RMSNorm as Llama (eps 1e-6) or LayerNorm as ModernBERT (eps 1e-5, no bias; with `bias` as BERT and ViT);
    `eps` replaces the default."""
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps or 1e-6)
    return nn.LayerNorm(dim, eps=eps or 1e-5, bias=bias)


class Block(nn.Module):
    """x + attn(norm1(x)), then + mlp(norm2(x)) (pre-norm); post-norm (BERT) normalises after each sum instead.
    bias: "none", "qkv" (the query/key/value projection, as Qwen2) or "all" (every linear layer and LayerNorm, as
    GPT-2, BERT and ViT); layer_scale: a learned per-channel scale on each branch starting at that value (DINOv2)."""

    def __init__(self, dim: int, heads: int, hidden: int, mlp: str, norm: str, dropout: float = 0.0,
                 eps: float | None = None, kv_heads: int | None = None, bias: str = "none", post_norm: bool = False,
                 layer_scale: float | None = None):
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = make_norm(norm, dim, eps, bias == "all")
        self.attn = Attention(dim, heads, dropout, kv_heads, bias)
        self.norm2 = make_norm(norm, dim, eps, bias == "all")
        self.mlp = MLP(dim, hidden, mlp, bias == "all")
        self.drop = nn.Dropout(dropout)
        if layer_scale is not None:
            self.scale1 = nn.Parameter(torch.full((dim,), layer_scale))  # (D,)
            self.scale2 = nn.Parameter(torch.full((dim,), layer_scale))
        else:
            self.scale1 = self.scale2 = None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                causal: bool) -> Tensor:  # (B, T, D) -> (B, T, D)
        if self.post_norm:
            x = self.norm1(x + self.drop(self.attn(x, rope, mask, causal)))
            return self.norm2(x + self.drop(self.mlp(x)))
        a = self.attn(self.norm1(x), rope, mask, causal)
        x = x + self.drop(a if self.scale1 is None else a * self.scale1)
        m = self.mlp(self.norm2(x))
        return x + self.drop(m if self.scale2 is None else m * self.scale2)


def transformer_blocks(cfg, hidden: int, depth: int | None = None) -> nn.ModuleList:
    """The blocks a model config names (dim, heads, MLP kind and width F = hidden, norm, its eps, key/value heads,
    bias, norm position, layer scale); `depth` blocks, or cfg.depth."""
    return nn.ModuleList(Block(cfg.dim, cfg.heads, hidden, cfg.mlp, cfg.norm, cfg.dropout, cfg.norm_eps, cfg.kv_heads,
                               cfg.bias, cfg.norm_position == "post", cfg.layer_scale)
                         for _ in range(cfg.depth if depth is None else depth))


def init_weights(model: nn.Module, depth: int, std: float = 0.02, scheme: str = "gpt2") -> None:
    """GPT-2 init: N(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2 × depth), biases zero;
    scheme="clip" (model.weight_init): the blocks' linear layers and learned text positions as CLIP's (`clip_std`)."""
    for name, p in model.named_parameters():
        if name.endswith(".bias") and isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.Linear):
            nn.init.zeros_(p)  # model.bias: linear biases start at zero (LayerNorm's are zero already)
        if p.ndim < 2:
            continue  # norms keep their ones, layer scales their value
        own = clip_std(name, p, depth) if scheme == "clip" else None
        scale = 1 / math.sqrt(2 * depth) if name.endswith(("attn.out.weight", "mlp.down.weight")) else 1.0
        nn.init.normal_(p, mean=0.0, std=std * scale if own is None else own)


def clip_std(name: str, p: Tensor, depth: int) -> float | None:
    """The std of CLIP's text transformer (open_clip's init) for this weight, scaled by the width D rather than
    GPT-2's fixed 0.02, or None where it is GPT-2's (token embedding, patch embedding, heads). At small widths this
    makes the attention carry the caption's tokens to the pooled end-of-text token from the first step (at 0.02 and
    D=128 it adds ~5% of what CLIP's does). Weights are (out, in)."""
    if name.endswith("positions.weight"):  # learned text positions
        return 0.01
    if name.endswith(("attn.out.weight", "mlp.down.weight")):  # the residual branches' outputs, (D, in)
        return p.shape[0] ** -0.5 / math.sqrt(2 * depth)
    if name.endswith("attn.qkv.weight"):
        return p.shape[1] ** -0.5
    if name.endswith("mlp.up.weight"):
        return (2 * p.shape[1]) ** -0.5
    return None
