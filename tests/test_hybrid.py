"""Hybrid objectives: several objectives on one backbone. The loss is Σ w_i · (term i's mean loss) with weights
on a schedule, its gradient is that of the weighted term means, the backbone exists once, each term may set its
own views and heads, every term is logged, and a hybrid run resumes exactly. SimCSE, the sentence-level
contrastive part of the text hybrid, is checked here too (its two-process equality is in test_distributed.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from selfsup import config
from selfsup.data.read.tokenizer import train_bpe
from selfsup.objectives.build import build_objective
from selfsup.objectives.hybrid import Hybrid, weight_at
from selfsup import batch_random
from selfsup.objectives.simcse import SimCSE, crop_span, longest_segment
from selfsup.report import write_report
from selfsup.seed import seed_everything
from tests.conftest import TINY
from tests.test_train import crash_and_resume, losses
from tests.test_vision import NORM, TINY_VISION, digits_dir, fake_images  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_weights_move_from_start_to_end_on_the_schedule():
    assert weight_at(0, 100, 0.1, 0.5, "linear") == pytest.approx(0.1)
    assert weight_at(50, 100, 0.1, 0.5, "linear") == pytest.approx(0.3)
    assert weight_at(25, 100, 0.1, 0.5, "cosine") == pytest.approx(0.1 + 0.4 * (1 - math.cos(math.pi / 4)) / 2)
    assert weight_at(100, 100, 0.1, 0.5, "cosine") == pytest.approx(0.5)
    assert weight_at(150, 100, 1.0, 0.0, "linear") == 0.0  # past the end it stays at the end


def _image_hybrid(*extra):
    cfg = config.load("hybrid-mae-contrastive", [*TINY_VISION, *NORM, *extra])
    torch.manual_seed(0)
    return cfg, build_objective(cfg)


def test_the_backbone_is_shared_and_stored_once():
    cfg, hybrid = _image_hybrid()
    assert isinstance(hybrid, Hybrid) and list(hybrid.terms) == ["mae", "simclr"]
    for term in hybrid.terms.values():
        assert term.model is hybrid.model
    keys = list(hybrid.state_dict())
    assert any(k.startswith("model.") for k in keys)
    assert not [k for k in keys if k.startswith("terms.") and ".model." in k]  # no second copy of the backbone
    own = sum(p.numel() for p in hybrid.model.parameters())
    heads = sum(p.numel() for n, p in hybrid.named_parameters() if n.startswith("terms."))
    assert sum(p.numel() for p in hybrid.parameters()) == own + heads


def test_the_gradient_is_that_of_the_weighted_term_means():
    """w1·mean(MAE) + w2·mean(SimCLR), each over its own count: computed by the hybrid and by hand from the same
    terms with the same random draws (masks and augmentations), at a step where the scheduled weight is not the
    initial one."""
    cfg, hybrid = _image_hybrid("train.max_steps=10")
    hybrid.after_step(5)
    w = hybrid.current_weights()
    assert w[0] == 1.0 and 0.1 < w[1] < 0.5
    batch = {"images": fake_images(8)}
    seed_everything(3)
    out = hybrid(batch)
    out.loss.backward()
    assert out.count == 1
    got = {n: p.grad.clone() for n, p in hybrid.named_parameters() if p.grad is not None}
    hybrid.zero_grad()
    seed_everything(3)
    parts = [term(batch) for term in hybrid.terms.values()]
    by_hand = sum(wi * o.loss / o.count for wi, o in zip(w, parts))
    by_hand.backward()
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    for (name, o), wi in zip(zip(hybrid.terms, parts), w):
        assert out.metrics[f"{name}_loss"].item() == pytest.approx((o.loss / o.count).item(), rel=1e-6)
        assert out.metrics[f"{name}_weight"] == wi
    assert got.keys() == {n for n, p in hybrid.named_parameters() if p.grad is not None}
    assert any(n.startswith("model.") for n in got) and any(n.startswith("terms.mae.") for n in got)
    for n, p in hybrid.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")


def test_each_term_reads_its_own_overrides():
    cfg = config.load("hybrid-mae-contrastive", TINY_VISION)
    mae, simclr = cfg.term_config(0), cfg.term_config(1)
    assert (mae.objective, mae.views.jitter_p, mae.views.crop_scale) == ("mae", 0.0, (0.2, 1.0))
    assert (simclr.objective, simclr.views.jitter_p, simclr.views.crop_scale) == ("simclr", 0.8, (0.08, 1.0))
    assert mae.model == simclr.model == cfg.model  # the backbone's settings are shared


@pytest.mark.parametrize("overrides, message", [
    (["hybrid.terms=[{objective: mae}]"], "needs at least two hybrid.terms"),
    (["hybrid.terms=[{objective: mae}, {objective: mae}]"], "name an objective twice"),
    (["hybrid.terms=[{objective: mae}, {objective: mlm}]"], "mix text and image objectives"),
    (["hybrid.terms=[{objective: mae, overrides: {model.dim: 64}}, {objective: simclr}]"],
     "hybrid.terms[0].overrides: 'model.dim' is not a key a term may set"),
    (["hybrid.terms=[{objective: mae, overrides: {views.jitter_p: 2}}, {objective: simclr}]"],
     "hybrid.terms[0] (mae): views.jitter_p: expected less than or equal to 1"),
    (["hybrid.terms=[{objective: clip}, {objective: simclr}]"], "config key 'hybrid.terms[0].objective': got 'clip'"),
    (["model.backbone=resnet18"], "hybrid.terms[0] (mae): objective 'mae' masks patches"),
])
def test_a_wrong_hybrid_is_a_one_line_config_error(overrides, message):
    with pytest.raises(config.ConfigError) as e:
        config.load("hybrid-mae-contrastive", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------------ SimCSE

def test_longest_segment_picks_each_windows_longest_document():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, 2],  # documents of 2, 3, 1 tokens
                            [1, 1, 1, 1, 1, 1],  # one document (the window starts inside it)
                            [0, 0, 1, 1, 2, 2]])  # equals: the first
    assert longest_segment(doc_ids).int().tolist() == [[0, 0, 1, 1, 1, 0], [1] * 6, [1, 1, 0, 0, 0, 0]]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(["an encoder learns sentence embeddings from two noisy views"] * 8, 300)


def test_simcse_embeds_a_document_as_it_would_be_embedded_alone(tok):
    """The pooled segment of a packed window equals the same document run by itself (doc_mask, relative RoPE)."""
    cfg = config.load("simcse", [*TINY, "model.dropout=0", "simcse.mask_p=0.1"])
    torch.manual_seed(0)
    simcse = build_objective(cfg, tok).eval()
    assert isinstance(simcse, SimCSE)
    simcse.mask_p = 0.0
    doc = torch.randint(10, 250, (1, 9))
    doc[0, 0] = 0  # EOS opens a document
    window = torch.cat([torch.tensor([[7, 8, 9]]), doc, torch.tensor([[0, 11, 12, 13]])], dim=1)  # (1, 16)
    doc_ids = torch.cumsum(window == 0, dim=1)
    alone = simcse.embed(doc, torch.zeros_like(doc), torch.ones_like(doc, dtype=torch.bool))
    packed = simcse.embed(window, doc_ids, longest_segment(doc_ids))
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_simcse_views_differ_and_the_loss_is_info_nce(tok):
    cfg = config.load("simcse", [*TINY, "ssl.temperature=0.5"])  # dropout 0.1 from the recipe
    torch.manual_seed(0)
    simcse = build_objective(cfg, tok).train()
    tokens = torch.randint(10, 250, (6, 32))
    tokens[:, 0] = 0
    torch.manual_seed(1)
    out = simcse({"tokens": tokens})
    z1, z2 = out.projections
    assert out.count == 6 and not torch.allclose(z1, z2)  # dropout made two views
    sim = torch.nn.functional.normalize(z1, dim=-1) @ torch.nn.functional.normalize(z2, dim=-1).t() / 0.5
    expected = -(sim.diag() - sim.logsumexp(dim=1)).sum()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_crop_span_is_a_contiguous_share_of_each_text_drawn_independently():
    segment = torch.zeros(64, 20, dtype=torch.bool)
    segment[:, 4:14] = True  # a text of 10 tokens at positions 4..13
    segment[::2, 4:6] = False  # every other row: 8 tokens at 6..13
    batch_random.seed(0)
    a, b = crop_span(segment, 0.5), crop_span(segment, 0.5)
    for crop in (a, b):
        assert (crop & ~segment).sum() == 0  # inside the text
        assert crop.sum(1).tolist() == [4, 5] * 32  # round(0.5 · length)
        ends = crop.int().diff(dim=1).abs().sum(1)
        assert (ends <= 2).all()  # one contiguous run
    assert not torch.equal(a, b)  # the two views' spans are drawn independently
    starts = a.int().argmax(1)[1::2]  # the 10-token rows: starts 4..9, each possible
    assert set(starts.tolist()) <= set(range(4, 10)) and len(set(starts.tolist())) > 3


def test_simcse_crop_embeds_each_view_from_its_span_alone(tok):
    cfg = config.load("simcse", [*TINY, "model.dropout=0", "simcse.crop=0.5"])
    torch.manual_seed(0)
    simcse = build_objective(cfg, tok).eval()
    tokens = torch.randint(10, 250, (4, 16))
    tokens[:, 0] = 0
    batch_random.seed(3)
    out = simcse({"tokens": tokens})
    z1, z2 = out.projections
    assert out.count == 4 and torch.isfinite(out.loss) and not torch.allclose(z1, z2)  # no dropout: the crops differ
    batch_random.seed(3)
    span = crop_span(longest_segment(torch.cumsum(tokens == 0, dim=1)), 0.5)[:1]  # the first view of row 0
    alone = tokens[:1][span].unsqueeze(0)  # (1, 8): the span's tokens by themselves
    with torch.no_grad():
        expected = simcse.model(alone).mean(dim=1)  # (1, D)
    torch.testing.assert_close(out.embeddings[0][:1], expected, rtol=1e-5, atol=1e-5)


def test_simcse_without_any_noise_is_a_one_line_config_error(tok):
    with pytest.raises(config.ConfigError, match="two views of a text would be identical"):
        build_objective(config.load("simcse", [*TINY, "model.dropout=0"]), tok)


# ------------------------------------------------------------------------------------------- through the trainer

def test_text_hybrid_logs_each_term_and_resumes_exactly(corpus, tmp_path, monkeypatch):
    args = [f"data.path={corpus}", *TINY, "train.max_steps=8", "train.log_every=1", "train.checkpoint_every=4",
            "train.eval_every=4", "hybrid.terms=[{objective: mlm, weight: 1.0}, {objective: simcse, weight: 0.2, "
            "final_weight: 1.0}]", "hybrid.schedule=linear"]
    full_dir, out = crash_and_resume(monkeypatch, Hybrid, 6, "hybrid-mlm-contrastive", args, tmp_path)
    records = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["simcse_weight"] for r in records] == pytest.approx([0.2 + 0.8 * s / 8 for s in range(8)])
    for r in records:  # the logged loss is the weighted sum of the logged term means (one micro-batch per step)
        assert r["loss"] == pytest.approx(r["mlm_loss"] * r["mlm_weight"] + r["simcse_loss"] * r["simcse_weight"],
                                          rel=1e-5)
    summary = json.loads((full_dir / "summary.json").read_text())
    assert summary["val_ppl"] is None and summary["unit"] == "token"  # a hybrid's loss is no perplexity
    assert "Hybrid terms" in write_report(full_dir).read_text()

    full, resumed = losses(full_dir), losses(out)
    assert sorted(resumed) == list(range(1, 9))
    for step, loss in full.items():
        assert resumed[step] == pytest.approx(loss, abs=1e-6), step
    a, b = load_file(full_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert int(b["step"]) == 8
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


def test_image_hybrid_trains_from_the_cli_and_is_evaluated_like_any_run(digits_dir, tmp_path):
    from tests.test_train import _cli

    out = tmp_path / "run"
    proc = _cli("train", "hybrid-mae-contrastive", f"data.path={digits_dir / 'train'}", f"out_dir={out}",
                *TINY_VISION, "train.max_steps=4", "train.log_every=2")
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"mae_loss", "mae_weight", "simclr_loss", "simclr_weight"} <= set(last)
    proc = _cli("eval", out, "--task", "knn", "--train", digits_dir / "train", "--test", digits_dir / "test")
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert json.loads((out / "eval" / "knn.json").read_text())["objective"] == "hybrid"
