"""HuBERT (Hsu et al. 2021), first iteration: masked prediction of discrete acoustic units. Every token of a clip
gets a target, the k-means cluster of its own input frames; spans of the front-end features are replaced by a
learned mask embedding, and the transformer must predict the clusters of the masked tokens from the context.

Why HuBERT among wav2vec 2.0 / HuBERT / data2vec: its targets are fixed before training (k-means of the input),
so nothing can collapse and nothing needs tuning on small data: no quantiser with a diversity loss (wav2vec
2.0), no EMA teacher whose schedule decides whether the targets stay informative (data2vec). It reuses the
k-means the framework already has (BEiT's codebook, DeepCluster), and it is deterministic.

As the paper: spans of `mask_length` tokens start at a share `mask_prob` of tokens (about half the tokens end up
masked at 0.08 × 10); the loss is on masked tokens only (α = 1, its best setting); logits are cosine
similarities between a projection of the output and an embedding per cluster, over temperature 0.1. The paper's
first-iteration features are 39-d MFCCs (hubert.targets=mfcc: 13 cepstra of the log-mel frames, Kaldi's lifter,
deltas and delta-deltas; the audio-mask recipe's); with the key's default, log-mel, each token's unit is the
k-means cluster of its `stride` stacked, normalised log-mel frames (the same frames the token's front end reads),
fitted on the first training step on up to `kmeans_frames` real (unpadded) tokens of the training clips, and kept
in the checkpoint. Iterating (new
targets from the model's own features) is not done.

With audio.input=waveform the encoder reads samples (HuBERT's own conv front end, a token every 320 samples), and
the units stay k-means of log-mel frames: `LogMel` computes them from the (normalised) clips on the fly, as
data/read/audio.log_mel does on decoding, and each token stacks the 320 / audio.hop frames its samples start.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import batch_random
from selfsup.data.batch import ClipBatch
from selfsup.data.read.audio import LOG_FLOOR, hann, mel_filters
from selfsup.dist import broadcast
from selfsup.models.audio import AudioEncoder
from selfsup.objectives.contract import Objective
from selfsup.objectives.kmeans import kmeans, nearest
from selfsup.objectives.output import LossOutput


def span_mask(real: Tensor, mask_prob: float, length: int) -> Tensor:
    """(B, T) real-token mask -> (B, T) True on masked tokens: each real token starts a span with probability
    mask_prob, spans of `length` tokens may overlap, and at least one token per clip is masked."""
    B, T = real.shape
    starts = (batch_random.rand((B, T), real.device) < mask_prob) & real  # (B, T), the same on any world size
    starts[:, 0] |= ~starts.any(dim=1)  # no clip goes unmasked (token 0 is always real: padding is at the end)
    # a token is masked when a span started at one of the `length` tokens up to it
    window = F.pad(starts.float(), (length - 1, 0)).unfold(1, length, 1)  # (B, T, length)
    return (window.sum(dim=-1) > 0) & real


def token_frames(mel: Tensor, stride: int, T: int) -> Tensor:
    """(B, M, F) -> (B, T, M · stride): the frames each token's strided front end starts on, stacked."""
    B, M, F_ = mel.shape
    x = F.pad(mel, (0, T * stride - F_)) if T * stride > F_ else mel[..., :T * stride]
    return x.view(B, M, T, stride).permute(0, 2, 1, 3).reshape(B, T, M * stride)


def mfcc(mel: Tensor, cepstra: int = 13, lifter: int = 22) -> Tensor:
    """(B, M, F) log-mel -> (B, 3 · cepstra, F): the orthonormal DCT-II's first cepstra, liftered as Kaldi's
    compute-mfcc-feats (which HuBERT's first iteration runs), then their deltas and delta-deltas over 5 frames
    (torchaudio's compute_deltas: the ends repeated)."""
    M = mel.shape[1]
    n = torch.arange(cepstra, device=mel.device, dtype=torch.float32)[:, None]  # (C, 1)
    m = torch.arange(M, device=mel.device, dtype=torch.float32)[None, :]  # (1, M)
    dct = torch.cos(torch.pi / M * (m + 0.5) * n) * torch.sqrt(torch.where(n == 0, 1.0, 2.0) / M)  # (C, M)
    lift = 1 + lifter / 2 * torch.sin(torch.pi * n / lifter)  # (C, 1)
    c = lift * (dct @ mel.float())  # (B, C, F)

    def delta(x: Tensor) -> Tensor:  # Σ_k k (x[t+k] − x[t−k]) / (2 Σ k²), k = 1, 2
        p = F.pad(x, (2, 2), mode="replicate")
        return (p[..., 3:-1] - p[..., 1:-3] + 2 * (p[..., 4:] - p[..., :-4])) / 10

    d = delta(c)
    return torch.cat([c, d, delta(d)], dim=1)  # (B, 3C, F)


class LogMel(nn.Module):
    """(B, S) samples -> (B, M, 1 + S // hop) natural-log mel power: data/read/audio.log_mel in torch (a centred
    STFT over zeros, periodic Hann, Slaney filters, floored log), for the targets of waveform input."""

    def __init__(self, sample_rate: int, n_mels: int, n_fft: int, hop: int):
        super().__init__()
        self.n_mels, self.n_fft, self.hop = n_mels, n_fft, hop
        self.register_buffer("window", torch.from_numpy(hann(n_fft).copy()), persistent=False)  # (n_fft,)
        filters = torch.from_numpy(mel_filters(sample_rate, n_fft, n_mels).copy())  # (M, n_fft // 2 + 1)
        self.register_buffer("filters", filters, persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        with torch.autocast(wave.device.type, enabled=False):  # fp32: a bf16 product would move frames across units
            x = F.pad(wave.float(), (self.n_fft // 2, self.n_fft - self.n_fft // 2))  # (B, S + n_fft), silence
            frames = x.unfold(1, self.n_fft, self.hop)[:, :1 + wave.shape[1] // self.hop]  # (B, F, n_fft)
            power = torch.fft.rfft(frames * self.window, dim=-1).abs().square()  # (B, F, n_fft // 2 + 1)
            return torch.log((self.filters @ power.transpose(1, 2)).clamp(min=LOG_FLOOR))  # (B, M, F)


class HuBERT(nn.Module, Objective):
    unit = "clip"
    fits_on_data = True  # its units are k-means of the training clips' frames,
    streams = False  # held in memory

    def __init__(self, encoder: AudioEncoder, view: nn.Module, clusters: int, kmeans_frames: int, mask_prob: float,
                 mask_length: int, temperature: float, proj_dim: int, clips: np.ndarray | None = None,
                 lengths: np.ndarray | None = None, seed: int = 0, mel: LogMel | None = None,
                 targets: str = "log-mel"):
        """mel: for an encoder that reads samples, what makes the log-mel frames its units are k-means of;
        targets: 'log-mel' (the frames) or 'mfcc' (their cepstra, the paper's first iteration)."""
        super().__init__()
        self.model = encoder
        self.view = view
        self.mask_prob, self.mask_length, self.temperature = mask_prob, mask_length, temperature
        D = encoder.out_dim
        self.mask_embed = nn.Parameter(torch.empty(D).uniform_())  # as the paper's code
        self.proj = nn.Linear(D, proj_dim)
        self.units = nn.Embedding(clusters, proj_dim)  # one embedding per cluster (the paper's label embeddings)
        self.mel = mel
        self.frame_stride = encoder.stride if mel is None else encoder.stride // mel.hop  # log-mel frames per token
        n_mels = encoder.n_mels if mel is None else mel.n_mels
        self.mfcc = targets == "mfcc"
        per_frame = 39 if self.mfcc else n_mels
        self.register_buffer("centroids", torch.zeros(clusters, per_frame * self.frame_stride))  # (K, M · stride)
        self.register_buffer("centroids_ready", torch.zeros((), dtype=torch.bool))
        self._clips, self._lengths, self._fit_frames, self._seed = clips, lengths, kmeans_frames, seed

    @torch.compiler.disable
    @torch.no_grad()
    def fit_units(self, device: torch.device) -> None:
        """k-means over the token frames of real audio, from as many training clips as `kmeans_frames` needs."""
        if self._clips is None:
            raise RuntimeError("HuBERT needs the training clips to fit its units (or a trained run to load)")
        g = torch.Generator().manual_seed(self._seed)
        T = self.model.tokens_per_clip
        n = min(len(self._clips), -(-self._fit_frames // T))
        pick = np.sort(torch.randperm(len(self._clips), generator=g)[:n].numpy())
        x, lengths = self.view(torch.from_numpy(np.array(self._clips[pick])).to(device),
                               torch.from_numpy(self._lengths[pick]).to(device))
        real = self.model.token_mask(lengths, T)  # (n, T)
        frames = self.frames(x, T)[real]  # (n_real, M · stride)
        k = self.centroids.shape[0]
        if len(frames) < k:
            raise ValueError(f"hubert.clusters={k} needs at least as many audio tokens; the training clips have "
                             f"{len(frames)}: expected fewer clusters or more audio")
        frames = frames[torch.randperm(len(frames), generator=g)[:self._fit_frames].to(device)]
        centroids, _ = kmeans(frames, k, iters=20, generator=g)
        self.centroids.copy_(broadcast(centroids))  # the same targets on every process
        self.centroids_ready.fill_(True)

    def frames(self, inputs: Tensor, T: int) -> Tensor:
        """(B, M, F) log-mel or (B, S) samples -> (B, T, M · stride): each token's log-mel frames (or their 39
        MFCCs), stacked."""
        mel = inputs if self.mel is None else self.mel(inputs)  # (B, M, F)
        return token_frames(mfcc(mel) if self.mfcc else mel, self.frame_stride, T)

    def forward(self, batch: ClipBatch) -> LossOutput:
        if self.training and not self.centroids_ready:
            self.fit_units(batch["media"].device)
        inputs, lengths = self.view(batch["media"], batch["lengths"])  # (B, M, F) or (B, S), (B,)
        x = self.model.embed(inputs)  # (B, T, D)
        B, T, _ = x.shape
        real = self.model.token_mask(lengths, T)  # (B, T)
        with torch.no_grad():
            targets = nearest(self.frames(inputs, T).flatten(0, 1), self.centroids).view(B, T)
            masked = span_mask(real, self.mask_prob, self.mask_length)  # (B, T)
        x = torch.where(masked.unsqueeze(-1), self.mask_embed.to(x.dtype), x)
        h = self.model.encode(x, real)  # (B, T, D)
        z = F.normalize(self.proj(h[masked]).float(), dim=-1)  # (n, P) for the n masked tokens
        logits = z @ F.normalize(self.units.weight.float(), dim=-1).t() / self.temperature  # (n, K)
        y = targets[masked]
        loss = F.cross_entropy(logits, y, reduction="sum")
        with torch.no_grad():
            metrics = {"masked_acc": (logits.argmax(dim=1) == y).float().mean(),
                       "masked_share": masked.sum() / real.sum()}
            w = real.unsqueeze(-1).to(h.dtype)
            pooled = (h * w).sum(dim=1) / w.sum(dim=1)
        return LossOutput(loss, masked.sum(), units=B, metrics=metrics, embeddings=(pooled.detach(),))
