"""Audio encoder: a convolutional front end over log-mel frames (Whisper's: two 3-wide convolutions with GELU, the
second strided) and the shared transformer blocks, bidirectional, with rotary positions over time.

    log-mel (B, M, F) -> tokens (B, T, D), T = ⌊(F − 1) / stride⌋ + 1; features (B, D) = mean over real tokens

Clips are padded to a fixed length with silence; `lengths` (B,) gives each clip's real frames, and padded tokens
are kept out of attention (as keys) and out of the mean. Letters: B batch, M mel bands, F frames, T tokens,
S samples, C channels.

With audio.input=waveform the front end is HuBERT / wav2vec 2.0's instead (`WaveformFront`: strided convolutions
over the samples, then LayerNorm and a projection to D), `lengths` count samples, and a token is real where
transformers' HubertModel counts it real from its attention_mask. audio.positions=conv replaces the rotary
positions by their convolutional position embedding (`ConvPositions`), added once before the blocks: the same
computation as HubertModel's encoder, padded tokens zeroed first as there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import AudioConfig, ModelConfig
from selfsup.models.blocks import Rotary, init_weights, make_norm, mlp_hidden, transformer_blocks
from selfsup.models.transformer import pool


class ConvLayer(nn.Module):
    """One feature-encoder convolution, its norm (GroupNorm per channel over time, LayerNorm over channels, or
    none) and GELU: (B, C, S) -> (B, C', S')."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm = {"group": nn.GroupNorm(c_out, c_out), "layer": nn.LayerNorm(c_out), None: None}[norm]

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if isinstance(self.norm, nn.LayerNorm):
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.norm is not None:
            x = self.norm(x)
        return F.gelu(x)


class WaveformFront(nn.Module):
    """HuBERT / wav2vec 2.0's feature encoder and feature projection: (B, S) samples -> (B, T, D)."""

    def __init__(self, a: AudioConfig, dim: int, eps: float | None):
        super().__init__()
        channels = [1, *a.conv_dim]
        self.kernels, self.strides = a.conv_kernel, a.conv_stride
        self.conv_norm, self.conv_bias = a.conv_norm, a.conv_bias
        self.convs = nn.ModuleList(
            ConvLayer(channels[i], channels[i + 1], k, s, a.conv_bias,
                      "layer" if a.conv_norm == "layer" else "group" if i == 0 else None)
            for i, (k, s) in enumerate(zip(a.conv_kernel, a.conv_stride)))
        self.norm = nn.LayerNorm(a.conv_dim[-1], eps=eps or 1e-5)
        self.proj = nn.Linear(a.conv_dim[-1], dim)

    def tokens(self, samples: Tensor | int) -> Tensor | int:
        """Tokens from `samples` samples (each convolution without padding), as HubertModel counts them."""
        for k, s in zip(self.kernels, self.strides):
            samples = (samples - k) // s + 1
        return samples

    def forward(self, wave: Tensor) -> Tensor:  # (B, S) -> (B, T, D)
        x = wave[:, None]  # (B, 1, S)
        for conv in self.convs:
            x = conv(x)  # (B, C, S')
        return self.proj(self.norm(x.transpose(1, 2)))


class ConvPositions(nn.Module):
    """HuBERT / wav2vec 2.0's position embedding: GELU of a grouped convolution over time with weight norm (a
    direction and a norm per kernel tap, dim=2), an even kernel's extra last token dropped: (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, std=math.sqrt(4 / (kernel * dim)))  # as fairseq's wav2vec 2.0
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 - kernel % 2

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.transpose(1, 2))  # (B, D, T + trim)
        return F.gelu(y[..., :y.shape[-1] - self.trim]).transpose(1, 2)


class AudioEncoder(nn.Module):
    """audio: the front end and position options (audio.input, audio.conv_*, audio.positions); None: log-mel and
    RoPE. With audio.input=waveform, `frames` are the samples of a clip and n_mels, stride are unused."""

    def __init__(self, cfg: ModelConfig, n_mels: int, frames: int, stride: int, audio: AudioConfig | None = None):
        super().__init__()
        a = audio or AudioConfig()
        self.cfg, self.stride, self.out_dim, self.n_mels = cfg, stride, cfg.dim, n_mels
        self.waveform = a.input == "waveform"
        if self.waveform:
            self.front = WaveformFront(a, cfg.dim, cfg.norm_eps)
            self.stride = math.prod(a.conv_stride)  # samples per token
            self.tokens_per_clip = self.front.tokens(frames)
        else:
            self.tokens_per_clip = (frames - 1) // stride + 1
            self.front = nn.Sequential(nn.Conv1d(n_mels, cfg.dim, 3, padding=1), nn.GELU(),
                                       nn.Conv1d(cfg.dim, cfg.dim, 3, stride=stride, padding=1), nn.GELU())
        self.blocks = transformer_blocks(cfg, cfg.mlp_hidden or mlp_hidden(cfg.dim, cfg.mlp_ratio, cfg.mlp))
        # post-norm blocks end on a norm; with conv positions they also start on one (HuBERT Base's encoder norm)
        post, bias = cfg.norm_position == "post", cfg.bias == "all"
        self.norm = nn.Identity() if post else make_norm(cfg.norm, cfg.dim, cfg.norm_eps, bias)
        init_weights(self, cfg.depth, scheme=cfg.weight_init)
        if self.waveform:  # a deep stack of convolutions, most without a norm: He init, as fairseq and transformers
            for layer in self.front.convs:
                nn.init.kaiming_normal_(layer.conv.weight)
        if a.positions == "conv":  # after init_weights: its weight norm starts from its own initialisation
            self.positions = ConvPositions(cfg.dim, a.conv_positions, a.conv_position_groups)
            self.norm_in = make_norm(cfg.norm, cfg.dim, cfg.norm_eps, bias) if post else nn.Identity()
            self.rotary = None
        else:
            self.rotary = Rotary(cfg.dim // cfg.heads, self.tokens_per_clip, cfg.rope_theta)

    def token_mask(self, lengths: Tensor | None, T: int) -> Tensor | None:
        """(B,) real frames (samples) -> (B, T) True on tokens that cover real audio (None: all real)."""
        if lengths is None:
            return None
        if self.waveform:  # HubertModel's _get_feature_vector_attention_mask
            real = self.front.tokens(lengths.long()).clamp(min=1)
        else:
            real = (lengths.clamp(min=1) - 1) // self.stride + 1  # tokens whose window starts on a real frame
        return torch.arange(T, device=lengths.device)[None, :] < real[:, None]

    def embed(self, mel: Tensor) -> Tensor:
        """(B, M, F) log-mel or (B, S) samples -> (B, T, D) front-end features, before the blocks (HuBERT masks
        here)."""
        return self.front(mel) if self.waveform else self.front(mel).transpose(1, 2)

    def encode(self, x: Tensor, real: Tensor | None) -> Tensor:
        """(B, T, D) front-end features, (B, T) real-token mask or None -> (B, T, D) final-norm hidden states."""
        B, T, _ = x.shape
        mask = None if real is None else real[:, None, None, :].expand(B, 1, T, T)  # (B, 1, T, T) keys
        rope = None
        if self.rotary is None:
            if real is not None:
                x = x.masked_fill(~real[..., None], 0.0)  # padded tokens do not reach the position convolution
            x = self.norm_in(x + self.positions(x))
        else:
            rope = self.rotary(T, None)
        for block in self.blocks:
            x = block(x, rope, mask, causal=False)
        return self.norm(x)

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, M, F) normalised log-mel or (B, S) samples, (B,) real frames (samples) -> (B, D) mean over real
        tokens."""
        x = self.embed(mel)
        real = self.token_mask(lengths, x.shape[1])
        return pool(self.encode(x, real), real, "mean")
