"""How evaluation feeds a trunk, per modality: one evaluation path (kNN, linear probe, fine-tuning, embedding,
zero-shot, retrieval) for text, images, audio and video.

An inputs object turns a labeled set's items into model inputs and pooled features:
    prepare(items)                 -> prepared items (token lists, an image tensor)
    order(prepared)                -> the order to batch them in (texts: longest first, so little is padding)
    batch(prepared, rows, device)  -> the trunk's arguments for those rows
    features(trunk, *args)         -> (B, D) pooled features, differentiable (fine-tuning goes through it)
    describe(trunk)                -> the feature part of a protocol string

Text: each text is tokenized as [EOS] + tokens (EOS opens every document in training, so it is the 'cls'
position), truncated to the trunk's context, right-padded with PAD and masked (`pad_mask`), run through the trunk,
and pooled over the final normalised hidden states: `cfg.pooling` ('cls' or 'mean') for an encoder, always the mean
over real tokens for a causal model (its first token sees nothing but itself). Texts are batched in order of
length, so little of a batch is padding, and returned in the input order.
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from selfsup.data.labeled import Clips
from selfsup.data.read.tokenizer import PAD, eos_id
from selfsup.models.transformer import pool
from selfsup.models.vit import ViT
from selfsup.views.augment import center_view


def pooling_kind(model: nn.Module) -> str:
    return "mean" if model.causal else model.cfg.pooling


def tokenize(tok: Tokenizer, texts: list[str], context: int) -> list[list[int]]:
    eos = eos_id(tok)
    return [([eos] + enc.ids)[:context] for enc in tok.encode_batch(texts, add_special_tokens=False)]


def pad_id(tok: Tokenizer) -> int:
    pad = tok.token_to_id(PAD)
    return eos_id(tok) if pad is None else pad


def collate(seqs: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Token lists -> idx (B, T) right-padded with `pad`, pad_mask (B, T) True on real tokens."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = True
    return idx.to(device), mask.to(device)


class TextInputs:
    def __init__(self, tok: Tokenizer, trunk: nn.Module):
        self.tok, self.pad, self.context, self.kind = tok, pad_id(tok), trunk.cfg.context, pooling_kind(trunk)

    def prepare(self, texts: list[str]) -> list[list[int]]:
        return tokenize(self.tok, texts, self.context)

    def order(self, seqs: list[list[int]]) -> list[int]:
        return sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))

    def batch(self, seqs: list[list[int]], rows: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
        return collate([seqs[i] for i in rows], self.pad, device)

    def features(self, trunk: nn.Module, idx: Tensor, mask: Tensor) -> Tensor:
        return pool(trunk(idx, pad_mask=mask), mask, self.kind)

    def describe(self, trunk: nn.Module) -> str:
        where = "the first ([EOS]) token" if self.kind == "cls" else "the mean over real tokens"
        kind = "causal" if trunk.causal else "bidirectional"
        return (f"final-norm hidden states of the {kind} trunk (dim {trunk.cfg.dim}, depth {trunk.cfg.depth}) at "
                f"{where}; input [EOS] + text truncated to {self.context} tokens, padding masked")


class ImageInputs:
    """Images (N, C, H, W) uint8 -> the deterministic centre view at the training size, normalised with the
    run's mean and std: no augmentation at evaluation."""

    def __init__(self, size: int, mean: list[float], std: list[float]):
        self.size, self.mean, self.std = size, mean, std

    def prepare(self, images: np.ndarray | Tensor) -> Tensor:
        return images if isinstance(images, Tensor) else torch.from_numpy(np.array(images))  # a memmap is read-only

    def order(self, images: Tensor) -> list[int]:
        return list(range(len(images)))

    def batch(self, images: Tensor, rows: list[int], device: torch.device) -> tuple[Tensor]:
        return (center_view(images[rows].to(device), self.size, self.mean, self.std),)

    def features(self, trunk: nn.Module, x: Tensor) -> Tensor:
        return trunk(x)

    def describe(self, trunk: nn.Module) -> str:
        if isinstance(trunk, Pixels):
            what = f"raw pixels ({trunk.out_dim} values)"
        elif isinstance(trunk, ViT):
            where = {"cls": "class token", "mean": "mean of the patch tokens",
                     "map": "attention pooling of the patch tokens"}[trunk.cfg.pooling]
            what = f"ViT (dim {trunk.cfg.dim}, depth {trunk.cfg.depth}, patch {trunk.patch}) final-norm {where}"
        else:
            what = f"{type(trunk).__name__} globally average-pooled last stage (dim {trunk.out_dim})"
        return (f"{what}; centre view resized to {self.size}×{self.size}, normalised by the run's mean/std, "
                "no augmentation")


class MediaInputs:
    """Audio clips or videos as cached (log-mel frames, or frames at segment centres), through the run's own view
    in eval mode: the training normalisation, and for video the frame at the middle of each segment."""

    def __init__(self, view: nn.Module, modality: str):
        self.view, self.modality = view.eval(), modality

    def prepare(self, clips: Clips) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(np.array(clips.rows)), torch.from_numpy(np.array(clips.lengths))

    def order(self, prepared: tuple[Tensor, Tensor]) -> list[int]:
        return list(range(len(prepared[0])))

    def batch(self, prepared: tuple[Tensor, Tensor], rows: list[int], device: torch.device) -> tuple:
        return self.view(prepared[0][rows].to(device), prepared[1][rows].to(device))

    def features(self, trunk: nn.Module, *args) -> Tensor:
        return trunk(*args)

    def describe(self, trunk: nn.Module) -> str:
        c = getattr(trunk, "cfg", None)
        shape = f" (dim {c.dim}, depth {c.depth})" if c is not None else ""
        if self.modality == "audio":
            read = ("the waveform, each clip normalised over its real samples" if getattr(trunk, "waveform", False)
                    else "log-mel normalised by the run's mean/std")
            return f"audio encoder{shape} final-norm tokens averaged over real audio; {read}, no augmentation"
        return (f"video encoder (dim {trunk.out_dim}, temporal {getattr(trunk, 'temporal', '?')}) clip feature; the "
                "middle frame of each segment, normalised by the run's mean/std, no augmentation")


def run_inputs(cfg, objective: nn.Module, tok: Tokenizer | None):
    """What feeds items of a run's modality to its trunk: its image normalisation, its media view (audio, video)
    or its tokenizer (text)."""
    if cfg.modality == "image":
        return ImageInputs(cfg.image.size, cfg.image.mean, cfg.image.std)
    if cfg.modality in ("audio", "video"):
        return MediaInputs(objective.view, cfg.modality)
    return TextInputs(tok, objective.model)


class Pixels(nn.Module):
    """The raw-pixel baseline: the normalised centre view itself, flattened to (B, C·S·S)."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.out_dim = channels * size * size

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


@torch.no_grad()
def encode(trunk: nn.Module, inputs, items, batch_size: int, device: torch.device, progress=None) -> Tensor:
    """(N, D) float32 features on the CPU, row i for items[i]; `progress` wraps the iterable of batches."""
    was_training = trunk.training
    trunk.eval()
    prepared = inputs.prepare(items)
    order = inputs.order(prepared)
    out = torch.empty((len(order), trunk.out_dim), dtype=torch.float32)
    starts = range(0, len(order), batch_size)
    for start in (progress(starts) if progress else starts):
        rows = order[start:start + batch_size]
        features = inputs.features(trunk, *inputs.batch(prepared, rows, device))  # (b, D)
        out[torch.tensor(rows, dtype=torch.long)] = features.float().cpu()
    trunk.train(was_training)
    return out
