"""`selfsup export --format onnx`: a run's encoders as ONNX graphs that onnxruntime serves without selfsup, each
computing what `selfsup embed` computes from the trunk's inputs (tokens, or the normalised view of an image or
audio clip), traced by torch.onnx's dynamo exporter at opset OPSET with a dynamic batch axis (and sequence axis
for text). `onnx.json` beside the graphs says, per graph, its inputs and outputs, the pooling, and how a user
prepares inputs (the tokenizer.json written beside it opens each text with EOS; the mean/std of images and audio).

    text encoder (mlm, simcse, hybrid, plm)   model.onnx   input_ids, attention_mask -> features (B, D)
    GPT (clm)                                 model.onnx   input_ids, attention_mask -> logits (B, T, V),
                                                                                        features (B, D)
    image backbone (ViT, ResNet)              model.onnx   pixel_values -> features (B, D)
    audio encoder                             model.onnx   log_mel, lengths -> features (B, D)
    video encoder                             model.onnx   frames -> features (B, D)
    media-text (clip, siglip, clap, ...)      text.onnx    input_ids, attention_mask -> embeddings (B, E)
                                              <media>.onnx <media inputs> -> embeddings (B, E), unit vectors

`quantize="int8"`: onnxruntime.quantization.quantize_dynamic on each fp32 graph, restricted to MatMul and Gemm
(the linear layers, as `--format safetensors --quantize int8` does): their weights int8 with a scale per output
channel, activations quantized per batch at run time; embeddings, convolutions and norms stay float.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from selfsup.config import RunConfig
from selfsup.data.read.audio import clip_frames
from selfsup.models.transformer import Transformer, pool
from selfsup.probe.inputs import pooling_kind

OPSET = 20
TEXT_IN = ["input_ids", "attention_mask"]  # (B, T) int64: token ids, 1 on real tokens and 0 on right padding
MEDIA_IN = {"image": ["pixel_values"], "audio": ["log_mel", "lengths"], "video": ["frames"]}
WAVE_IN = ["waveform", "lengths"]  # audio.input=waveform: (B, S) samples, (B,) real samples


class TextFeatures(nn.Module):
    """(B, T) ids, (B, T) mask -> (B, D) pooled final-norm hidden states, as `selfsup embed` pools them."""

    def __init__(self, trunk: Transformer):
        super().__init__()
        self.trunk, self.kind = trunk, pooling_kind(trunk)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask.bool()
        return pool(self.trunk(input_ids, pad_mask=mask), mask, self.kind)


class CausalLM(nn.Module):
    """(B, T) ids, (B, T) mask -> logits (B, T, V) and the embedding's mean over real tokens (B, D)."""

    def __init__(self, trunk: Transformer):
        super().__init__()
        self.trunk = trunk

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        mask = attention_mask.bool()
        hidden = self.trunk(input_ids, pad_mask=mask)  # (B, T, D)
        return self.trunk.logits(hidden), pool(hidden, mask, "mean")


class JointText(nn.Module):
    """The text tower of a clip / siglip run: (B, T) ids, (B, T) mask -> (B, E) unit vectors in the joint space."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        self.objective = objective

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.objective.embed_text(input_ids, attention_mask.bool())


class JointMedia(nn.Module):
    """The media tower of a clip / siglip run and its projection: (B, ...) view outputs (audio: and (B,) lengths) ->
    (B, E) unit vectors; eval.joint's, with its arguments named, which torch.export's dynamic shapes need."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        self.objective = objective

    def forward(self, media: Tensor, lengths: Tensor | None = None) -> Tensor:
        args = (media,) if lengths is None else (media, lengths)
        return self.objective.project_media(self.objective.model(*args))


@dataclass
class Graph:
    file: str
    module: nn.Module
    example: tuple[Tensor, ...]  # traced with these: batch 2 (torch.export specialises sizes 0 and 1)
    inputs: list[str]
    outputs: list[str]
    about: dict  # what onnx.json says of it beyond names and shapes
    sequence: int | None = None  # text: the longest sequence (model.context); axis 1 of every input is dynamic


class Untraceable(Exception):
    """torch.onnx could not trace a graph; the message is one line."""


def unfit(cfg: RunConfig, objective: nn.Module) -> str | None:
    """Why this run's model cannot be exported to ONNX, in a few words; None when it can."""
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in objective.modules()):
        return ("this is an int8 export, whose layers the ONNX exporter cannot trace; export the run itself with "
                "--format onnx --quantize int8")
    return None


def graphs(cfg: RunConfig, objective: nn.Module) -> list[Graph]:
    """The graphs a run exports: one per encoder (two, text and media, for a media-text run)."""
    if cfg.modality == "text":
        trunk = objective.model
        ids, mask = _text_example(trunk)
        if trunk.causal:
            return [Graph("model.onnx", CausalLM(trunk), (ids, mask), TEXT_IN, ["logits", "features"],
                          _text_about(trunk, "mean", "logits over the padded vocabulary; features: the mean of the "
                                      "final-norm hidden states over real tokens"), trunk.cfg.context)]
        return [Graph("model.onnx", TextFeatures(trunk), (ids, mask), TEXT_IN, ["features"],
                      _text_about(trunk, trunk.cfg.pooling, _pooled(trunk.cfg.pooling)), trunk.cfg.context)]
    media = _media_example(cfg)
    names = WAVE_IN if cfg.modality == "audio" and cfg.audio.input == "waveform" else MEDIA_IN[cfg.modality]
    if not cfg.pairs:
        return [Graph("model.onnx", objective.model, media, names, ["features"],
                      _media_about(cfg, "features: " + _media_pooling(cfg)))]
    ids, mask = _text_example(objective.text)
    joint = "embeddings: projected into the joint space and L2-normalised; cosine = dot product"
    return [Graph("text.onnx", JointText(objective), (ids, mask), TEXT_IN, ["embeddings"],
                  _text_about(objective.text, objective.text.cfg.pooling, joint, objective.attend_padding),
                  objective.text.cfg.context),
            Graph(f"{cfg.modality}.onnx", JointMedia(objective), media, names, ["embeddings"],
                  _media_about(cfg, f"{joint}; of the tower's features ({_media_pooling(cfg)})"))]


def write_onnx(cfg: RunConfig, objective: nn.Module, quantize: str | None, out: Path, scratch: Path) -> None:
    """Each graph of `graphs` into `out` (int8 with `quantize`, through an fp32 graph in `scratch`), and onnx.json."""
    about = {"opset": OPSET, "exporter": f"torch.onnx dynamo (torch {torch.__version__})", "graphs": {}}
    for g in graphs(cfg, objective):
        fp32 = (scratch if quantize else out) / g.file
        _export(g, fp32)
        if quantize:
            _quantize_int8(fp32, out / g.file)
        about["graphs"][g.file] = {"inputs": _shapes(g),
                                   "outputs": g.outputs, **g.about}
    if quantize:
        about["quantize"] = ("int8: onnxruntime quantize_dynamic of MatMul and Gemm (the linear layers): int8 "
                             "weights with a scale per output channel, activations quantized per batch; embeddings, "
                             "convolutions and norms float")
    (out / "onnx.json").write_text(json.dumps(about, indent=1))


def _export(g: Graph, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    axes = {0: batch} if g.sequence is None else {0: batch, 1: torch.export.Dim("sequence", min=1, max=g.sequence)}
    modes = [(m, m.training) for m in g.module.modules()]  # put back each: a fresh wrapper is in training mode
    g.module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals, not on this model
            program = torch.onnx.export(g.module, g.example, input_names=g.inputs, output_names=g.outputs,
                                        dynamic_shapes=tuple(axes for _ in g.inputs), opset_version=OPSET,
                                        dynamo=True, verbose=False, report=False, optimize=True)
    except Exception as e:  # torch's exporter raises its own classes, each with pages of advice after the cause
        lines = str(e).splitlines()
        why = next((line for line in lines if line.startswith("<class")), lines[0] if lines else type(e).__name__)
        raise Untraceable(f"torch.onnx could not trace {g.file} ({type(g.module).__name__}): {why}") from None
    finally:
        for m, training in modes:
            m.training = training
    program.save(str(path))  # weights beside it (path.data) only past protobuf's 2 GB


def _quantize_int8(fp32: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process first, whose shape inference fails on dynamo's graphs
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)


def _text_example(trunk: Transformer) -> tuple[Tensor, Tensor]:
    T = min(8, trunk.cfg.context)
    ids = torch.arange(2 * T, dtype=torch.long).view(2, T) % trunk.cfg.vocab_size  # (2, T)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T // 2:] = 0  # a padded row, so the mask is a real input of the graph
    return ids, mask


def _media_example(cfg: RunConfig) -> tuple[Tensor, ...]:
    if cfg.modality == "audio":
        a = cfg.audio
        if a.input == "waveform":
            samples = round(a.seconds * a.sample_rate)
            return torch.randn(2, samples), torch.tensor([samples, samples // 2])
        frames = clip_frames(a.sample_rate, a.seconds, a.hop)
        return torch.randn(2, a.n_mels, frames), torch.tensor([frames, frames // 2])
    im = cfg.image
    if cfg.modality == "video":
        return (torch.randn(2, cfg.video.frames, im.channels, im.size, im.size),)
    return (torch.randn(2, im.channels, im.size, im.size),)


def _shapes(g: Graph) -> dict:
    """Each input's shape (named axes are dynamic) and dtype."""
    return {name: {"shape": ["batch", "sequence"] if g.sequence else ["batch", *x.shape[1:]],
                   "dtype": str(x.dtype).removeprefix("torch.")} for name, x in zip(g.inputs, g.example)}


def _pooled(kind: str) -> str:
    where = {"cls": "the first token ([EOS], which opens every text)", "last": "the last real token"}.get(
        kind, "the mean over real tokens")
    return f"features: the final-norm hidden states at {where}"


def _text_about(trunk: Transformer, pooling: str, what: str, attend_padding: bool = False) -> dict:
    # a last-token tower's captions end with <|endoftext|> (its pooled token); every other text opens with it
    where = "closes" if pooling == "last" else "opens"
    padded = (f"ids right-padded with <|pad|> to exactly {trunk.cfg.context} tokens (the tower reads the padding, as "
              "training did; attention_mask all 1)" if attend_padding else
              f"ids right-padded with <|pad|>, attention_mask 1 on real tokens, at most {trunk.cfg.context} tokens")
    return {"pooling": pooling, "outputs_are": what, "max_sequence": trunk.cfg.context,
            "prepare": (f"tokenizer.json beside this file (Hugging Face tokenizers; it {where} each text with "
                        f"<|endoftext|>, as training did): {padded}")}


def _media_pooling(cfg: RunConfig) -> str:
    if cfg.modality == "audio":
        return "the final-norm tokens averaged over real audio"
    if cfg.modality == "video":
        return "the clip feature of the video encoder"
    m = cfg.model
    if m.backbone == "vit":
        return "the ViT's final-norm " + ("class token" if m.pooling == "cls" else "mean of the patch tokens")
    return f"the {m.backbone}'s globally average-pooled last stage"


def _media_about(cfg: RunConfig, what: str) -> dict:
    im, a = cfg.image, cfg.audio
    if cfg.modality == "audio" and a.input == "waveform":
        prepare = {"waveform": (f"mono samples at {a.sample_rate} Hz, {a.seconds} s, zero-padded at the end; each "
                                "clip normalised over its real samples, (x - mean) / sqrt(var + 1e-7), zeros after "
                                "(transformers' zero_mean_unit_var_norm)"),
                   "lengths": "real (unpadded) samples per clip"}
        return {"outputs_are": what, "prepare": prepare}
    if cfg.modality == "audio":
        prepare = {"log_mel": (f"log-mel of {a.seconds} s at {a.sample_rate} Hz, a shorter clip's samples "
                               f"zero-padded at the end (n_fft {a.n_fft}, hop {a.hop}, {a.n_mels} Slaney mel bands: "
                               "selfsup's data/read/audio.py), then (x - mean) / std"),
                   "lengths": "real (unpadded) frames per clip", "mean": a.mean, "std": a.std}
        return {"outputs_are": what, "prepare": prepare}
    view = (f"the shorter side resized to {im.size} (bilinear, antialiased), the centre {im.size}x{im.size} kept, "
            "scaled to [0, 1], then (x - mean) / std per channel")
    if cfg.modality == "video":
        view = f"{cfg.video.frames} frames, the middle one of each equal segment of the clip; each frame: {view}"
    prepare = {MEDIA_IN[cfg.modality][0]: view, "size": im.size, "channels": im.channels, "mean": im.mean,
               "std": im.std}
    return {"outputs_are": what, "prepare": prepare}
