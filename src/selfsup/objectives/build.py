"""The objective a config names, around a fresh backbone (one explicit branch per objective), and what it needs
of its data, read from its class before the data is made."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer
from torch import nn

from selfsup.config import ConfigError, RunConfig
from selfsup.data.read.audio import clip_frames
from selfsup.data.read.tokenizer import eos_id
from selfsup.models.audio import AudioEncoder
from selfsup.models.encoder import Encoder
from selfsup.models.gpt import GPT
from selfsup.models.resnet import ResNet
from selfsup.models.video import VideoEncoder
from selfsup.models.vit import ViT
from selfsup.objectives.beit import BEiT
from selfsup.objectives.byol import BYOL
from selfsup.objectives.clip import CLIP
from selfsup.objectives.clm import CausalLM
from selfsup.objectives.contract import Objective
from selfsup.objectives.deepcluster import DeepCluster
from selfsup.objectives.dino import DINO
from selfsup.objectives.hubert import HuBERT, LogMel
from selfsup.objectives.hybrid import Hybrid
from selfsup.objectives.mae import MAE
from selfsup.objectives.mlm import MaskedLM
from selfsup.objectives.mocov2 import MoCoV2
from selfsup.objectives.mocov3 import MoCoV3
from selfsup.objectives.plm import PermutationLM
from selfsup.objectives.siglip import SigLIP
from selfsup.objectives.simclr import SimCLR
from selfsup.objectives.simcse import SimCSE
from selfsup.objectives.swav import SwAV
from selfsup.views.augment import Augment, MultiView
from selfsup.views.masking import MaskingTable
from selfsup.views.media import AudioView, ImageView, VideoView


@dataclass(frozen=True)
class DataNeeds:
    """What a run's objective needs of its data (see objectives/contract.py)."""
    window_overlap: int  # text windows hold model.context + this many tokens
    fits_on_data: bool  # the builder is handed the training rows (images, clips) to fit on
    streams: bool  # it can train from streamed shards
    validates: bool  # it has a held-out loss


def objective_class(name: str) -> type[Objective]:
    return {"clm": CausalLM, "mlm": MaskedLM, "plm": PermutationLM, "simcse": SimCSE, "simclr": SimCLR,
            "mocov2": MoCoV2, "mocov3": MoCoV3, "byol": BYOL, "dino": DINO, "mae": MAE, "beit": BEiT, "swav": SwAV,
            "deepcluster": DeepCluster, "clip": CLIP, "siglip": SigLIP, "hubert": HuBERT}[name]


def objective_classes(cfg: RunConfig) -> list[type[Objective]]:
    """The classes of the objectives a run trains: one, or a hybrid's terms."""
    return [objective_class(name) for name in cfg.parts]


def data_needs(cfg: RunConfig) -> DataNeeds:
    """A hybrid's terms read one batch: its windows are its first term's, and it needs what any term needs."""
    parts = objective_classes(cfg)
    return DataNeeds(window_overlap=parts[0].window_overlap, fits_on_data=any(c.fits_on_data for c in parts),
                     streams=all(c.streams for c in parts), validates=all(c.validates for c in parts))


def build_objective(cfg: RunConfig, tok: Tokenizer | None = None, images: np.ndarray | None = None,
                    backbone: nn.Module | None = None,
                    clips: tuple[np.ndarray, np.ndarray] | None = None) -> Objective:
    """tok: the tokenizer (text objectives, and the text tower of clip/siglip); images: the training images
    (N, C, H, W) uint8, which DeepCluster clusters and BEiT fits its codebook on (None when opening a trained run);
    backbone: any module mapping images (B, C, H, W) to features (B, D) with an `out_dim` attribute, instead of
    the configured one (from Python), or the text encoder to build around; clips: the training log-mel clips (N, M, F) and their real frames (N,),
    which HuBERT fits its units on."""
    if cfg.objective == "hybrid":
        return _hybrid(cfg, tok, images, backbone)
    if cfg.pairs:
        return _pair_objective(cfg, tok, backbone)
    if cfg.objective == "hubert":
        h = cfg.hubert
        encoder, view = media_tower(cfg, "audio")
        rows, lengths = clips if clips is not None else (None, None)
        a = cfg.audio
        mel = LogMel(a.sample_rate, a.n_mels, a.n_fft, a.hop) if a.input == "waveform" else None
        return HuBERT(encoder, view, h.clusters, h.kmeans_frames, h.mask_prob, h.mask_length, h.temperature,
                      h.proj_dim, rows, lengths, cfg.seed, mel, h.targets)
    if not cfg.is_image:
        return _text_objective(cfg, tok, backbone)
    if cfg.image.mean is None or cfg.image.std is None:
        raise ValueError("image.mean and image.std must be resolved (measured on the data) before building")
    net = backbone if backbone is not None else image_backbone(cfg)
    views = image_views(cfg)
    s, mean, std = cfg.ssl, cfg.image.mean, cfg.image.std
    steps = cfg.train.max_steps
    if cfg.objective == "simclr":
        return SimCLR(net, views, s.proj_hidden, s.proj_dim, s.temperature)
    if cfg.objective == "mocov2":
        if images is not None and s.queue_size + 2 * cfg.train.batch_size > len(images):
            raise ConfigError(f"ssl.queue_size={s.queue_size} plus a step's {2 * cfg.train.batch_size} keys exceeds "
                             f"the {len(images)} training images: the queue would hold keys of the very images being "
                             "contrasted, as negatives; expected a smaller ssl.queue_size (MoCo: ~5% of the data)")
        return MoCoV2(net, views, s.proj_hidden, s.proj_dim, s.temperature, s.momentum, s.queue_size)
    if cfg.objective == "mocov3":
        return MoCoV3(net, views, s.proj_hidden, s.proj_dim, s.pred_hidden, s.temperature, s.momentum, steps)
    if cfg.objective == "byol":
        return BYOL(net, views, s.proj_hidden, s.proj_dim, s.pred_hidden, s.momentum, steps)
    if cfg.objective == "dino":
        d = cfg.dino
        return DINO(net, views, d.out_dim, s.proj_hidden, d.bottleneck, d.student_temp, d.teacher_temp,
                    d.warmup_teacher_temp, d.teacher_temp_warmup_steps, d.center_momentum, s.momentum,
                    d.freeze_last_layer_steps, steps, d.head_bn)
    if cfg.objective == "swav":
        w = cfg.swav
        return SwAV(net, views, s.proj_hidden, s.proj_dim, w.prototypes, s.temperature, w.epsilon, w.sinkhorn_iters,
                    w.freeze_prototypes_steps)
    if cfg.objective == "deepcluster":
        d = cfg.deepcluster
        return DeepCluster(net, views, s.proj_hidden, s.proj_dim, d.clusters, d.recluster_every, d.pca_dim,
                           d.kmeans_iters, images, mean, std, cfg.seed)
    if not isinstance(net, ViT):
        raise ValueError(f"objective '{cfg.objective}' masks patches: it needs model.backbone=vit")
    if cfg.objective == "mae":
        m = cfg.mae
        return MAE(net, views, cfg.image.channels, m.mask_ratio, m.norm_pix_loss, m.decoder_dim, m.decoder_depth,
                   m.decoder_heads)
    if cfg.objective == "beit":
        b = cfg.beit
        return BEiT(net, views, b.mask_ratio, b.codebook_size, b.codebook_images, images, mean, std, cfg.seed)
    raise ValueError(f"objective '{cfg.objective}' has no builder")


def _hybrid(cfg: RunConfig, tok: Tokenizer | None, images: np.ndarray | None,
            backbone: nn.Module | None) -> Hybrid:
    """Each term built as its own objective around one backbone, from the config with the term's overrides."""
    if backbone is None:
        backbone = image_backbone(cfg) if cfg.is_image else Encoder(cfg.model)
    terms = {t.objective: build_objective(cfg.term_config(i), tok, images, backbone)
             for i, t in enumerate(cfg.hybrid.terms)}
    weights = [(t.weight, t.weight if t.final_weight is None else t.final_weight) for t in cfg.hybrid.terms]
    return Hybrid(backbone, terms, weights, cfg.hybrid.schedule, cfg.train.max_steps)


def _pair_objective(cfg: RunConfig, tok: Tokenizer | None, backbone: nn.Module | None) -> nn.Module:
    a = cfg.align
    media, view = media_tower(cfg, a.modality, backbone)
    text = Encoder(cfg.text)
    if tok is not None and tok.get_vocab_size() > text.vocab:
        raise ConfigError(f"the tokenizer has {tok.get_vocab_size()} tokens but text.vocab_size is "
                          f"{cfg.text.vocab_size}; expected text.vocab_size >= the tokenizer's size")
    towers = dict(media_proj=a.media_proj, text_proj_bias=a.text_proj_bias, attend_padding=a.attend_padding)
    if cfg.objective == "clip":
        return CLIP(media, view, text, a.embed_dim, a.logit_scale, a.max_logit_scale, a.local_loss,
                    a.gather_with_grad, **towers)
    return SigLIP(media, view, text, a.embed_dim, a.logit_scale, a.max_logit_scale, a.logit_bias,
                  a.gather_with_grad, a.chunk, **towers)


def media_tower(cfg: RunConfig, modality: str, backbone: nn.Module | None = None) -> tuple[nn.Module, nn.Module]:
    """The encoder of one modality and the view that feeds it cached rows (see views/media.py)."""
    if modality == "audio":
        a = cfg.audio
        if a.mean is None or a.std is None:
            raise ValueError("audio.mean and audio.std must be resolved (measured on the data) before building")
        return audio_encoder(cfg), AudioView(a.mean, a.std, a.input == "waveform")
    im, v = cfg.image, cfg.views
    if im.mean is None or im.std is None:
        raise ValueError("image.mean and image.std must be resolved (measured on the data) before building")
    net = backbone if backbone is not None else image_backbone(cfg)
    if modality == "video":
        video = cfg.video
        return (VideoEncoder(net, video.frames, video.temporal, video.temporal_depth, cfg.model),
                VideoView(video.frames, video.sampling, im.mean, im.std))
    augment = Augment(im.size, v.crop_scale, im.mean, im.std, flip_p=v.flip_p, jitter=v.jitter, jitter_p=v.jitter_p,
                      grayscale_p=v.grayscale_p, blur_p=v.blur_p[0], solarize_p=v.solarize_p[0])
    return net, ImageView(augment, im.size, im.mean, im.std)


def network(cfg: RunConfig) -> nn.Module:
    """What a config trains, built without its data (no tokenizer, images or clips, normalisation unmeasured): the
    backbone, or for clip/siglip both towers with their projections; not the objective's training-only heads. For
    counting parameters and sizing a run before it starts: under `with torch.device("meta"):` it holds no memory."""
    if cfg.pairs:  # the statistics only shift inputs: any will do
        audio = cfg.modality == "audio"
        channels = cfg.image.channels
        return _pair_objective(cfg.with_measured(0.0, 1.0) if audio else
                               cfg.with_measured([0.5] * channels, [0.25] * channels), None, None)
    if cfg.modality == "audio":
        return audio_encoder(cfg)
    if cfg.is_image:
        return image_backbone(cfg)
    return GPT(cfg.model) if cfg.causal else Encoder(cfg.model)


def audio_encoder(cfg: RunConfig) -> AudioEncoder:
    """The audio tower: over a clip's samples (audio.input=waveform) or its log-mel frames."""
    a = cfg.audio
    frames = round(a.seconds * a.sample_rate) if a.input == "waveform" else clip_frames(a.sample_rate, a.seconds, a.hop)
    return AudioEncoder(cfg.model, a.n_mels, frames, a.stride, a)


def image_backbone(cfg: RunConfig) -> nn.Module:
    if cfg.model.backbone == "vit":
        return ViT(cfg.model, cfg.image.size, cfg.image.channels)
    return ResNet(cfg.model.backbone, cfg.image.channels, cfg.model.small_stem)


def image_views(cfg: RunConfig) -> MultiView:
    """The recipe's augmentations. Masked-image and clustering objectives take one view; local crops get a side
    that is a multiple of the ViT patch."""
    v, size = cfg.views, cfg.image.size
    one_view = cfg.objective in ("mae", "beit", "deepcluster")
    local_size = v.local_size or max(cfg.model.patch * 2, round(size * 3 / 7 / cfg.model.patch) * cfg.model.patch)
    return MultiView.build(size, cfg.image.mean, cfg.image.std, global_scale=v.crop_scale,
                           blur_p=v.blur_p[:1] if one_view else v.blur_p,
                           solarize_p=v.solarize_p[:1] if one_view else v.solarize_p,
                           jitter=v.jitter, jitter_p=v.jitter_p, grayscale_p=v.grayscale_p, flip_p=v.flip_p,
                           n_local=v.local_crops, local_size=local_size, local_scale=v.local_scale)


def _text_objective(cfg: RunConfig, tok: Tokenizer, encoder: nn.Module | None = None) -> nn.Module:
    """encoder: the bidirectional trunk to build around (a hybrid's shared one), or None for a new one."""
    eos = eos_id(tok)
    if cfg.objective == "clm":
        return CausalLM(GPT(cfg.model), eos, doc_mask=cfg.data.doc_mask)
    encoder = encoder if encoder is not None else Encoder(cfg.model)
    if cfg.objective == "mlm":
        return MaskedLM(encoder, MaskingTable(tok, encoder.vocab), eos, cfg.mlm.p, cfg.mlm.whole_word,
                        doc_mask=cfg.data.doc_mask)
    if cfg.objective == "simcse":
        if not cfg.data.doc_mask:
            raise ConfigError("simcse embeds each window's longest document alone: it needs data.doc_mask=true")
        if cfg.model.dropout == 0 and cfg.simcse.mask_p == 0 and cfg.simcse.crop == 0:
            raise ConfigError("simcse's two views of a text would be identical: expected model.dropout > 0 (SimCSE: "
                              "0.1), simcse.mask_p > 0 or simcse.crop > 0")
        s = cfg.ssl
        return SimCSE(encoder, MaskingTable(tok, encoder.vocab), eos, s.proj_hidden, s.proj_dim, s.temperature,
                      cfg.simcse.mask_p, cfg.simcse.crop)
    return PermutationLM(encoder, MaskingTable(tok, encoder.vocab).special, eos, cfg.plm.p, cfg.plm.max_span,
                         doc_mask=cfg.data.doc_mask)
