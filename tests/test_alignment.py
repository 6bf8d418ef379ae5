"""Media-text alignment and audio pretraining: the CLIP and SigLIP losses (values by hand, symmetry, gradients,
the chunked and per-rank forms), the one-process gather, HuBERT's span masking, targets and objective, the audio
encoder's padding mask, the media views, the CLIP/SigLIP objectives end to end, and the media-pair data cache."""

from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup import config
from selfsup.data.cache.encode import is_val
from selfsup.data.cache.media import prepare_media
from selfsup.data.read.captions import caption_arrays
from selfsup.data.read.tokenizer import train_bpe
from selfsup.dist import gather, rank_and_world
from selfsup.models.audio import AudioEncoder
from selfsup.objectives.build import build_objective
from selfsup.objectives.hubert import mfcc, span_mask, token_frames
from selfsup.objectives.kmeans import nearest
from selfsup.objectives.pair_losses import clip_loss, siglip_loss
from selfsup.seed import seed_everything
from selfsup.views.media import AudioView, VideoView

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def _unit(*shape, seed: int, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=F64), dim=-1).to(dtype)


def _grads(fn, *tensors):
    """fn(*leaves) -> scalar; returns (value, [grad of each leaf]) on fresh leaf copies."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [leaf.grad for leaf in leaves]


# ------------------------------------------------------------------------------------------------- clip_loss

def test_clip_loss_matches_hand_computation():
    m = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    t = [[0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]]
    s = 2.5
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    L = [[s * dot(m[i], t[j]) for j in range(3)] for i in range(3)]  # media i vs text j
    total = 0.0
    for i in range(3):
        ce_media = -L[i][i] + math.log(sum(math.exp(L[i][j]) for j in range(3)))  # media i over the texts
        ce_text = -L[i][i] + math.log(sum(math.exp(L[j][i]) for j in range(3)))  # text i over the media
        total += (ce_media + ce_text) / 2
    loss, count = clip_loss(torch.tensor(m, dtype=F64), torch.tensor(t, dtype=F64), torch.tensor(math.log(s), dtype=F64))
    assert count == 3
    assert loss.item() == pytest.approx(total, rel=1e-12)


def test_clip_loss_is_symmetric_and_a_sum_over_rows():
    m, t, s = _unit(5, 8, seed=1), _unit(5, 8, seed=2), torch.tensor(1.7, dtype=F64)
    loss, count = clip_loss(m, t, s)
    swapped, _ = clip_loss(t, m, s)
    assert loss.item() == pytest.approx(swapped.item(), rel=1e-12)
    logits = s.exp() * m @ t.t()
    mean_of_directions = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5))) / 2
    assert count == 5 and loss.item() == pytest.approx(5 * mean_of_directions.item(), rel=1e-12)


def test_clip_loss_gradcheck():
    args = (_unit(3, 4, seed=3).requires_grad_(), _unit(3, 4, seed=4).requires_grad_(),
            torch.tensor(0.7, dtype=F64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda m, t, s: clip_loss(m, t, s)[0], args)


def test_clip_local_loss_over_two_ranks_sums_to_the_full_loss_and_gradients():
    m, t, s = _unit(6, 8, seed=5), _unit(6, 8, seed=6), torch.tensor(2.0, dtype=F64)
    full, full_grads = _grads(lambda m, t, s: clip_loss(m, t, s)[0], m, t, s)
    total, grads, counts = 0.0, [torch.zeros_like(x) for x in (m, t, s)], 0
    for rank in range(2):  # each "rank" scores its own 3 rows against all 6 (gathered with gradient)
        rows = slice(3 * rank, 3 * rank + 3)

        def local(m, t, s, rows=rows, rank=rank):
            loss, count = clip_loss(m[rows], t[rows], s, all_media=m, all_text=t, offset=3 * rank)
            assert count == 3
            return loss

        value, g = _grads(local, m, t, s)
        total += value.item()
        grads = [a + b for a, b in zip(grads, g)]
        counts += 3
    assert counts == 6
    assert total == pytest.approx(full.item(), rel=1e-12)
    for a, b in zip(grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------- siglip_loss

def test_siglip_loss_matches_hand_computation():
    m = [[1.0, 0.0], [0.6, 0.8]]
    t = [[0.8, 0.6], [0.0, 1.0]]
    s, b = 3.0, -1.5
    total = 0.0
    for i in range(2):
        for j in range(2):
            z = 1.0 if i == j else -1.0
            logit = s * (m[i][0] * t[j][0] + m[i][1] * t[j][1]) + b
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    for chunk in (0, 1):
        loss, count = siglip_loss(torch.tensor(m, dtype=F64), torch.tensor(t, dtype=F64),
                                  torch.tensor(math.log(s), dtype=F64), torch.tensor(b, dtype=F64), chunk=chunk)
        assert count == 2
        assert loss.item() == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize("B,chunk", [(4, 1), (4, 2), (4, 5), (7, 3)])
def test_siglip_chunked_equals_whole_in_loss_and_gradients(B, chunk):
    m, t = _unit(B, 6, seed=7), _unit(B, 6, seed=8)
    s, b = torch.tensor(1.3, dtype=F64), torch.tensor(-2.0, dtype=F64)
    whole, whole_grads = _grads(lambda *a: siglip_loss(*a)[0], m, t, s, b)
    chunked, chunked_grads = _grads(lambda *a: siglip_loss(*a, chunk=chunk)[0], m, t, s, b)
    assert abs(whole.item() - chunked.item()) < 1e-10
    for a, c in zip(whole_grads, chunked_grads):
        assert a.shape == c.shape and a.dtype == c.dtype
        torch.testing.assert_close(c, a, rtol=0, atol=1e-10)


def test_siglip_chunked_gradcheck():
    s = torch.tensor(0.9, dtype=F64, requires_grad=True)
    b = torch.tensor(-1.0, dtype=F64, requires_grad=True)
    m, t = _unit(3, 4, seed=9).requires_grad_(), _unit(3, 4, seed=10).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: siglip_loss(*a, chunk=2)[0], (m, t, s, b))
    # a rank's 2 media rows against 4 gathered texts, its own pairs at columns 2 and 3
    m2, t4 = _unit(2, 4, seed=11).requires_grad_(), _unit(4, 4, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: siglip_loss(*a, offset=2, chunk=3)[0], (m2, t4, s, b))


def test_siglip_offset_form_over_two_ranks_sums_to_the_full_loss():
    m, t = _unit(6, 5, seed=13), _unit(6, 5, seed=14)
    s, b = torch.tensor(2.0, dtype=F64), torch.tensor(-3.0, dtype=F64)
    full, full_grads = _grads(lambda *a: siglip_loss(*a)[0], m, t, s, b)
    for chunk in (0, 4):
        total, grads = 0.0, [torch.zeros_like(x) for x in (m, t, s, b)]
        for rank in range(2):
            rows = slice(3 * rank, 3 * rank + 3)
            value, g = _grads(lambda m, t, s, b, rows=rows, rank=rank:
                              siglip_loss(m[rows], t, s, b, offset=3 * rank, chunk=chunk)[0], m, t, s, b)
            total += value.item()
            grads = [x + y for x, y in zip(grads, g)]
        assert total == pytest.approx(full.item(), rel=1e-12)
        for x, y in zip(grads, full_grads):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_siglip_chunked_with_bf16_inputs():
    m = _unit(6, 8, seed=15, dtype=torch.bfloat16).requires_grad_()
    t = _unit(6, 8, seed=16, dtype=torch.bfloat16).requires_grad_()
    s, b = torch.tensor(math.log(10.0), requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    loss, _ = siglip_loss(m, t, s, b, chunk=4)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert m.grad.dtype == t.grad.dtype == torch.bfloat16 and s.grad.dtype == b.grad.dtype == torch.float32
    assert all(torch.isfinite(g).all() for g in (m.grad, t.grad, s.grad, b.grad))
    ref, _ = siglip_loss(m.detach().float(), t.detach().float(), s.detach(), b.detach())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)  # computed in fp32 from the bf16 values


# ------------------------------------------------------------------------------------------------------ gather

def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 4, requires_grad=True)
    assert rank_and_world() == (0, 1)
    assert gather(x, True) is x and gather(x, False) is x


# ------------------------------------------------------------------------------------------------------ HuBERT

def _fake_rand(monkeypatch, B, T, starts):
    """torch.rand that yields 0 at `starts` [(b, t)] and 1 elsewhere: exactly those tokens start spans."""
    u = torch.ones(B, T)
    for b, t in starts:
        u[b, t] = 0.0
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: u.clone())


def test_span_mask_geometry(monkeypatch):
    B, T, length = 3, 20, 4
    real = torch.arange(T)[None, :] < torch.tensor([20, 12, 9])[:, None]
    # clip 0: spans at 2 and 4 overlap, one at 18 runs off the end; clip 1: a span at 10 is clipped at the real
    # end (12) and a start on padding (15) is ignored; clip 2: its only start is on padding, so token 0 starts one
    _fake_rand(monkeypatch, B, T, [(0, 2), (0, 4), (0, 18), (1, 10), (1, 15), (2, 12)])
    masked = span_mask(real, 0.5, length)
    expected = torch.zeros(B, T, dtype=torch.bool)
    expected[0, 2:8] = expected[0, 18:20] = True
    expected[1, 10:12] = True
    expected[2, 0:4] = True
    assert torch.equal(masked, expected)


def test_span_mask_properties():
    seed_everything(0)
    B, T = 8, 60
    lengths = torch.tensor([60, 45, 30, 12, 7, 3, 1, 60])
    real = torch.arange(T)[None, :] < lengths[:, None]
    for p, length in ((0.08, 10), (0.3, 3), (1e-9, 5)):
        masked = span_mask(real, p, length)
        assert not (masked & ~real).any()  # never on padding
        assert masked.any(dim=1).all()  # every clip has a masked token
    # with a tiny mask_prob only the forced start at token 0 remains: one span of `length`, clipped at the end
    masked = span_mask(real, 1e-9, 5)
    assert torch.equal(masked, (torch.arange(T)[None, :] < lengths.clamp(max=5)[:, None]))
    # long clips: a token is masked unless none of the `length` tokens up to it started a span
    long = torch.ones(4, 5000, dtype=torch.bool)
    share = span_mask(long, 0.08, 10).float().mean().item()
    assert share == pytest.approx(1 - 0.92 ** 10, abs=0.02)


@pytest.mark.parametrize("T", [51, 40])
def test_token_frames_equals_hand_loop(T):
    g = torch.Generator().manual_seed(0)
    B, M, Fr, stride = 2, 3, 101, 2
    mel = torch.randn(B, M, Fr, generator=g)
    out = token_frames(mel, stride, T)
    assert out.shape == (B, T, M * stride)
    ref = torch.zeros(B, T, M * stride)
    for b in range(B):
        for t in range(T):
            for m in range(M):
                for j in range(stride):
                    f = t * stride + j
                    ref[b, t, m * stride + j] = mel[b, m, f] if f < Fr else 0.0
    assert torch.equal(out, ref)


def test_mfcc_is_librosas_with_kaldis_lifter():
    """13 cepstra of the log-mel (orthonormal DCT-II, Kaldi's lifter 1 + 11 sin(πn/22), c0 unliftered) and their
    5-frame deltas and delta-deltas, the ends repeated: librosa's DCT and delta on the same frames."""
    import librosa
    import scipy.fft

    mel = torch.randn(2, 64, 30, generator=torch.Generator().manual_seed(0))
    out = mfcc(mel)  # (2, 39, 30)
    assert out.shape == (2, 39, 30)
    n = np.arange(13)[:, None]
    c = scipy.fft.dct(mel[1].numpy(), type=2, norm="ortho", axis=0)[:13] * (1 + 11 * np.sin(np.pi * n / 22))
    d = librosa.feature.delta(c, width=5, mode="nearest")
    dd = librosa.feature.delta(d, width=5, mode="nearest")
    assert np.allclose(out[1].numpy(), np.concatenate([c, d, dd]), atol=1e-4)


def test_hubert_mfcc_units_cluster_39_coefficients_per_frame():
    cfg = config.load("audio-mask", [*HUBERT, "hubert.targets=mfcc"])
    rows, lengths = _clips(6)
    seed_everything(0)
    obj = build_objective(cfg, clips=(rows, lengths)).train()
    out = obj(_batch(rows, lengths))
    assert obj.centroids.shape == (8, 39 * 2) and torch.isfinite(out.loss)
    mel, _ = obj.view(torch.from_numpy(np.array(rows[:2])), torch.from_numpy(lengths[:2]))
    T = obj.model.tokens_per_clip
    assert torch.equal(obj.frames(mel, T), token_frames(mfcc(mel), 2, T))  # a token stacks its frames' MFCCs
    assert config.load("audio-mask").hubert.targets == "mfcc"  # the recipe's units: the paper's first iteration


HUBERT = ["model.dim=32", "model.depth=1", "model.heads=2", "hubert.clusters=8", "hubert.kmeans_frames=400",
          "hubert.proj_dim=16", "audio.mean=0", "audio.std=1", "hubert.targets=log-mel"]


def _clips(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 64, 101) float16 log-mel-like rows (a few spectral shapes plus noise), silence after `lengths`."""
    rng = np.random.default_rng(seed)
    shapes = rng.normal(0, 2, (4, 64, 1))
    rows = shapes[rng.integers(0, 4, (n, 101))].transpose(0, 2, 1, 3)[..., 0] + rng.normal(0, 0.3, (n, 64, 101))
    lengths = (2 * rng.integers(20, 51, n)).astype(np.int32)  # even: the last real token reads real frames only
    lengths[0] = 101
    for row, n_real in zip(rows, lengths):
        row[:, n_real:] = 500.0  # far from every real frame: would pull a centroid if padding were clustered
    return rows.astype(np.float16), lengths


@pytest.fixture(scope="module")
def hubert_setup():
    cfg = config.load("audio-mask", HUBERT)
    rows, lengths = _clips(6)
    seed_everything(0)
    obj = build_objective(cfg, clips=(rows, lengths))
    return cfg, obj, rows, lengths


def _batch(rows, lengths, idx=slice(0, 4)):
    return {"media": torch.from_numpy(np.array(rows[idx])), "lengths": torch.from_numpy(lengths[idx])}


def test_hubert_fits_units_on_real_tokens_at_the_first_training_forward(hubert_setup):
    cfg, obj, rows, lengths = hubert_setup
    obj.train()
    assert not obj.centroids_ready and not obj.centroids.any()
    out = obj(_batch(rows, lengths))
    assert obj.centroids_ready and obj.centroids.shape == (8, 64 * 2)
    assert obj.centroids.abs().max() < 50  # no centroid was pulled to the padding's 500
    fitted = obj.centroids.clone()
    obj(_batch(rows, lengths))
    assert torch.equal(obj.centroids, fitted)  # fitted once
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32


def test_hubert_loss_counts_and_scores_masked_tokens_only(hubert_setup, monkeypatch):
    cfg, obj, rows, lengths = hubert_setup
    obj.train()
    obj(_batch(rows, lengths))  # units fitted
    batch = _batch(rows, lengths)
    mel = batch["media"].float().requires_grad_()
    captured = {}
    encode = obj.model.encode

    def spy(x, real):
        h = encode(x, real)
        h.retain_grad()
        captured["h"] = h
        return h

    monkeypatch.setattr(obj.model, "encode", spy)
    seed_everything(123)
    out = obj({"media": mel, "lengths": batch["lengths"]})
    T = obj.model.tokens_per_clip
    real = obj.model.token_mask(batch["lengths"], T)
    seed_everything(123)
    masked = span_mask(real, cfg.hubert.mask_prob, cfg.hubert.mask_length)  # the same draw as the forward's
    assert int(out.count) == int(masked.sum()) > 0
    assert out.metrics["masked_share"].item() == pytest.approx(masked.sum().item() / real.sum().item())
    out.loss.backward()
    # the loss reads the outputs at masked tokens only
    h_grad = captured["h"].grad.abs().sum(dim=-1)  # (B, T)
    assert (h_grad[~masked] == 0).all() and (h_grad[masked] > 0).all()
    # the input: a frame feeds front-end tokens t with |f - 2t| <= 2 (two 3-wide convolutions, the second
    # strided by 2); masked tokens' features are replaced and padded tokens are no keys, so a frame gets gradient
    # exactly when an unmasked real token reads it
    visible = real & ~masked
    frame_grad = mel.grad.abs().sum(dim=1)  # (B, F)
    for b in range(mel.shape[0]):
        for f in range(mel.shape[-1]):
            readers = [t for t in range(T) if abs(f - 2 * t) <= 2]
            seen = any(visible[b, t] for t in readers)
            assert (frame_grad[b, f] > 0) == seen, (b, f)


def test_hubert_state_dict_round_trips_the_units(hubert_setup):
    cfg, obj, rows, lengths = hubert_setup
    obj.train()
    obj(_batch(rows, lengths))
    fresh = build_objective(cfg)  # no clips: a training forward that tried to refit would raise
    fresh.load_state_dict(obj.state_dict())
    assert fresh.centroids_ready and torch.equal(fresh.centroids, obj.centroids)
    batch = _batch(rows, lengths, slice(2, 6))
    mel, _ = obj.view(batch["media"], batch["lengths"])
    T, stride = obj.model.tokens_per_clip, obj.model.stride
    targets = nearest(token_frames(mel, stride, T).flatten(0, 1), obj.centroids)
    assert torch.equal(nearest(token_frames(mel, stride, T).flatten(0, 1), fresh.centroids), targets)
    assert len(targets.unique()) > 1
    fresh.train()
    seed_everything(5)
    a = obj(batch)
    seed_everything(5)
    b = fresh(batch)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6) and int(a.count) == int(b.count)


# -------------------------------------------------------------------------------------------- audio encoder

def test_audio_encoder_ignores_padding_beyond_the_real_tokens():
    cfg = config.load("audio-mask", HUBERT)
    seed_everything(0)
    enc = AudioEncoder(cfg.model, 64, 101, 2).eval()
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(3, 64, 101, generator=g)
    lengths = torch.tensor([40, 41, 101])
    with torch.no_grad():
        base = enc(mel, lengths)
        for trial in range(2):
            other = mel.clone()
            for b, n in enumerate(lengths.tolist()[:2]):
                # the last real token t = (n-1)//2 reads frames up to 2t+2 through its convolutions: everything
                # after that reaches padded tokens only, which are no keys and out of the mean
                first_unread = 2 * ((n - 1) // 2) + 3
                other[b, :, first_unread:] = (trial * 2 - 1) * 100 * torch.rand(64, 101 - first_unread,
                                                                                generator=g)
            torch.testing.assert_close(enc(other, lengths), base, rtol=0, atol=1e-5)
            changed = mel.clone()
            changed[0, :, 10] += 1.0  # a real frame does count
            assert (enc(changed, lengths)[0] - base[0]).abs().max() > 1e-4


def test_audio_token_mask_counts():
    cfg = config.load("audio-mask", HUBERT + ["audio.stride=3"])
    enc = AudioEncoder(cfg.model, 64, 101, 3)
    assert enc.tokens_per_clip == 34
    lengths = torch.tensor([0, 1, 3, 4, 100, 101])
    real = enc.token_mask(lengths, 34)
    assert real.sum(dim=1).tolist() == [1, 1, 1, 2, 34, 34]  # tokens whose window starts on a real frame
    assert real[4, :34].all() and real[2, 0] and not real[2, 1:].any()
    assert enc.token_mask(None, 34) is None


# --------------------------------------------------------------------------------------------------- views

def test_video_view_segments_and_normalisation():
    B, cached, frames, C, S = 64, 12, 4, 2, 3
    clips = torch.arange(cached, dtype=torch.uint8).mul(20).view(1, cached, 1, 1, 1).expand(B, cached, C, S, S)
    clips = clips.clone()
    clips[:, :, 1] += 1  # channel 1 differs, to see per-channel normalisation
    mean, std = [0.1, 0.2], [0.5, 0.25]
    view = VideoView(frames, "segment", mean, std)

    def picked(x):  # (B, T, C, S, S) normalised -> cached frame index of each picked frame
        raw = x[:, :, 0, 0, 0] * std[0] + mean[0]
        return torch.round(raw * 255 / 20).long()

    view.eval()
    (x,) = view(clips)
    assert x.shape == (B, frames, C, S, S) and x.dtype == torch.float32
    per = cached // frames
    centres = torch.arange(frames) * per + per // 2  # 1, 4, 7, 10
    assert (picked(x) == centres).all()
    expected = (torch.tensor(20 * 4 + 1) / 255 - 0.2) / 0.25  # channel 1 of cached frame 4
    assert x[0, 1, 1, 0, 0].item() == pytest.approx(expected.item(), rel=1e-6)
    view.train()
    seed_everything(0)
    (x,) = view(clips)
    idx = picked(x)  # (B, T)
    segment = idx // per
    assert (segment == torch.arange(frames)).all()  # one frame inside each segment, in order
    assert set((idx % per).flatten().tolist()) == set(range(per))  # at random within it
    uniform = VideoView(frames, "uniform", mean, std).train()
    assert (picked(uniform(clips)[0]) == centres).all()


def test_audio_view_normalises():
    mel = torch.tensor([[[1.0, 3.0], [-5.0, 7.0]]], dtype=torch.float16)
    lengths = torch.tensor([2])
    out, lens = AudioView(2.0, 4.0)(mel, lengths)
    assert out.dtype == torch.float32 and lens is lengths
    assert torch.equal(out, torch.tensor([[[-0.25, 0.25], [-1.75, 1.25]]]))


# ------------------------------------------------------------------------------------- CLIP / SigLIP objectives

PAIRS = ["model.dim=32", "model.depth=1", "model.heads=2", "model.patch=4", "text.dim=32", "text.depth=1",
         "text.heads=2", "text.context=12", "text.vocab_size=320", "align.embed_dim=32", "image.mean=[0.5]",
         "image.std=[0.25]", "image.channels=1", "image.size=16"]
CAPTIONS = ["a red circle", "a blue square", "two green lines", "one small dot", "a big yellow star",
            "three black bars", "a white ring", "an orange cross"]


@pytest.fixture(scope="module")
def pair_batch():
    tok = train_bpe(CAPTIONS * 4, 300)
    ids, mask = caption_arrays(tok, CAPTIONS, 12)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 16, 16), generator=g, dtype=torch.uint8)
    return tok, {"media": images, "text": torch.from_numpy(ids), "text_mask": torch.from_numpy(mask)}


def test_clip_objective_loss_is_clip_loss_of_its_embeddings(pair_batch):
    tok, batch = pair_batch
    seed_everything(0)
    obj = build_objective(config.load("clip", PAIRS), tok).eval()
    assert obj.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    out = obj(batch)
    media = obj.embed_media(batch["media"])
    text = obj.embed_text(batch["text"], batch["text_mask"])
    assert torch.allclose(media.norm(dim=-1), torch.ones(8)) and torch.allclose(text.norm(dim=-1), torch.ones(8))
    ref, count = clip_loss(media, text, obj.logit_scale)
    assert out.count == count == 8 and out.units == 8
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    out.loss.backward()  # the scale is learned
    assert obj.logit_scale.grad is not None and obj.logit_scale.grad.abs() > 0


def test_logit_scale_clamps_and_siglip_init(pair_batch):
    tok, batch = pair_batch
    for recipe in ("clip", "siglip"):
        obj = build_objective(config.load(recipe, PAIRS), tok)
        with torch.no_grad():
            obj.logit_scale.fill_(10.0)
        obj.after_step(1)
        assert obj.logit_scale.item() == pytest.approx(math.log(100))
        with torch.no_grad():
            obj.logit_scale.fill_(-1.0)
        obj.after_step(2)
        assert obj.logit_scale.item() == 0.0
        with torch.no_grad():
            obj.logit_scale.fill_(2.0)
        obj.after_step(3)
        assert obj.logit_scale.item() == 2.0  # inside the range: untouched
    siglip = build_objective(config.load("siglip", PAIRS), tok).eval()
    assert siglip.logit_scale.exp().item() == pytest.approx(10.0) and siglip.logit_bias.item() == -10.0
    out = siglip(batch)
    media, text = siglip.embed_media(batch["media"]), siglip.embed_text(batch["text"], batch["text_mask"])
    ref, _ = siglip_loss(media, text, siglip.logit_scale, siglip.logit_bias)
    assert out.count == 8 and out.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    out.loss.backward()  # scale and bias are learned
    assert siglip.logit_scale.grad.abs() > 0 and siglip.logit_bias.grad.abs() > 0


@pytest.mark.parametrize("recipe", ["clip", "siglip"])
def test_pair_objective_learns_a_tiny_batch(pair_batch, recipe):
    tok, batch = pair_batch
    seed_everything(0)
    obj = build_objective(config.load(recipe, PAIRS + (["align.chunk=3"] if recipe == "siglip" else [])), tok)
    steps = 150  # with random crops in training: pairs are all right from about step 80 on
    opt = torch.optim.AdamW(obj.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    obj.train()
    first = None
    for step in range(steps):
        out = obj(batch)
        loss = out.loss / out.count
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        obj.after_step(step)
    obj.eval()
    with torch.no_grad():
        out = obj(batch)
    assert out.metrics["pair_acc"].item() == 1.0
    assert (out.loss / out.count).item() < first / 4


# --------------------------------------------------------------------------------------------- media data

IMAGE = dict(size=16, channels=1)


def _png(path, value: int, side: int = 20) -> None:
    Image.fromarray(np.full((side, side), value, np.uint8), mode="L").save(path)


def _split(idents, fraction):
    return [is_val(i, fraction) for i in idents]


def test_prepare_media_jsonl_pairs_skips_and_counts_bad_lines(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _png(data / "a.png", 10)
    _png(data / "b.png", 60)
    _png(data / "c.png", 200)
    _png(data / "d.png", 130)
    (data / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    lines = [
        json.dumps({"image": "a.png", "text": " a dark square "}),  # 1 kept (caption stripped)
        "{not json",  # 2 bad json line
        json.dumps({"image": "missing.png", "text": "gone"}),  # 3 unreadable file
        json.dumps({"image": "b.png", "text": "   "}),  # 4 no caption
        json.dumps({"text": "no image key"}),  # 5 no 'image' in pair
        json.dumps({"image": "corrupt.png", "text": "broken"}),  # 6 corrupt image
        "",  # 7 blank: neither kept nor counted
        json.dumps({"image": "c.png", "text": "a bright square"}),  # 8 kept
        json.dumps([1, 2]),  # 9 bad json line
        json.dumps({"image": "d.png", "text": "a grey square", "label": "grey"}),  # 10 kept
    ]
    pairs = data / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    logs = []
    ms = prepare_media(str(pairs), "image", IMAGE, 0.3, cache_dir=str(tmp_path / "cache"), workers=0,
                       log=logs.append, captions=True)
    assert ms.meta["skipped"] == {"bad json line": 2, "unreadable file": 1, "no caption": 1,
                                  "no 'image' in pair": 1, "corrupt image": 1}
    kept = [(1, "a dark square", 10), (8, "a bright square", 200), (10, "a grey square", 130)]
    val = _split([f"pairs.jsonl#{n}" for n, _, _ in kept], 0.3)
    assert not all(val), "the test data must leave a training sample"
    for split, want_val in ((ms.train, False), (ms.val, True)):
        chosen = [(c, v) for (_, c, v), is_v in zip(kept, val) if is_v == want_val]
        assert split.rows.shape == (len(chosen), 1, 16, 16) and split.rows.dtype == np.uint8
        assert split.captions == ([c for c, _ in chosen] or None)  # in file order, each with its own image
        for row, (_, value) in zip(split.rows, chosen):
            assert (row == value).all()
        assert (split.lengths == 1).all()
    assert ms.meta["samples"] == {"train": len(ms.train.rows), "val": len(ms.val.rows)}
    assert not any("cache hit" in line for line in logs)

    # the same call again is a cache hit; a changed image the .jsonl points at is new data
    again = prepare_media(str(pairs), "image", IMAGE, 0.3, cache_dir=str(tmp_path / "cache"), workers=0,
                          log=logs.append, captions=True)
    assert again.dir == ms.dir and "cache hit" in logs[-1]
    assert again.train.captions == ms.train.captions and np.array_equal(again.train.rows, ms.train.rows)
    # without captions asked for (media alone), the caption-less pair is kept, in its own cache
    media_only = prepare_media(str(pairs), "image", IMAGE, 0.3, cache_dir=str(tmp_path / "cache"), workers=0,
                               log=logs.append)
    assert media_only.dir != ms.dir and "cache hit" not in logs[-1]
    assert media_only.meta["skipped"] == {"bad json line": 2, "unreadable file": 1, "no 'image' in pair": 1,
                                          "corrupt image": 1}
    assert sum(media_only.meta["samples"].values()) == 4
    _png(data / "c.png", 90)
    changed = prepare_media(str(pairs), "image", IMAGE, 0.3, cache_dir=str(tmp_path / "cache"), workers=0,
                            log=logs.append, captions=True)
    assert changed.dir != ms.dir and "cache hit" not in logs[-1]
    rows = np.concatenate([changed.train.rows, changed.val.rows])
    assert (rows == 90).all(axis=(1, 2, 3)).sum() == 1 and not (rows == 200).all(axis=(1, 2, 3)).any()


def test_prepare_media_webdataset_tar_of_pairs(tmp_path):
    shard = tmp_path / "shard-000.tar"

    def add(tar, name, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(shard, "w") as tar:
        for key, value, caption in (("s0", 40, "first caption"), ("s1", 220, "second caption")):
            buf = io.BytesIO()
            Image.fromarray(np.full((20, 20), value, np.uint8), mode="L").save(buf, format="PNG")
            add(tar, f"{key}.png", buf.getvalue())
            add(tar, f"{key}.txt", caption.encode())
        add(tar, "s2.txt", b"a caption without an image")
        buf = io.BytesIO()
        Image.fromarray(np.full((20, 20), 99, np.uint8), mode="L").save(buf, format="PNG")
        add(tar, "s3.png", buf.getvalue())  # an image without a caption
    ms = prepare_media(str(shard), "image", IMAGE, 0.01, cache_dir=str(tmp_path / "cache"), workers=0,
                       log=lambda _: None, captions=True)
    assert ms.meta["skipped"] == {"no image in tar sample": 1, "no caption": 1}
    val = _split(["shard-000.tar#s0", "shard-000.tar#s1"], 0.01)
    expected = [(c, v) for (c, v), is_v in zip((("first caption", 40), ("second caption", 220)), val) if not is_v]
    assert ms.train.captions == [c for c, _ in expected]
    for row, (_, value) in zip(ms.train.rows, expected):
        assert (row == value).all()


def test_prepare_media_labeled_wav_folder(tmp_path):
    sr = 8000
    audio = dict(sample_rate=sr, seconds=0.5, n_mels=16, n_fft=256, hop=128, min_seconds=0.05)
    root = tmp_path / "sounds"
    for sub in ("high", "low"):
        (root / sub).mkdir(parents=True)

    def sine(path, hz, seconds, amp=0.3):
        t = np.arange(int(sr * seconds)) / sr
        soundfile.write(path, (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32), sr)

    sine(root / "high" / "a.wav", 2000, 0.5)
    sine(root / "high" / "b.wav", 1500, 0.7)  # cropped to its centre 0.5 s
    sine(root / "low" / "c.wav", 200, 0.25)  # padded: 1 + 2000 // 128 real frames
    sine(root / "low" / "tiny.wav", 300, 0.01)  # too short
    (root / "low" / "bad.wav").write_bytes(b"RIFF....WAVEgarbage")
    ms = prepare_media(str(root), "audio", audio, 0.01, cache_dir=str(tmp_path / "cache"), workers=0,
                       log=lambda _: None)
    assert ms.meta["skipped"] == {"too short": 1, "corrupt audio": 1}
    assert ms.meta["notes"] == {"cropped": 1, "padded": 1}
    assert ms.classes == ["high", "low"]
    idents = ["high/a.wav", "high/b.wav", "low/c.wav"]
    val = _split(idents, 0.01)
    want = [(ident, label, length) for (ident, label, length), is_v in
            zip(zip(idents, (0, 0, 1), (32, 32, 16)), val) if not is_v]
    tr = ms.train
    assert tr.rows.shape == (len(want), 16, 32) and tr.rows.dtype == np.float16
    assert tr.labels.tolist() == [label for _, label, _ in want]
    assert tr.lengths.tolist() == [length for _, _, length in want]
    assert tr.captions is None
    # normalisation statistics: one mean and std over the real frames of the training clips
    real = np.concatenate([row[:, :n].astype(np.float64).ravel() for row, n in zip(tr.rows, tr.lengths)])
    assert ms.meta["mean"] == pytest.approx(real.mean(), rel=1e-9)
    assert ms.meta["std"] == pytest.approx(real.std(), rel=1e-7)
    assert np.isfinite(ms.meta["std"]) and ms.meta["std"] > 0
