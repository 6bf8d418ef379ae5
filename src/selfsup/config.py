"""The whole run as pydantic models: built-in YAML recipes, user YAML files and `key=value` overrides.

A bad config fails before any work with one line that names the key, what was given and what is expected.
"""

from __future__ import annotations

import difflib
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from selfsup import budget

BUILTIN_CORPUS = "builtin:python-docstrings"
TEXT_OBJECTIVES = ("clm", "mlm", "plm")
IMAGE_OBJECTIVES = ("simclr", "mocov2", "mocov3", "byol", "dino", "mae", "beit", "swav", "deepcluster")
PAIR_OBJECTIVES = ("clip", "siglip")  # a media tower (image, audio or video) aligned with a text tower
AUDIO_OBJECTIVES = ("hubert",)
ENCODER_TEXT_OBJECTIVES = ("mlm", "plm", "simcse")  # bidirectional encoders on packed windows: they mix in a hybrid
Part = Literal["mlm", "plm", "simcse", "simclr", "mocov2", "mocov3", "byol", "dino", "mae", "beit", "swav",
               "deepcluster"]  # what a hybrid may combine
Objective = Literal["clm", "mlm", "plm", "simcse", "simclr", "mocov2", "mocov3", "byol", "dino", "mae", "beit", "swav",
                    "deepcluster", "clip", "siglip", "hubert", "hybrid"]
# the sections a hybrid's term may set for itself: its own heads, losses and views, never the shared backbone's
# How a run executes or is watched, not what it trains: the keys a resumed run may change (train/identity.py).
MAY_CHANGE_ON_RESUME = (
    "out_dir", "train.max_steps", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.keep_checkpoints", "train.max_bad_steps", "train.peak_tflops",
    "train.device_watts", "train.device", "train.compile", "train.activation_checkpointing", "data.workers",
    "data.cache_dir", "dist.strategy", "dist.nproc_per_node", "dist.nnodes", "dist.node_rank", "dist.rdzv_endpoint",
    "dist.backend", "log.to",
    "probe.train", "probe.test", "probe.every", "probe.linear", "probe.keep_best", "probe.k", "probe.temperature",
    "probe.batch_size",
)
TERM_SECTIONS = ("views", "ssl", "dino", "mae", "beit", "swav", "deepcluster", "mlm", "plm", "simcse")


class ConfigError(ValueError):
    """A config the user got wrong; the message is one line meant for them."""


# the ranges of floats inside tuples and lists (a scalar key says its own with Field)
Probability = Annotated[float, Field(ge=0, le=1)]
Area = Annotated[float, Field(gt=0, le=1)]  # a crop's share of the image's area
Decay = Annotated[float, Field(ge=0, lt=1)]  # an EMA's decay rate
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


def _numeric(annotation: Any) -> bool:
    """int or float, alone or inside a tuple, a list, an optional or a Literal of numbers."""
    if annotation in (int, float) or type(annotation) in (int, float):
        return True
    return any(_numeric(a) for a in get_args(annotation))


class Section(BaseModel):
    # inf and nan are refused in every float, however deep (an lr of .inf "trains" to the end, on nan weights)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML reads true and false as booleans, and pydantic's lax mode would take them for 1 and 0
        (train.max_steps=true: one step)."""
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) for v in items) and _numeric(cls.model_fields[info.field_name].annotation):
            raise PydanticCustomError("bool_number", "a number, not true or false")
        return value


class DataConfig(Section):
    path: str = Field(BUILTIN_CORPUS, description=f"text: a .txt/.jsonl/.parquet file or a folder of them (see "
                      f"data.extensions), or hf:datasets/ORG/NAME[@REVISION] (those files of a Hugging Face Hub "
                      f"dataset, fetched into huggingface_hub's cache); '{BUILTIN_CORPUS}' is the docstrings of "
                      "Python's standard library, present on every machine. Images: a folder "
                      "(recursive), webdataset .tar shards, an .npz, .parquet files or a datasets folder (see "
                      "data.image_field); 'builtin:digits' is scikit-learn's bundled handwritten digits (training "
                      "split). Audio: a folder of clips, or 'builtin:tones' (synthetic sounds) / 'builtin:speech' "
                      "(synthetic spoken vowels of many voices), their training splits")
    document: Literal["line", "file", "paragraph"] = Field("line", description="text files other than .jsonl and "
                                                          ".parquet: a document per line, per file, or per block of "
                                                          "lines between blank lines; the built-in corpus: a "
                                                          "docstring each, or with 'file' a module's docstrings")
    extensions: list[str] | None = Field(None, description="text: which files of a data.path folder are read, e.g. "
                                         "'.md,.py,.rst' (default .txt, .jsonl and .parquet); .jsonl and .parquet "
                                         "keep their format, any other suffix is plain text split by data.document")
    text_field: str = Field("text", min_length=1, description="the field of a .jsonl line, or the column of a "
                            ".parquet file, that holds a document's text")
    image_field: str = Field("image", min_length=1, description="images and pairs: the column of a .parquet file "
                             "or a datasets folder that holds each row's image (its encoded bytes, a {bytes, path} "
                             "struct as datasets.Image() stores it, or a path relative to the file), and the field "
                             "of an image pair .jsonl line that holds its path")
    caption_field: str = Field("text", min_length=1, description="pairs: the field of a .jsonl line, or the column "
                               "of a .parquet file or a datasets folder, that holds the caption")
    tokenizer: str | None = Field(None, description="a tokenizer.json to reuse instead of training one")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="share of documents held out for validation")
    max_doc_chars: int = Field(200_000, gt=0, description="longer documents are skipped and counted")
    doc_mask: bool = Field(True, description="packed documents do not attend to each other")
    cache_dir: str | None = Field(None, description="where token shards and decoded images are cached (default "
                                  "~/.cache/selfsup)")
    workers: int | None = Field(None, ge=0, description="processes that decode images and media or tokenize text "
                                "(default: min(cores, 8); 0: in the run's own process); the data made is the same "
                                "for any number")
    streaming: bool = Field(False, description="images and pairs in webdataset .tar shards: decode on the fly instead "
                            "of into a cache first; each process and decoding worker reads its own shards, whole "
                            "shards are held out for validation by a hash of their name, statistics are measured on "
                            "the first 1000 samples (see docs/distributed.md)")
    shuffle_buffer: int = Field(1000, gt=0, description="streaming: samples permuted together within a process")
    allow_outside: bool = Field(False, description="pairs .jsonl, and image paths in .parquet or datasets rows: read "
                                "media paths that lead outside the data folder "
                                "(absolute, '..', or through links); by default such lines are skipped and counted "
                                "as 'outside the data folder'")

    @field_validator("extensions", mode="before")
    @classmethod
    def _suffixes(cls, value: Any) -> Any:
        """data.extensions=.md,.py: a comma-separated string is a list; every suffix starts with a dot."""
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if isinstance(value, list):
            if not value or any(not isinstance(v, str) or len(v) < 2 or not v.startswith(".") for v in value):
                raise PydanticCustomError("suffixes", "file suffixes that start with a dot, e.g. '.md,.py'")
        return value


class ImageConfig(Section):
    size: int = Field(32, ge=8, description="side of the square images (global views) the model sees")
    channels: Literal[1, 3] = Field(3, description="1 (grayscale) or 3 (RGB); images are converted on decoding")
    mean: list[float] | None = Field(None, description="per-channel normalisation mean in [0, 1] units (default: "
                                     "measured on the training images)")
    std: list[Positive] | None = Field(None, description="per-channel normalisation std (default: measured)")


class AudioConfig(Section):
    sample_rate: int = Field(16000, ge=1000, description="audio is resampled to this rate on decoding")
    seconds: float = Field(1.0, gt=0, description="clip length: longer audio keeps its centre, shorter is padded "
                           "with silence (masked out of attention, pooling and losses)")
    min_seconds: float = Field(0.1, ge=0, description="shorter audio is skipped and counted")
    n_mels: int = Field(64, gt=0, description="log-mel bands (Slaney mel scale, librosa's filterbank)")
    n_fft: int = Field(400, gt=0, description="STFT window in samples (25 ms at 16 kHz)")
    hop: int = Field(160, gt=0, description="STFT hop in samples (10 ms at 16 kHz)")
    stride: int = Field(2, ge=1, description="the convolutional front end emits a token every `stride` frames")
    mean: float | None = Field(None, description="log-mel normalisation mean (default: measured on the training "
                               "clips; audio.input=waveform normalises each clip instead)")
    std: float | None = Field(None, gt=0, description="log-mel normalisation std (default: measured)")
    input: Literal["logmel", "waveform"] = Field("logmel", description="what the audio encoder reads: log-mel "
                                                 "frames through a two-convolution front end, or the raw waveform "
                                                 "(cached as float32 samples, each clip normalised to zero mean "
                                                 "and unit variance over its real samples) through HuBERT / "
                                                 "wav2vec 2.0's convolutional feature encoder (audio.conv_*)")
    conv_dim: list[Annotated[int, Field(gt=0)]] = Field([512] * 7, min_length=1, description="audio.input="
                                                        "waveform: channels of each feature-encoder convolution")
    conv_kernel: list[Annotated[int, Field(gt=0)]] = Field([10, 3, 3, 3, 3, 2, 2], min_length=1,
                                                           description="audio.input=waveform: their kernel sizes")
    conv_stride: list[Annotated[int, Field(gt=0)]] = Field([5, 2, 2, 2, 2, 2, 2], min_length=1,
                                                           description="audio.input=waveform: their strides (a token "
                                                           "every product of them samples: 320, 20 ms at 16 kHz)")
    conv_norm: Literal["group", "layer"] = Field("group", description="audio.input=waveform: GroupNorm on the first "
                                                 "convolution only (HuBERT Base) or LayerNorm on each (Large)")
    conv_bias: bool = Field(False, description="audio.input=waveform: the convolutions have biases")
    positions: Literal["rope", "conv"] = Field("rope", description="audio positions: rotary in every block, or "
                                               "HuBERT / wav2vec 2.0's convolutional position embedding (a grouped, "
                                               "weight-normed convolution over time with GELU, added to the tokens "
                                               "once; a post-norm trunk then normalises them before its first "
                                               "block, a pre-norm one ends with its final norm)")
    conv_positions: int = Field(128, ge=2, description="audio.positions=conv: the convolution's kernel in tokens")
    conv_position_groups: int = Field(16, gt=0, description="audio.positions=conv: its groups (divide model.dim)")

    @model_validator(mode="after")
    def _waveform(self) -> AudioConfig:
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError(f"audio.conv_dim, conv_kernel and conv_stride have {len(self.conv_dim)}, "
                             f"{len(self.conv_kernel)} and {len(self.conv_stride)} entries; expected one each per "
                             "convolution")
        per_token = math.prod(self.conv_stride)
        if self.input == "waveform" and per_token % self.hop:
            raise ValueError(f"audio.hop={self.hop} must divide the waveform encoder's {per_token} samples per token "
                             "(HuBERT's targets stack the log-mel frames of each token)")
        return self


class VideoConfig(Section):
    frames: int = Field(8, ge=1, description="frames the model sees per clip")
    cache_frames: int = Field(16, ge=1, description="frames decoded per clip (segment centres); training samples "
                              "`frames` of them, one per segment, at random (video.sampling=segment)")
    sampling: Literal["segment", "uniform"] = Field("segment", description="training: a random frame per segment "
                                                    "(TSN) or the segment centres; evaluation is always uniform")
    temporal: Literal["attention", "mean"] = Field("attention", description="how frame features become a clip's: "
                                                   "transformer blocks over time, or the mean")
    temporal_depth: int = Field(1, ge=1, description="temporal transformer blocks")


TRANSFORMER_OPTIONS = ("kv_heads", "mlp_hidden", "norm_eps", "bias", "norm_position", "layer_scale", "weight_init")
TEXT_TRUNK_OPTIONS = ("tied", "learned_positions", "local_attention", "global_every", "local_rope_theta")
VIT_OPTIONS = ("learned_positions", "embed_norm", "position_grid")  # a ViT's (learned positions: a text trunk's too)


class ModelConfig(Section):
    dim: int = Field(256, gt=0)
    depth: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    kv_heads: int | None = Field(None, gt=0, description="text trunk: key/value heads, each shared by heads/kv_heads "
                                 "query heads (grouped-query attention, as Llama's num_key_value_heads); None: "
                                 "model.heads. Not with xlnet-plm")
    context: int = Field(128, gt=1, description="sequence length in tokens")
    vocab_size: int = Field(8192, ge=260, description="tokenizer vocabulary (>= 256 bytes + 3 special tokens + "
                            "merges); the embedding is padded to x64")
    mlp: Literal["swiglu", "geglu", "gelu", "gelu_tanh", "quick_gelu"] = Field(
        "swiglu", description="swiglu (Llama), geglu (ModernBERT), or a plain MLP with exact gelu (BERT, ViT), "
        "gelu_tanh (GPT-2, SigLIP) or quick_gelu (OpenAI CLIP)")
    mlp_ratio: float = Field(4.0, gt=0, description="hidden width / dim (gated MLPs use 2/3 of it)")
    mlp_hidden: int | None = Field(None, gt=0, description="text trunk: the MLP's hidden width F itself, instead of "
                                   "mlp_ratio's (model.init sets it to a model's intermediate_size)")
    tied: bool = Field(True, description="GPT decoder: the output head is the token embedding (Llama's "
                       "tie_word_embeddings); false: a head of its own")
    norm: Literal["rmsnorm", "layernorm"] = Field("rmsnorm", description="rmsnorm (eps 1e-6, Llama) or layernorm "
                                                  "without bias (eps 1e-5, ModernBERT)")
    norm_eps: float | None = Field(None, gt=0, description="transformers: the norms' eps instead of the kind's "
                                   "default (model.init sets it to a model's rms_norm_eps or layer_norm_eps)")
    bias: Literal["none", "qkv", "all"] = Field("none", description="transformers: biases on no layer (Llama, "
                                                "ModernBERT), on the query/key/value projection (Qwen2), or on every "
                                                "linear layer and LayerNorm (GPT-2, BERT, ViT, CLIP)")
    norm_position: Literal["pre", "post"] = Field("pre", description="transformers: normalise each block's input "
                                                  "(pre, GPT-2 onwards) or each residual sum (post, BERT)")
    layer_scale: float | None = Field(None, gt=0, description="transformers: a learned per-channel scale on each "
                                      "residual branch, starting at this value (DINOv2's LayerScale, 1e-5 in CaiT)")
    weight_init: Literal["gpt2", "clip"] = Field("gpt2", description="transformer: how the blocks start: gpt2 "
                                                 "(N(0, 0.02), residual outputs / sqrt(2·depth)) or clip (scaled by "
                                                 "the width D as CLIP's text transformer: query/key/value D^-0.5, "
                                                 "residual outputs D^-0.5 / sqrt(2·depth), MLP up (2D)^-0.5, learned "
                                                 "text positions N(0, 0.01)); the clip recipe's towers")
    learned_positions: bool = Field(False, description="text trunk: a learned position embedding per position "
                                    "(GPT-2, BERT) instead of rotary embeddings; ViT: a learned embedding per patch "
                                    "(ViT, DINOv2, CLIP, SigLIP; the class token's position is part of the class "
                                    "token) instead of the fixed sin-cos ones")
    position_grid: int | None = Field(None, gt=0, description="ViT with learned_positions: side in patches of the "
                                      "learned table (model.init sets a model's image_size / patch_size, 37 for "
                                      "DINOv2); other grids are interpolated from it bicubically, as transformers "
                                      "does; None: image.size / model.patch")
    causal: bool = Field(False, description="text tower of clip/siglip (text.causal): each token attends only to "
                         "those before it (CLIP's text transformer)")
    embed_norm: bool | None = Field(None, description="a norm on the embedded tokens before the first block; None: "
                                    "the trunk's own (the text encoder has one, in place of its first block's "
                                    "attention norm, as ModernBERT; a ViT none); model.embed_norm=true: CLIP's "
                                    "pre_layrnorm on a ViT; text.embed_norm=false: the text tower of clip/siglip "
                                    "without one, as CLIP's and SigLIP's")
    local_attention: int | None = Field(None, ge=2, description="text encoder: the sliding window of the local "
                                        "layers in tokens, a token seeing local_attention/2 either side "
                                        "(ModernBERT's local_attention); None: every layer attends globally")
    global_every: int = Field(3, ge=1, description="with model.local_attention: layer i attends globally when i is "
                              "a multiple of this, the others within the window (ModernBERT's "
                              "global_attn_every_n_layers)")
    local_rope_theta: float | None = Field(None, gt=0, description="text encoder: the rotary base of the local "
                                           "layers (ModernBERT's local_rope_theta); None: model.rope_theta")
    init: str | None = Field(None, description="start from a Hugging Face model: a local folder with config.json "
                             "and model.safetensors (or a sharded index), or hf:ORG/NAME[@REVISION] (fetched into "
                             "huggingface_hub's cache; offline, read from it). Its config sets the model's shape: a "
                             "causal LM (Llama, Qwen2, Mistral, GPT-2) for objective clm and an encoder (BERT, "
                             "RoBERTa, ModernBERT) for mlm, simcse or a hybrid of them, each with its tokenizer.json "
                             "as data.tokenizer; a ResNetModel of ResNet-18/50 layout for image objectives (it sets "
                             "model.backbone, model.small_stem=false and image.channels; teachers start equal to "
                             "it); a ViTModel or Dinov2Model for image objectives with a ViT (its shape and learned "
                             "positions; image.size stays the run's); a CLIPModel or SiglipModel for objective clip "
                             "or siglip: both towers, and image.mean/std from its preprocessor_config.json")
    pooling: Literal["cls", "mean", "last", "map"] = Field(
        "cls", description="encoders: sequence feature from the first token (EOS opens every document), the mean over "
        "tokens, the last token (text tower: the last real one, CLIP's end-of-text; the last position when "
        "align.attend_padding, SigLIP's) or, ViT of clip/siglip, attention pooling by a learned probe without a "
        "class token (map: SigLIP's multihead attention pooling head)")
    dropout: float = Field(0.0, ge=0, lt=1)
    rope_theta: float = Field(10000.0, gt=0)
    backbone: Literal["vit", "resnet18", "resnet50"] = Field("vit", description="image objectives: a ViT of "
                                                             "dim/depth/heads, or a ResNet")
    patch: int = Field(4, gt=0, description="ViT patch side in pixels (image.size must be a multiple)")
    small_stem: bool = Field(True, description="ResNet: 3x3 stride-1 stem without max-pool, for images <= 64 px")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ModelConfig:
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"model.dim ({self.dim}) must be a multiple of model.heads ({self.heads}) "
                             "with an even head size (RoPE rotates pairs)")
        if self.kv_heads and self.heads % self.kv_heads:
            raise ValueError(f"model.kv_heads ({self.kv_heads}) must divide model.heads ({self.heads})")
        return self


class TrainConfig(Section):
    max_steps: int = Field(1000, gt=0)
    batch_size: int = Field(32, gt=0, description="samples (sequences, images, pairs, clips) per micro-batch and "
                            "process: the global batch is batch_size × grad_accum × processes")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = Field(False, description="torch.compile the model")
    activation_checkpointing: bool = Field(False, description="recompute each transformer block's activations in "
                                           "backward instead of keeping them (less memory, ~1/3 more compute)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    clip_grad: float = Field(1.0, ge=0, description="max global grad norm; 0 disables clipping")
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(200, gt=0, description="validation loss every N steps (and at the end)")
    eval_batches: int = Field(20, gt=0, description="validation batches, each of a global batch's rows (batch_size × "
                              "grad_accum × processes), so the validation set is the same on any number of processes")
    checkpoint_every: int = Field(200, gt=0)
    keep_checkpoints: int = Field(2, gt=0, description="how many of the latest checkpoints to keep")
    max_bad_steps: int = Field(20, gt=0, description="consecutive non-finite losses before the run stops")
    peak_tflops: float | None = Field(None, gt=0, description="device peak for MFU; measured once if unset")
    device_watts: float | None = Field(None, gt=0, description="nominal power of one device for the energy "
                                       "estimate (default: a GPU's board power from a table, or 10 W per CPU thread)")


class OptimConfig(Section):
    name: Literal["adamw", "lamb", "lars"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="never applied to 1-D parameters (biases, norms)")
    betas: tuple[Decay, Decay] = Field(
        (0.9, 0.95), description="AdamW and LAMB: decay rates of the gradient's first and second moments")
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="LARS momentum")
    trust_coefficient: float = Field(0.001, gt=0, description="LARS trust coefficient")


class SchedConfig(Section):
    name: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr for cosine and wsd")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps spent decaying at the end")


class MLMConfig(Section):
    p: float = Field(0.15, gt=0, lt=1, description="share of non-special tokens chosen for prediction")
    whole_word: bool = Field(False, description="choose all tokens of a word together")


class PLMConfig(Section):
    p: float = Field(1 / 6, gt=0, lt=1, description="share of tokens predicted: the last 1/K of each factorisation "
                     "order (K = 6 in XLNet)")
    max_span: int = Field(5, ge=1, description="longest span of consecutive tokens predicted together")


class SimCSEConfig(Section):
    mask_p: float = Field(0.0, ge=0, lt=1, description="besides dropout (model.dropout), each of the two views "
                          "masks this share of tokens as MLM does (0: SimCSE's dropout-only views)")
    crop: float = Field(0.0, ge=0, lt=1, description="an option beyond SimCSE, Contriever's independent cropping "
                        "(Izacard et al. 2021): each view is a random contiguous span of this share of the text, "
                        "drawn independently per view (0: SimCSE's whole text)")


class ViewsConfig(Section):
    crop_scale: tuple[Area, Area] = Field((0.2, 1.0), description="global crops: area range of RandomResizedCrop")
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter: tuple[NonNegative, NonNegative, NonNegative, Annotated[float, Field(ge=0, le=0.5)]] = Field(
        (0.4, 0.4, 0.4, 0.1), description="color jitter strengths: brightness, contrast, saturation, hue (at most "
        "0.5)")
    jitter_p: float = Field(0.8, ge=0, le=1)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: tuple[Probability, Probability] = Field((0.5, 0.5), description="Gaussian blur probability of global "
                                                    "view 1, 2 (BYOL: 1.0, 0.1)")
    solarize_p: tuple[Probability, Probability] = Field((0.0, 0.0), description="solarize probability of global "
                                                        "view 1, 2 (BYOL: 0.0, 0.2)")
    local_crops: int = Field(0, ge=0, description="multi-crop (DINO, SwAV): number of small local crops")
    local_size: int = Field(0, ge=0, description="side of local crops (0: 3/7 of image.size, as 96/224)")
    local_scale: tuple[Area, Area] = Field((0.05, 0.4), description="local crops: area range")


class SSLConfig(Section):
    temperature: float = Field(0.2, gt=0, description="softmax temperature of contrastive and swapped losses")
    momentum: float = Field(0.99, ge=0, le=1, description="EMA of the momentum encoder/teacher (MoCo v2: constant; "
                            "MoCo v3, BYOL, DINO: start of a cosine schedule to 1); unless set, capped at a teacher "
                            "half-life of half of train.max_steps (budget.py)")
    queue_size: int = Field(4096, gt=0, description="MoCo v2: negative keys kept")
    proj_hidden: int = Field(2048, gt=0, description="projection MLP hidden width (also the DINO head's)")
    proj_dim: int = Field(128, gt=0, description="projection output (the embedding the loss or the DeepCluster "
                          "classifier sees)")
    pred_hidden: int = Field(512, gt=0, description="BYOL, MoCo v3: predictor MLP hidden width")
    collapse_every: int = Field(50, gt=0, description="steps between collapse-monitor readings (std, RankMe, "
                                "alignment, uniformity)")


class DINOConfig(Section):
    out_dim: int = Field(4096, gt=0, description="prototypes of the DINO head (65536 in the paper)")
    bottleneck: int = Field(256, gt=0, description="L2-normalised bottleneck before the last layer")
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.04, gt=0, description="teacher temperature after warm-up")
    warmup_teacher_temp: float = Field(0.04, gt=0, description="teacher temperature at step 0")
    teacher_temp_warmup_steps: int = Field(0, ge=0, description="linear warm-up of the teacher temperature; unless "
                                           "set, at most 30% of train.max_steps (budget.py)")
    center_momentum: float = Field(0.9, ge=0, lt=1)
    freeze_last_layer_steps: int = Field(0, ge=0, description="the last layer gets no update for this many steps; "
                                         "unless set, at most a third of train.max_steps (budget.py)")
    head_bn: bool = Field(False, description="BatchNorm in the head's hidden layers (DINO's use_bn_in_head, its "
                          "ResNet setting): keeps small-data runs from collapsing to a uniform teacher")


class MAEConfig(Section):
    mask_ratio: float = Field(0.75, gt=0, lt=1)
    norm_pix_loss: bool = Field(True, description="targets are each patch's pixels normalised by its own mean/var")
    decoder_dim: int = Field(128, gt=0)
    decoder_depth: int = Field(2, gt=0)
    decoder_heads: int = Field(4, gt=0)


class BEiTConfig(Section):
    mask_ratio: float = Field(0.4, gt=0, lt=1, description="share of patches masked block-wise")
    codebook_size: int = Field(512, gt=1, description="visual tokens: k-means centroids of normalised patches")
    codebook_images: int = Field(4096, gt=0, description="training images whose patches fit the codebook")


class SwAVConfig(Section):
    prototypes: int = Field(512, gt=1, description="(3000 in the paper for ImageNet)")
    epsilon: float = Field(0.05, gt=0, description="Sinkhorn-Knopp entropy regularisation")
    sinkhorn_iters: int = Field(3, gt=0)
    freeze_prototypes_steps: int = Field(0, ge=0, description="prototypes get no update for this many steps; unless "
                                         "set, at most a third of train.max_steps (budget.py)")


class DeepClusterConfig(Section):
    clusters: int = Field(100, gt=1, description="k of k-means (10000 in the paper for ImageNet)")
    recluster_every: int = Field(100, gt=0, description="steps between re-clusterings (the paper: every epoch); unless "
                                 "set, at most two thirds of train.max_steps (budget.py)")
    pca_dim: int = Field(64, gt=0, description="features are PCA-whitened to this many dimensions before k-means")
    kmeans_iters: int = Field(20, gt=0)


class AlignConfig(Section):
    modality: Literal["image", "audio", "video"] = Field("image", description="what the text is paired with: the "
                                                          "key of a pair in the data")
    embed_dim: int = Field(256, gt=0, description="the joint embedding both towers project to (not given, with "
                           "align.media_proj=false: model.dim)")
    logit_scale: float | None = Field(None, description="initial log of the logit scale (default: ln(1/0.07) for "
                                      "clip, ln 10 for siglip); learned")
    max_logit_scale: float = Field(100.0, gt=0, description="the learned scale is clamped to at most this")
    logit_bias: float = Field(-10.0, description="siglip: initial learned bias")
    local_loss: bool = Field(True, description="multi-process: each rank scores its own rows against all gathered "
                             "features (open_clip's local_loss)")
    gather_with_grad: bool = Field(True, description="multi-process: gradients flow back through the gathered "
                                   "features of other ranks (needed for the global batch's exact gradient)")
    chunk: int = Field(0, ge=0, description="siglip: text rows per block of the pairwise loss, which then never "
                       "holds the whole batch x batch matrix (0: in one piece)")
    media_proj: bool = Field(True, description="a linear projection from the media tower to the joint embedding; "
                             "false: the tower's pooled features are the embedding (SigLIP's vision tower; "
                             "align.embed_dim must equal model.dim)")
    text_proj_bias: bool = Field(False, description="the text tower's projection has a bias (SigLIP's text head)")
    attend_padding: bool = Field(False, description="the text tower attends to the padding of captions padded to "
                                 "text.context (SigLIP, trained without an attention mask)")


class HuBERTConfig(Section):
    clusters: int = Field(100, gt=1, description="k-means targets (HuBERT's first iteration: 100 on MFCCs)")
    kmeans_frames: int = Field(50_000, gt=0, description="training frames the k-means is fitted on")
    mask_prob: float = Field(0.08, gt=0, lt=1, description="share of tokens that start a masked span")
    mask_length: int = Field(10, ge=1, description="tokens per masked span")
    temperature: float = Field(0.1, gt=0, description="of the cosine logits against the cluster embeddings")
    proj_dim: int = Field(256, gt=0, description="projection and cluster-embedding width")
    targets: Literal["log-mel", "mfcc"] = Field("log-mel", description="what the k-means units cluster, per token: "
                                                "its stacked log-mel frames, or (the paper's first iteration) their "
                                                "39 MFCCs, 13 liftered cepstra with deltas and delta-deltas: the "
                                                "spectral envelope (formants), the overall level weighing little")


class HybridTerm(Section):
    objective: Part = Field(description="text: mlm, plm, simcse; images: simclr, mocov2, mocov3, byol, dino, mae, "
                            "beit, swav, deepcluster")
    weight: float = Field(1.0, ge=0, description="the term's weight at step 0")
    final_weight: float | None = Field(None, ge=0, description="its weight at the last step (default: weight); "
                                       "in between it follows hybrid.schedule")
    overrides: dict[str, Any] = Field({}, description="config keys for this term alone, e.g. {views.jitter_p: 0.0}; "
                                      f"only the sections {', '.join(TERM_SECTIONS)}")


class HybridConfig(Section):
    terms: list[HybridTerm] = Field([], description="objective: hybrid: the objectives trained together on one "
                                    "backbone; the loss is Σ weight × (each term's mean loss). Each term is {objective, "
                                    "weight (at step 0), final_weight (at the end; default: weight), overrides: {key: "
                                    "value} for this term alone, e.g. views.jitter_p: 0.0}")
    schedule: Literal["linear", "cosine"] = Field("cosine", description="how each weight moves from weight to "
                                                  "final_weight over train.max_steps")


class DistConfig(Section):
    strategy: Literal["ddp", "fsdp", "hsdp"] = Field("ddp", description="ddp: replicas, gradients averaged; fsdp: "
                                                     "parameters, gradients and optimizer state sharded (FSDP2, per "
                                                     "transformer block); hsdp: fsdp within a machine, replicated "
                                                     "across machines")
    nproc_per_node: int = Field(1, ge=1, description="worker processes per machine; above 1 (or with dist.nnodes above "
                                "1) `selfsup train` starts them itself through torch's elastic launcher. Under "
                                "torchrun the standard environment decides instead")
    nnodes: int = Field(1, ge=1, description="machines in the run (each runs the same command)")
    node_rank: int = Field(0, ge=0, description="this machine's index among dist.nnodes")
    rdzv_endpoint: str = Field("127.0.0.1:29500", description="host:port of the rendezvous (the first machine)")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: NCCL on GPUs, gloo on CPUs")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field("none", description="optim.lr is for dist.base_batch "
                                                          "samples per step; the global batch scales it by this rule")
    base_batch: int | None = Field(None, gt=0, description="the global batch optim.lr was tuned for (default: one "
                                   "process's train.batch_size × train.grad_accum)")


class ContinualConfig(Section):
    data: str | None = Field(None, description="continue a finished run on a new data stream: `selfsup train "
                             "RUN_DIR continual.data=NEW` starts a new run directory (out_dir, default RUN_DIR-continual) "
                             "from RUN_DIR's final weights (model and heads; a fresh optimizer), tokenizer and image "
                             "normalisation; its lr schedule starts again at step 0 (sched.warmup_steps of warm-up, "
                             "then decay over train.max_steps, the continued phase's steps)")
    replay: float = Field(0.0, ge=0, lt=1, description="share of every batch's rows drawn from the old domain's "
                          "training data (continual.old_data), exact to one row per process over the run")
    parent: str | None = Field(None, description="set automatically: the run directory this run continues")
    old_data: str | None = Field(None, description="the old domain: the replay stream (continual.replay), validated on "
                                 "as training goes (forgetting as it happens) and the old domain of `selfsup eval "
                                 "RUN_DIR --task forgetting`. Set automatically to the parent's data.path by "
                                 "continual.data; with model.init, data of the imported model's old domain, given by "
                                 "you (selfsup cannot know what it was trained on)")


class LogConfig(Section):
    to: list[Literal["tensorboard", "wandb", "mlflow", "csv"]] = Field(
        [], description="where else each record of metrics.jsonl goes, e.g. [tensorboard,wandb]: tensorboard "
        "(RUN/tensorboard), wandb (W&B; WANDB_MODE=offline writes under RUN/wandb for `wandb sync`), mlflow "
        "(MLFLOW_TRACKING_URI, default the file store RUN/mlruns), csv (RUN/metrics.csv); needs `pip install "
        "'selfsup[log]'`. A logger that fails warns once and the run goes on without it")

    @field_validator("to", mode="before")
    @classmethod
    def _one_name(cls, value: Any) -> Any:
        """log.to=wandb: a single name is a list of one."""
        return [value] if isinstance(value, str) else value


class ProbeConfig(Section):
    train: str | None = Field(None, description="online probes: labeled training data in any form `selfsup eval --task "
                              "knn` reads (a folder of class sub-folders for images, audio and video; a .jsonl with "
                              "'text' and 'label' for text); with probe.test, every probe.every steps (and at the end) "
                              "the frozen features of the model in training are scored by kNN, logged as probe_knn_acc")
    test: str | None = Field(None, description="online probes: the labeled data scored (classes as in probe.train)")
    every: int = Field(500, gt=0, description="probe every N steps (and at the end)")
    linear: bool = Field(False, description="also a linear probe (logistic regression, eval's protocol) on the same "
                         "features, logged as probe_linear_acc")
    keep_best: bool = Field(False, description="keep the weights of the best probe (kNN accuracy, or the linear "
                            "probe's with probe.linear) in RUN_DIR/best/ with best.json naming the step; apart from "
                            "checkpoints/, so rotation never removes it; `selfsup eval RUN_DIR/best` opens it")
    k: int = Field(20, gt=0, description="kNN: the nearest training examples that vote (eval's default)")
    temperature: float = Field(0.07, gt=0, description="kNN: each neighbour votes exp(cos / T) (eval's default)")
    batch_size: int = Field(16, gt=0, description="items per forward pass when encoding the probe sets")

    @model_validator(mode="after")
    def _both_sets(self) -> ProbeConfig:
        if bool(self.train) != bool(self.test):
            given, missing = ("train", "test") if self.train else ("test", "train")
            raise ValueError(f"probe.{given} is set but probe.{missing} is not: an online probe needs both labeled "
                             "sets (e.g. probe.train=labeled/train probe.test=labeled/test)")
        return self


class RunConfig(Section):
    recipe: str = Field("custom", description="the recipe this run started from (informative)")
    objective: Objective = Field("clm", description="text: clm (GPT), mlm (BERT), plm (XLNet), simcse; images: "
                                 "simclr, mocov2, mocov3, byol, dino, mae, beit, swav, deepcluster; pairs with text: "
                                 "clip, siglip; audio: hubert; hybrid: the objectives of hybrid.terms on one backbone")
    out_dir: str = Field("", description="run directory (default runs/<recipe>)")
    seed: int = 0
    data: DataConfig = DataConfig()
    image: ImageConfig = ImageConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    sched: SchedConfig = SchedConfig()
    mlm: MLMConfig = MLMConfig()
    plm: PLMConfig = PLMConfig()
    views: ViewsConfig = ViewsConfig()
    ssl: SSLConfig = SSLConfig()
    dino: DINOConfig = DINOConfig()
    mae: MAEConfig = MAEConfig()
    beit: BEiTConfig = BEiTConfig()
    swav: SwAVConfig = SwAVConfig()
    deepcluster: DeepClusterConfig = DeepClusterConfig()
    align: AlignConfig = AlignConfig()
    text: ModelConfig = Field(ModelConfig(dim=256, depth=4, heads=4, context=32, vocab_size=4096, mlp="gelu",
                                          norm="layernorm", pooling="mean"),
                              description="clip, siglip: the text tower (a bidirectional transformer)")
    audio: AudioConfig = AudioConfig()
    video: VideoConfig = VideoConfig()
    hubert: HuBERTConfig = HuBERTConfig()
    simcse: SimCSEConfig = SimCSEConfig()
    hybrid: HybridConfig = HybridConfig()
    dist: DistConfig = DistConfig()
    continual: ContinualConfig = ContinualConfig()
    log: LogConfig = LogConfig()
    probe: ProbeConfig = ProbeConfig()
    fitted: list[str] = Field([], description="written by selfsup: the step-count settings of momentum and "
                              "clustering objectives that neither the command line nor a YAML file set, fitted to "
                              "train.max_steps (budget.py), each as 'key=value (why)'; informative")

    @model_validator(mode="after")
    def _default_out_dir(self) -> RunConfig:
        if not self.out_dir:
            self.out_dir = f"runs/{self.recipe}"
        return self

    @model_validator(mode="after")
    def _image_fits_patches(self) -> RunConfig:
        if self.objective in ("mae", "beit") and self.model.backbone != "vit":
            raise ValueError(f"objective '{self.objective}' masks patches: it needs model.backbone=vit "
                             f"(got {self.model.backbone})")
        pixels = self.modality in ("image", "video")
        if pixels and self.model.backbone == "vit" and self.image.size % self.model.patch:
            raise ValueError(f"image.size ({self.image.size}) must be a multiple of model.patch ({self.model.patch})")
        if self.video.cache_frames % self.video.frames:
            raise ValueError(f"video.cache_frames ({self.video.cache_frames}) must be a multiple of video.frames "
                             f"({self.video.frames}): each of the frames samples from its own segment")
        for key in ("mean", "std"):
            value = getattr(self.image, key)
            if pixels and value is not None and len(value) != self.image.channels:
                raise ValueError(f"image.{key} has {len(value)} values; expected one per channel "
                                 f"(image.channels={self.image.channels})")
        return self

    @model_validator(mode="after")
    def _trunk_options(self) -> RunConfig:
        """Options that shape a transformer (or the text trunk alone) are refused where they would be ignored
        without a word."""
        m, default = self.model, ModelConfig()
        changed = [k for k in (*TRANSFORMER_OPTIONS, *TEXT_TRUNK_OPTIONS, *VIT_OPTIONS)
                   if getattr(m, k) != getattr(default, k) and not (k == "kv_heads" and m.kv_heads == m.heads)]
        resnet = self.modality in ("image", "video") and m.backbone != "vit"
        pixels = self.modality in ("image", "video")
        vit = pixels and m.backbone == "vit"
        given = [k for k in changed if k in TEXT_TRUNK_OPTIONS and self.modality != "text"
                 and not (vit and k in VIT_OPTIONS) or resnet or k in VIT_OPTIONS and k not in TEXT_TRUNK_OPTIONS
                 and not pixels]
        if given:
            shapes = {"tied": "the text trunk", "learned_positions": "the text trunk or a ViT",
                      "embed_norm": "a ViT (text.embed_norm: the text tower of clip/siglip)",
                      "position_grid": "a ViT"}.get(given[0], "the text trunk" if given[0] in TEXT_TRUNK_OPTIONS
                                                    else "a transformer")
            backbone = f" with model.backbone={m.backbone}" if resnet else ""
            raise ValueError(f"model.{given[0]} shapes {shapes}; this run's modality is {self.modality}{backbone}")
        if m.position_grid is not None and not (vit and m.learned_positions):
            raise ValueError(f"model.position_grid={m.position_grid} sizes a ViT's learned position table; expected "
                             "model.backbone=vit with model.learned_positions=true")
        if changed and "plm" in self.parts:
            raise ValueError(f"model.{changed[0]}={getattr(m, changed[0])}: xlnet-plm's two-stream attention needs "
                             f"the trunk's defaults (model.{changed[0]}={getattr(default, changed[0])})")
        if m.local_attention is not None and self.causal:
            raise ValueError(f"model.local_attention={m.local_attention} is the bidirectional window of an encoder's "
                             "local layers (ModernBERT); objective clm is a causal decoder")
        windowed = m.local_attention is not None
        for key, fits in (("global_every", windowed), ("local_rope_theta", windowed and not m.learned_positions)):
            if key in changed and not fits:
                raise ValueError(f"model.{key}={getattr(m, key)} shapes the local layers of an encoder: expected "
                                 "model.local_attention set" + (" and rotary positions (model.learned_positions="
                                                               "false)" if key == "local_rope_theta" else ""))
        if not m.tied and self.parts != ["clm"]:
            raise ValueError(f"model.tied=false gives the GPT decoder (objective clm) an output head of its own; "
                             f"objective {self.objective} ties its head to the embedding")
        return self

    @model_validator(mode="after")
    def _audio_positions(self) -> RunConfig:
        a = self.audio
        if self.modality == "audio" and a.positions == "conv" and self.model.dim % a.conv_position_groups:
            raise ValueError(f"audio.conv_position_groups={a.conv_position_groups} must divide model.dim "
                             f"({self.model.dim})")
        return self

    @model_validator(mode="after")
    def _tower_options(self) -> RunConfig:
        """The text tower's options (causal attention, pooling at the last token) and the ViT's attention pooling
        (map) where they apply; a media tower without projection has the joint embedding's width."""
        m, image_pairs = self.model, self.pairs and self.align.modality == "image" and self.model.backbone == "vit"
        if m.causal:
            raise ValueError("model.causal shapes the text tower of clip/siglip (text.causal); the GPT decoder is "
                             "causal and the other trunks bidirectional by construction")
        if m.pooling == "map" and not image_pairs:
            raise ValueError(f"model.pooling=map pools a ViT without class token for clip/siglip on images; this run "
                             f"is objective {self.objective} on {self.modality} with model.backbone={m.backbone}")
        if m.pooling == "last" and self.modality != "text":
            raise ValueError(f"model.pooling=last pools a text trunk; this run's modality is {self.modality}")
        if self.text.pooling == "map":
            raise ValueError("text.pooling=map pools a ViT; expected cls, mean or last for the text tower")
        if self.pairs and not self.align.media_proj and "embed_dim" not in self.align.model_fields_set:
            self.align.embed_dim = m.dim  # the media tower's features are the embedding: its width, unless given
        if self.pairs and not self.align.media_proj and self.align.embed_dim != m.dim:
            raise ValueError(f"align.media_proj=false makes the media tower's features (model.dim={m.dim}) the joint "
                             f"embedding; expected align.embed_dim={m.dim} (got {self.align.embed_dim})")
        return self

    @model_validator(mode="after")
    def _hybrid_terms(self) -> RunConfig:
        terms = self.hybrid.terms
        if self.objective != "hybrid":
            return self
        names = [t.objective for t in terms]
        if len(terms) < 2:
            raise ValueError(f"objective 'hybrid' needs at least two hybrid.terms (got {len(terms)}); expected e.g. "
                             "[{objective: mae, weight: 1.0}, {objective: simclr, weight: 0.5}]")
        if len(set(names)) < len(names):
            raise ValueError(f"hybrid.terms name an objective twice ({', '.join(names)}); expected each once")
        text = [n in ENCODER_TEXT_OBJECTIVES for n in names]
        if any(text) and not all(text):
            raise ValueError(f"hybrid.terms mix text and image objectives ({', '.join(names)}); one backbone reads "
                             f"one modality: expected all of {', '.join(ENCODER_TEXT_OBJECTIVES)} or all image "
                             "objectives")
        for i in range(len(terms)):
            self.term_config(i)  # its overrides fail here, not after the data is prepared
        return self

    def term_config(self, i: int) -> RunConfig:
        """The config hybrid term i is built from: this one with the term's objective and overrides."""
        term = self.hybrid.terms[i]
        tree = self.model_dump(exclude={"hybrid"})
        tree["objective"] = term.objective
        for key, value in term.overrides.items():
            if key.split(".")[0] not in TERM_SECTIONS or key not in all_keys():
                raise ValueError(f"hybrid.terms[{i}].overrides: '{key}' is not a key a term may set; expected a key "
                                 f"of {', '.join(TERM_SECTIONS)} (the backbone, data and training are shared)")
            _set(tree, key, value)
        try:
            return RunConfig.model_validate(tree)
        except ValidationError as e:
            err = e.errors()[0]
            key = _dotted(err["loc"])
            where = f"{key}: expected " if key else ""
            raise ValueError(f"hybrid.terms[{i}] ({term.objective}): {where}{_expected(err)}") from None

    @property
    def parts(self) -> list[str]:
        """The objectives this run trains: one, or a hybrid's terms."""
        return [t.objective for t in self.hybrid.terms] if self.objective == "hybrid" else [self.objective]

    @property
    def is_image(self) -> bool:
        return all(p in IMAGE_OBJECTIVES for p in self.parts)

    @property
    def causal(self) -> bool:
        """Trains a causal language model (it can generate, and score perplexity)."""
        return self.objective == "clm"

    @property
    def pairs(self) -> bool:
        """Trains on media-text pairs: a media tower aligned with a text tower."""
        return self.objective in PAIR_OBJECTIVES

    @property
    def normalisation(self) -> AudioConfig | ImageConfig:
        """The section that holds this run's normalisation statistics: audio.* for audio runs, image.* otherwise."""
        return self.audio if self.modality == "audio" else self.image

    def with_measured(self, mean: list[float] | float, std: list[float] | float) -> RunConfig:
        """A copy whose normalisation section takes the statistics measured on the training data, rounded to 4
        places, where the config leaves them unset: the resolved config a run builds its objective from, writes to
        config.yaml, and evaluation reads back."""
        section = self.normalisation
        key = "audio" if section is self.audio else "image"
        if section.mean is not None and section.std is not None:
            return self
        rounded = ((round(mean, 4), round(std, 4)) if key == "audio"
                   else ([round(v, 4) for v in mean], [round(v, 4) for v in std]))
        measured = section.model_copy(update=dict(zip(("mean", "std"), rounded)))
        return self.model_copy(update={key: measured})

    def fitted_to_steps(self, explicit: set[str]) -> RunConfig:
        """A copy whose step-count settings (budget.RULES) that `explicit` does not name, and this run's objectives
        read, follow train.max_steps; each is recorded in `fitted` with why."""
        tree, notes = self.model_dump(), []
        for key, objectives, rule in budget.RULES:
            section, name = key.split(".")
            fit = None if key in explicit or not set(objectives) & set(self.parts) else \
                rule(tree[section][name], self.train.max_steps)
            if fit is not None:
                tree[section][name] = fit[0]
                notes.append(f"{key}={fit[0]:g} ({fit[1]})")
        tree["fitted"] = notes
        return RunConfig.model_validate(tree)

    def fitted_as(self, started: RunConfig) -> RunConfig:
        """A copy whose fitted settings are those of the run `started` (config.yaml): a resumed run keeps what was
        fitted to its length when it started, whatever train.max_steps is now."""
        tree = self.model_dump()
        for line in self.fitted:
            section, name = line.partition("=")[0].split(".")
            tree[section][name] = getattr(getattr(started, section), name)
        tree["fitted"] = started.fitted
        return RunConfig.model_validate(tree)

    @property
    def modality(self) -> str:
        """What the trained trunk reads: text, image, audio or video."""
        if self.is_image:
            return "image"
        if self.objective in PAIR_OBJECTIVES:
            return self.align.modality
        return "audio" if self.objective in AUDIO_OBJECTIVES else "text"


# ----------------------------------------------------------------------------------------------- recipes

def recipe_files() -> dict[str, Path]:
    """Built-in recipes by name (file stem): the CPU-sized ones in recipes/, the paper-scale ones in recipes/scale/."""
    folder = resources.files("selfsup") / "recipes"
    return {Path(f.name).stem: Path(str(f)) for sub in (folder, folder / "scale") for f in sub.iterdir()
            if f.name.endswith(".yaml")}


def paper_scale(path: Path) -> bool:
    """A recipe at the size of its paper (recipes/scale/), for many accelerators, rather than for a laptop CPU."""
    return path.parent.name == "scale"


def recipe_summary(path: Path) -> str:
    """The first comment line of a recipe: what it trains."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


# ------------------------------------------------------------------------------------------------ loading

def all_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key a user may set, e.g. 'train.max_steps'."""
    keys = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += all_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def parse_override(text: str) -> tuple[str, Any]:
    """'train.max_steps=100' -> ('train.max_steps', 100); values are read as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. train.max_steps=100)")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[leaf] = value


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else " (see `selfsup train --help` for the keys)"
    return f"unknown config key '{key}'{hint}"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def validate(tree: dict) -> RunConfig:
    """Build a RunConfig from a nested dict, turning the first problem into one clear line."""
    valid = set(all_keys())
    sections = {k.split(".")[0] for k in valid if "." in k}
    for key in _flatten(tree):
        if key not in valid and key not in sections:
            raise ConfigError(_unknown_key_message(key))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "value_error":  # a cross-field rule: its message names the keys itself
            raise ConfigError(_expected(err)) from None
        key = _dotted(err["loc"]) or "config"
        given = _lookup(tree, err["loc"])
        given_text = f"got {given!r}; " if given is not None else ""
        raise ConfigError(f"config key '{key}': {given_text}expected {_expected(err)}") from None


def _dotted(loc: tuple) -> str:
    """('hybrid', 'terms', 0, 'objective') -> 'hybrid.terms[0].objective'."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _lookup(tree: dict, loc: tuple) -> Any:
    node: Any = tree
    for p in loc:
        if isinstance(p, int) and isinstance(node, list) and p < len(node):
            node = node[p]
        elif isinstance(node, dict) and p in node:
            node = node[p]
        else:
            return None
    return node


def _expected(err: dict) -> str:
    """Pydantic's message, phrased as what is expected."""
    msg = err["msg"]
    for prefix in ("Input should be ", "Value error, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def load_yaml(path: Path) -> dict:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return tree


def load(source: str, overrides: list[str] = ()) -> RunConfig:
    """A recipe name, a YAML file or a run directory, then `key=value` overrides applied in order."""
    recipes = recipe_files()
    path = Path(source)
    explicit: set[str] | None = set()  # the keys the user set, whose values are never fitted to the run's length
    if source in recipes:
        tree = load_yaml(recipes[source])
        tree.setdefault("recipe", source)
    elif path.is_dir() and (path / "config.yaml").is_file():
        tree = load_yaml(path / "config.yaml")
        tree["out_dir"] = str(path)
        explicit = None  # a run's config.yaml: fitted when it started
    elif path.is_file():
        tree = load_yaml(path)
        tree.setdefault("recipe", path.stem)
        explicit = set(_flatten(tree))
    else:
        close = difflib.get_close_matches(source, list(recipes), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"'{source}' is neither a built-in recipe ({', '.join(sorted(recipes))}), a YAML file "
                          f"nor a run directory with config.yaml; {hint}see `selfsup recipes`")
    for text in overrides:
        key, value = parse_override(text)
        if key not in all_keys():
            raise ConfigError(_unknown_key_message(key))
        _set(tree, key, value)
        if explicit is not None:
            explicit.add(key)
    cfg = validate(tree)
    return cfg if explicit is None else cfg.fitted_to_steps(explicit)


def dump(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
