"""The vision objectives end to end on tiny images: every recipe trains, exact resume, each objective's
mechanics (queues, EMA teachers, centers, prototypes, masking, codebooks, pseudo-labels), the image CLI
(eval, embed, data digits) and bad input.

Everything runs on scikit-learn's bundled digits (no download) at 16×16 with one channel, a ViT of width 32 and
depth 2 and heads of a few dozen units, on one CPU thread: a few steps take a fraction of a second.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, load_model, save_model

from selfsup import config
from selfsup.config import ConfigError
from selfsup.data.builtin.digits import write_digits
from selfsup.data.cache.images import prepare_images
from selfsup.data.errors import DataError
from selfsup.models.resnet import ResNet
from selfsup.objectives import dino as dino_mod
from selfsup.objectives import mae as mae_mod
from selfsup.objectives import mocov2 as mocov2_mod
from selfsup.objectives.build import build_objective
from selfsup.objectives.dino import DINO
from selfsup.objectives.teacher import momentum_at
from selfsup.probe.inputs import ImageInputs, encode
from selfsup.rundir import open_run
from selfsup.seed import seed_everything
from selfsup.train import optim, trainer
from tests.test_cli import invoke
from tests.test_train import Killed, _cli, _wait_for_step, crash_after_step, losses, quiet

RECIPES = ["simclr", "mocov2", "mocov3", "byol", "dino", "mae", "beit", "swav", "deepcluster"]

TINY_VISION = [  # 16×16 grayscale, a 2-block ViT of width 32 and small heads: a step takes ~50 ms on one thread
    "image.size=16", "image.channels=1", "model.dim=32", "model.depth=2", "model.heads=2", "model.patch=4",
    "ssl.proj_hidden=64", "ssl.proj_dim=16", "ssl.pred_hidden=32", "ssl.queue_size=32",
    "dino.out_dim=64", "dino.bottleneck=16", "swav.prototypes=16", "deepcluster.clusters=4",
    "deepcluster.pca_dim=8", "beit.codebook_size=16", "beit.codebook_images=64", "mae.decoder_dim=16",
    "mae.decoder_depth=1", "mae.decoder_heads=2", "views.local_crops=2",
    "train.batch_size=16", "train.eval_batches=1", "sched.warmup_steps=1", "data.workers=0",
]
NORM = ["image.mean=[0.3]", "image.std=[0.4]"]  # objectives built directly need resolved normalisation
SIZE, PATCHES = 16, (16 // 4) ** 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn's digits as PNG class folders: DIR/train/<digit>/*.png and DIR/test/<digit>/*.png."""
    root = tmp_path_factory.mktemp("digits")
    counts = write_digits(root)
    assert counts["train"] + counts["test"] == 1797
    return root


def image_cfg(recipe, data, out, *extra):
    return config.load(recipe, [f"data.path={data}", f"out_dir={out}", *TINY_VISION, *extra])


def built(name, *extra, images=None):
    """An objective built from its recipe with the tiny settings, outside the trainer."""
    cfg = config.load(name, [*TINY_VISION, *NORM, *extra])
    seed_everything(0)
    return cfg, build_objective(cfg, images=images)


def fake_images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)


def batch_of(images):
    return {"images": images, "index": torch.arange(len(images))}


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_main(monkeypatch, capsys, *args):
    """`selfsup ARGS` in this process through the real entry point: (exit code, stdout, stderr)."""
    from selfsup.cli import main

    monkeypatch.setattr(sys, "argv", ["selfsup", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


# ------------------------------------------------------------------------------------ every recipe trains


@pytest.fixture(scope="module")
def measured(digits_dir):
    """Mean and std of the training split's pixels as the trainer will see them (same decode, cache hit)."""
    images = prepare_images(str(digits_dir / "train"), SIZE, 1, 0.05, workers=0, log=lambda _: None)
    pixels = images.train.astype(np.float64) / 255
    return pixels.mean(), pixels.std(), len(images.train)


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_image_recipe_trains_and_writes_the_run(recipe, digits_dir, measured, tmp_path):
    out = tmp_path / recipe
    summary = trainer.train(image_cfg(recipe, digits_dir / "train", out, "train.max_steps=4", "train.log_every=1",
                                      "ssl.collapse_every=2", "train.eval_every=4", "train.checkpoint_every=2"),
                            quiet())
    rows = records(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 and math.isfinite(r["grad_norm"]) for r in rows)
    # the collapse monitor reads every objective's embeddings at its steps (and at the last step), not elsewhere
    assert "collapse_rankme" not in rows[0] and "collapse_rankme" not in rows[2]
    for r in (rows[1], rows[3]):
        assert 1 - 1e-6 <= r["collapse_rankme"] <= 16 + 1e-6 and math.isfinite(r["collapse_std"]), r

    assert summary["status"] == "finished" and summary["steps"] == 4 and summary["unit"] == "image"
    assert summary["images_seen"] == 4 * 16 and summary["images_per_s"] > 0 and summary["flops_per_image"] > 0
    assert math.isfinite(summary["final_loss"]) and summary["collapse_warnings"] >= 0
    assert summary["data"]["images"]["train"] == measured[2]
    if recipe == "deepcluster":  # pseudo-labels exist for training images only: no held-out loss
        assert summary["val_loss"] is None
    else:
        assert math.isfinite(summary["val_loss"])
    assert json.loads((out / "summary.json").read_text())["images_seen"] == 64
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model.safetensors"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]

    # the measured normalisation is written into config.yaml, so evaluation normalises the same way
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["image"]["mean"] == summary["data"]["mean"] and saved["image"]["std"] == summary["data"]["std"]
    assert saved["image"]["mean"][0] == pytest.approx(measured[0], abs=1e-4)
    assert saved["image"]["std"][0] == pytest.approx(measured[1], abs=1e-4)

    # the final model opens without the training images (codebook, pseudo-labels, queue all in the file)
    cfg, objective, tok = open_run(out, torch.device("cpu"))
    assert tok is None and cfg.image.mean == saved["image"]["mean"]
    x = torch.from_numpy(np.array(prepare_images(str(digits_dir / "test" / "3"), SIZE, 1, 0.0, workers=0,
                                                   log=lambda _: None).train))
    feats = encode(objective.model, ImageInputs(SIZE, cfg.image.mean, cfg.image.std), x, 16, torch.device("cpu"))
    assert feats.shape == (len(x), 32) and torch.isfinite(feats).all()
    if recipe == "deepcluster":
        weights = load_file(out / "model.safetensors")
        assert weights["_extra_state"].shape == (measured[2],)  # one pseudo-label per training image
        assert torch.equal(objective.labels, weights["_extra_state"])


def test_simclr_on_a_resnet18(digits_dir, tmp_path):
    out = tmp_path / "resnet"
    summary = trainer.train(image_cfg("simclr", digits_dir / "train", out, "model.backbone=resnet18",
                                      "model.small_stem=true", "image.size=8", "train.max_steps=1"), quiet())
    assert summary["status"] == "finished" and summary["images_seen"] == 16
    rows = records(out)
    assert len(rows) == 1 and all(math.isfinite(r["loss"]) for r in rows) and "collapse_rankme" in rows[0]
    cfg, objective, _ = open_run(out, torch.device("cpu"))
    assert cfg.model.backbone == "resnet18" and isinstance(objective.model, ResNet)
    assert objective.model.out_dim == 512


def test_masked_image_objective_with_a_resnet_is_a_one_line_config_error(digits_dir, tmp_path, monkeypatch,
                                                                           capsys):
    with pytest.raises(ConfigError, match="model.backbone"):
        config.load("mae", [f"data.path={digits_dir / 'train'}", "model.backbone=resnet18"])
    code, _, err = run_main(monkeypatch, capsys, "train", "beit", f"data.path={digits_dir / 'train'}",
                            f"out_dir={tmp_path / 'r'}", *TINY_VISION, "model.backbone=resnet18", "image.size=8")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model.backbone" in err


# ------------------------------------------------------------------------------------------- exact resume


RESUME = [*TINY_VISION, "train.max_steps=48", "train.log_every=1", "train.checkpoint_every=5", "train.eval_every=10"]


def test_mocov2_sigkill_then_resume_gives_identical_losses_and_queue(digits_dir, tmp_path):
    data = digits_dir / "train"
    full = tmp_path / "full"
    trainer.train(config.load("mocov2", [f"data.path={data}", f"out_dir={full}", *RESUME]), quiet())
    uninterrupted = losses(full)
    assert sorted(uninterrupted) == list(range(1, 49))

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as this process: the same floating-point sums
    proc = _cli("train", "mocov2", f"data.path={data}", f"out_dir={out}", *RESUME, env=env)
    _wait_for_step(proc, out, 6)  # step 6 is logged after the checkpoint at 5 is written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(losses(out)) < 48
    # resumed from the run directory alone (as `selfsup train RUN_DIR`), in this process to save a start-up
    summary = trainer.train(config.load(str(out)), quiet())
    assert summary["status"] == "finished" and summary["images_seen"] == 48 * 16
    after = losses(out)
    assert sorted(after) == list(range(1, 49))
    for step, loss in uninterrupted.items():
        assert after[step] == pytest.approx(loss, abs=1e-6), step
    a, b = load_file(full / "model.safetensors"), load_file(out / "model.safetensors")
    assert int(a["queue_ptr"]) == int(b["queue_ptr"]) == (48 * 2 * 16) % 32
    for key in ("queue", "projector.0.weight", "key_encoder.projector.0.weight"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


def test_dino_crash_then_resume_gives_identical_losses(digits_dir, tmp_path, monkeypatch):
    """A run that dies mid-way (here an exception at step 7, after the checkpoint at 5, with step 6 logged)
    resumes with the same center, teacher, temperature warm-up and frozen last layer as an uninterrupted one."""
    args = [f"data.path={digits_dir / 'train'}", *TINY_VISION, "train.max_steps=10", "train.log_every=1",
            "train.checkpoint_every=5", "dino.freeze_last_layer_steps=6", "dino.teacher_temp_warmup_steps=8",
            "dino.warmup_teacher_temp=0.02"]
    trainer.train(config.load("dino", [*args, f"out_dir={tmp_path / 'full'}"]), quiet())
    uninterrupted = losses(tmp_path / "full")

    undo = crash_after_step(monkeypatch, DINO, 7)
    out = tmp_path / "crashed"
    cfg = config.load("dino", [*args, f"out_dir={out}"])
    with pytest.raises(Killed):
        trainer.train(cfg, quiet())
    assert max(losses(out)) == 6 and (out / "checkpoints" / "step-00000005").is_dir()
    undo()
    summary = trainer.train(config.load("dino", [*args, f"out_dir={out}"]), quiet())
    assert summary["status"] == "finished"
    after = losses(out)
    assert sorted(after) == list(range(1, 11))
    for step, loss in uninterrupted.items():
        assert after[step] == pytest.approx(loss, abs=1e-6), step
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    for key in ("center", "steps_done", "teacher.head.last.weight", "head.mlp.0.weight"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


def test_deepcluster_pseudo_labels_survive_a_save_and_load(tmp_path):
    images = fake_images(40).numpy()
    cfg, obj = built("deepcluster", images=images)
    obj.train()
    batch = batch_of(torch.from_numpy(images[:8]))
    obj(batch)  # the first training forward clusters the whole set
    assert obj.labels.shape == (40,) and obj.labels.dtype == torch.long
    assert set(obj.labels.tolist()) == {0, 1, 2, 3}  # k-means re-seeds empty clusters: all 4 used
    save_model(obj, str(tmp_path / "model.safetensors"))

    seed_everything(1)
    fresh = build_objective(cfg)  # as a trained run is opened: no training images
    assert len(fresh.labels) == 0
    load_model(fresh, str(tmp_path / "model.safetensors"))
    assert torch.equal(fresh.labels, obj.labels)
    torch.testing.assert_close(fresh.weights, obj.weights, rtol=0, atol=0)
    fresh.train()
    seed_everything(5)
    expected = obj(batch).loss
    seed_everything(5)
    got = fresh(batch).loss  # no re-clustering (it would need the images): the restored labels are used
    assert torch.equal(got, expected)


# ------------------------------------------------------------------------------------ objective mechanics


def _spy(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append([a.detach().clone() if torch.is_tensor(a) else a for a in args])
        result = real(*args, **kwargs)
        calls[-1].append(result)
        return result

    monkeypatch.setattr(module, name, spy)


def test_mocov2_queue_is_a_ring_buffer_filled_in_training_only(monkeypatch):
    _, obj = built("mocov2", "ssl.queue_size=24")
    assert {"queue", "queue_ptr"} <= set(obj.state_dict())  # part of the checkpoint
    calls = []
    _spy(monkeypatch, mocov2_mod, "moco_v2_loss", calls)  # (q, keys, queue, temperature)
    x = batch_of(fake_images(8))
    q0 = obj.queue.clone()
    torch.testing.assert_close(q0.norm(dim=1), torch.ones(24))
    obj.train()
    obj(x)
    keys1 = F.normalize(calls[-1][1], dim=1)  # (2B, E) = (16, 16)
    assert torch.equal(calls[-1][2], q0)  # the loss saw the queue before this batch's keys
    assert int(obj.queue_ptr) == 16
    torch.testing.assert_close(obj.queue[:16], keys1)
    assert torch.equal(obj.queue[16:], q0[16:])

    obj(x)  # 16 more keys into 24 slots: 8 at the end, then wrap around to the front
    keys2 = F.normalize(calls[-1][1], dim=1)
    assert int(obj.queue_ptr) == 8
    torch.testing.assert_close(obj.queue[16:], keys2[:8])
    torch.testing.assert_close(obj.queue[:8], keys2[8:])
    torch.testing.assert_close(obj.queue[8:16], keys1[8:])

    obj.eval()
    before = obj.queue.clone()
    obj(x)
    assert torch.equal(obj.queue, before) and int(obj.queue_ptr) == 8


def test_mocov2_queue_smaller_than_the_batch_keeps_the_newest_keys(monkeypatch):
    _, obj = built("mocov2", "ssl.queue_size=8")
    calls = []
    _spy(monkeypatch, mocov2_mod, "moco_v2_loss", calls)
    obj.train()
    obj(batch_of(fake_images(8)))  # 16 keys into 8 slots
    newest = F.normalize(calls[-1][1], dim=1)[-8:]
    assert (torch.cdist(newest, obj.queue).min(dim=1).values < 1e-5).all()
    assert 0 <= int(obj.queue_ptr) < 8


def test_dino_center_moves_toward_the_teacher_mean_after_the_loss(monkeypatch):
    _, obj = built("dino", "dino.center_momentum=0.9")
    calls = []
    _spy(monkeypatch, dino_mod, "dino_loss", calls)  # (student, teacher, center, student_temp, teacher_temp)
    c0 = torch.randn(64)
    obj.center.copy_(c0)
    obj.train()
    obj(batch_of(fake_images(8)))
    teacher = torch.cat(calls[-1][1])  # (G·B, K) = (16, 64): the teacher sees the 2 global crops only
    assert teacher.shape == (16, 64) and len(calls[-1][0]) == 2 + 2  # student: 2 global + 2 local crops
    assert torch.equal(calls[-1][2], c0)  # the loss used the center from before this batch
    torch.testing.assert_close(obj.center - c0, (1 - 0.9) * (teacher.mean(dim=0) - c0), rtol=0, atol=1e-6)
    obj.eval()
    before = obj.center.clone()
    obj(batch_of(fake_images(8)))
    assert torch.equal(obj.center, before)


def test_dino_last_layer_gets_no_update_while_frozen():
    cfg, obj = built("dino", "dino.freeze_last_layer_steps=2", "optim.lr=0.01")
    opt = optim.build(obj, cfg.optim, torch.device("cpu"))
    obj.train()
    for step in (1, 2, 3):
        last, first = obj.head.last.weight.detach().clone(), obj.head.mlp[0].weight.detach().clone()
        obj(batch_of(fake_images(8, seed=step))).loss.backward()
        obj.before_step(step)
        assert (obj.head.last.weight.grad is None) == (step <= 2)
        opt.step()
        opt.zero_grad(set_to_none=True)
        obj.after_step(step)
        assert torch.equal(obj.head.last.weight, last) == (step <= 2), step
        assert not torch.equal(obj.head.mlp[0].weight, first)
        assert int(obj.steps_done) == step


def test_dino_last_layer_frozen_through_the_trainer(digits_dir, tmp_path):
    out = tmp_path / "dino"
    trainer.train(image_cfg("dino", digits_dir / "train", out, "train.max_steps=3", "dino.freeze_last_layer_steps=3"),
                  quiet())
    w = load_file(out / "model.safetensors")
    # the teacher is an EMA of the student: equal last layers mean the student's never moved from their copy
    assert torch.equal(w["head.last.weight"], w["teacher.head.last.weight"])
    assert not torch.equal(w["head.mlp.0.weight"], w["teacher.head.mlp.0.weight"])
    assert int(w["steps_done"]) == 3


@pytest.mark.parametrize("name, attr", [("byol", "target"), ("mocov3", "momentum_encoder"),
                                        ("mocov2", "key_encoder")])
def test_teacher_is_an_ema_of_the_student_outside_the_optimizer(name, attr):
    cfg, obj = built(name, "ssl.momentum=0.9", "train.max_steps=10", "optim.lr=0.01")
    teacher = getattr(obj, attr)
    t_params = list(teacher.parameters())
    s_params = [p for m in (obj.model, obj.projector) for p in m.parameters()]
    assert len(t_params) == len(s_params)
    assert all(not p.requires_grad for p in t_params)
    assert all(torch.equal(t, s) for t, s in zip(t_params, s_params))  # starts as a copy
    opt = optim.build(obj, cfg.optim, torch.device("cpu"))
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in t_params}

    obj.train()
    obj(batch_of(fake_images(8))).loss.backward()
    assert all(p.grad is None for p in t_params)
    opt.step()
    before = [p.detach().clone() for p in t_params]
    obj.after_step(1)
    m = 0.9 if name == "mocov2" else momentum_at(1, 10, 0.9)  # MoCo v2: constant; others: cosine to 1
    assert m < 1
    for t, t0, s in zip(t_params, before, s_params):
        torch.testing.assert_close(t, t0 + (1 - m) * (s.detach() - t0), rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(t, t0) for t, t0 in zip(t_params, before))
    if name != "mocov2":  # at the last step the momentum is 1: the teacher stays where it is
        with torch.no_grad():
            for p in s_params:
                p.add_(1.0)
        before = [p.detach().clone() for p in t_params]
        obj.after_step(10)
        assert all(torch.equal(t, t0) for t, t0 in zip(t_params, before))


def test_swav_prototypes_stay_normalised_and_freeze():
    cfg, obj = built("swav", "swav.freeze_prototypes_steps=1", "optim.lr=0.05")
    w = obj.prototypes.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(16))
    opt = optim.build(obj, cfg.optim, torch.device("cpu"))
    obj.train()
    for step in (1, 2):
        before = w.detach().clone()
        obj(batch_of(fake_images(8, seed=step))).loss.backward()
        obj.before_step(step)
        assert (w.grad is None) == (step == 1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert torch.equal(w, before) == (step == 1)
        obj.after_step(step)
        torch.testing.assert_close(w.norm(dim=1), torch.ones(16), rtol=0, atol=1e-6)
    with torch.no_grad():
        w.mul_(3.0).add_(torch.randn_like(w))
    obj.after_step(3)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(16), rtol=0, atol=1e-6)


def test_mae_loss_counts_masked_patches_only(monkeypatch):
    _, obj = built("mae", "mae.mask_ratio=0.75", "mae.norm_pix_loss=true")
    masks, losses_seen, encoded = [], [], []
    _spy(monkeypatch, mae_mod, "random_masking", masks)  # (B, T, ratio, device) -> (keep, mask, restore)
    _spy(monkeypatch, mae_mod, "masked_patch_loss", losses_seen)  # (pred, patches, mask, norm_pix) -> (loss, n)
    real_encode = obj.model.encode
    monkeypatch.setattr(obj.model, "encode", lambda x: encoded.append(x.shape) or real_encode(x))
    obj.train()
    out = obj(batch_of(fake_images(8)))
    keep, mask, _ = masks[-1][-1]
    masked = PATCHES - int(PATCHES * 0.25)  # 12 of 16
    assert keep.shape == (8, 4) and encoded == [(8, 4, 32)]  # the encoder sees the visible patches only
    assert mask.shape == (8, PATCHES) and (mask.sum(dim=1) == masked).all()
    assert not mask.gather(1, keep).any()  # kept patches are exactly the unmasked ones
    assert int(out.count) == 8 * masked
    pred, patches, loss_mask, _, (loss, count) = losses_seen[-1]
    assert torch.equal(loss_mask, mask) and int(count) == 8 * masked
    # the loss recomputed by hand: MSE against each patch normalised by its own mean and variance, masked only
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)  # (B, T)
    torch.testing.assert_close(loss.detach(), per_patch[mask].sum(), rtol=1e-5, atol=1e-5)
    # predictions for visible patches do not matter; for masked ones they do
    visible_changed = pred.clone()
    visible_changed[~mask] += 5.0
    torch.testing.assert_close(mae_mod.masked_patch_loss(visible_changed, patches, mask, True)[0], loss.detach())
    masked_changed = pred.clone()
    masked_changed[mask] += 5.0
    assert mae_mod.masked_patch_loss(masked_changed, patches, mask, True)[0] > loss.detach() + 1


def test_beit_fits_its_codebook_on_the_first_training_forward(monkeypatch):
    images = fake_images(100).numpy()
    cfg, obj = built("beit", images=images)
    assert not obj.codebook_ready and not obj.codebook.any()
    x = batch_of(torch.from_numpy(images[:8]))
    obj.eval()
    obj(x)
    assert not obj.codebook_ready  # evaluation never fits it
    fits = []
    real_fit = obj.fit_codebook
    monkeypatch.setattr(obj, "fit_codebook", lambda device: fits.append(device) or real_fit(device))
    obj.train()
    out = obj(x)
    assert bool(obj.codebook_ready) and len(fits) == 1
    assert obj.codebook.shape == (16, 16) and obj.codebook.any()
    assert int(out.count) >= 8 * math.ceil(0.4 * PATCHES) and math.isfinite(out.loss.item())
    codebook = obj.codebook.clone()
    obj(x)
    assert len(fits) == 1 and torch.equal(obj.codebook, codebook)  # fitted once

    _, again = built("beit", images=images)  # deterministic for a seed
    again.fit_codebook(torch.device("cpu"))
    assert torch.equal(again.codebook, codebook)

    seed_everything(3)
    opened = build_objective(cfg)  # a trained run opened without images: the codebook comes with the weights
    opened.load_state_dict(obj.state_dict())
    assert bool(opened.codebook_ready) and torch.equal(opened.codebook, codebook)
    opened.train()
    assert math.isfinite(opened(x).loss.item())  # no refit, which would need the images


# -------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def image_run(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vision-cli") / "run"
    trainer.train(image_cfg("simclr", digits_dir / "train", out, "train.max_steps=4"), quiet())
    return out


@pytest.mark.parametrize("task", ["knn", "linear"])
def test_cli_eval_image_run_with_random_baseline(image_run, digits_dir, task):
    extra = ["--k", "10", "--temperature", "0.1"] if task == "knn" else []
    text = invoke("eval", image_run, "--task", task, "--train", digits_dir / "train", "--test", digits_dir / "test",
                  "--baseline", "random", "--device", "cpu", "--batch-size", "128", *extra)
    r = json.loads((image_run / "eval" / f"{task}.json").read_text())
    assert r["task"] == task and r["objective"] == "simclr" and r["classes"] == [str(d) for d in range(10)]
    assert r["data"]["train"]["examples"] + r["data"]["test"]["examples"] == 1797
    assert r["skipped"] == {"train": {}, "test": {}}
    for model in ("pretrained", "random"):
        assert 0 <= r[model]["accuracy"] <= 1 and 0 <= r[model]["macro_f1"] <= 1 and r[model]["protocol"]
    assert r["gain"]["accuracy"] == pytest.approx(r["pretrained"]["accuracy"] - r["random"]["accuracy"])
    assert "ViT (dim 32, depth 2, patch 4)" in r["protocol"] and "16×16" in r["protocol"]
    if task == "knn":
        assert "k=10" in r["protocol"] and "T=0.1" in r["protocol"] and "cosine" in r["protocol"]
        assert r["pretrained"]["k"] == 10 and r["pretrained"]["temperature"] == 0.1
    else:
        assert "L-BFGS" in r["protocol"]
    for words in ("pretrained", "random", "gain", "accuracy", "macro-F1", "protocol:"):
        assert words in text, words


def test_cli_eval_finetune_image_run(image_run, digits_dir):
    invoke("eval", image_run, "--task", "finetune", "--train", digits_dir / "train", "--test", digits_dir / "test",
           "--epochs", "1", "--batch-size", "128", "--device", "cpu")
    r = json.loads((image_run / "eval" / "finetune.json").read_text())
    assert r["pretrained"]["epochs_run"] == 1 and "random" not in r and "fine-tune" in r["protocol"]
    assert 0 <= r["pretrained"]["accuracy"] <= 1 and math.isfinite(r["pretrained"]["test_loss"])


def test_cli_embed_image_folder(image_run, digits_dir, tmp_path):
    text = invoke("embed", image_run, digits_dir / "test", "--out", tmp_path / "x.npy", "--device", "cpu")
    emb = np.load(tmp_path / "x.npy")
    n_test = sum(1 for _ in (digits_dir / "test").rglob("*.png"))
    assert emb.shape == (n_test, 32) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert f"({n_test}, 32)" in text and "protocol:" in text and "centre view" in text
    cfg, objective, _ = open_run(image_run, torch.device("cpu"))  # the same features as the evaluation path
    images = prepare_images(str(digits_dir / "test"), SIZE, 1, 0.0, workers=0, log=lambda _: None).train
    expected = encode(objective.model, ImageInputs(SIZE, cfg.image.mean, cfg.image.std), images, 64,
                      torch.device("cpu"))
    np.testing.assert_allclose(emb, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_cli_data_digits(digits_dir, tmp_path):
    text = invoke("data", "digits", "--out", tmp_path)
    counts = {s: sum(1 for _ in (tmp_path / s).rglob("*.png")) for s in ("train", "test")}
    assert counts["train"] + counts["test"] == 1797 and 0.2 < counts["test"] / 1797 < 0.3
    assert f"written {counts['train']:,} train and {counts['test']:,} test images" in text
    for split in ("train", "test"):
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == [str(d) for d in range(10)]
        assert sorted(p.relative_to(tmp_path) for p in (tmp_path / split).rglob("*.png")) == \
            sorted(p.relative_to(digits_dir) for p in (digits_dir / split).rglob("*.png"))  # fixed split


# -------------------------------------------------------------------------------------------- bad input


def test_image_folder_without_images_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    (empty / "cats" / "notes.txt").write_text("no images here\n")
    with pytest.raises(DataError, match="holds no images"):
        trainer.train(config.load("simclr", [f"data.path={empty}", f"out_dir={tmp_path / 'a'}", *TINY_VISION]),
                      quiet())
    code, _, err = run_main(monkeypatch, capsys, "train", "simclr", f"data.path={empty}",
                            f"out_dir={tmp_path / 'b'}", *TINY_VISION)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"error: data.path '{empty}': the folder holds no images "
                                        "(.png .jpg .jpeg .webp .bmp .gif .tif .tiff), .tar shards, .npz or .parquet files"]


def test_image_size_not_a_multiple_of_the_patch_is_a_one_line_config_error(tmp_path, monkeypatch, capsys):
    message = "image.size (18) must be a multiple of model.patch (4)"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.load("mae", [*TINY_VISION, "image.size=18"])
    config.load("simclr", [*TINY_VISION, "image.size=18", "model.backbone=resnet18"])  # no patches: any size
    code, _, err = run_main(monkeypatch, capsys, "train", "dino", *TINY_VISION, "image.size=18",
                            f"out_dir={tmp_path / 'r'}")
    assert code == 2 and err.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "r").exists()  # failed before any work


def test_moco_queue_larger_than_the_data_is_a_one_line_error(digits_dir, tmp_path, monkeypatch, capsys):
    # 1,287 training digits: a 2,000-key queue would hold the very images being contrasted, as negatives
    code, _, err = run_main(monkeypatch, capsys, "train", "mocov2", f"data.path={digits_dir / 'train'}",
                            f"out_dir={tmp_path / 'q'}", *TINY_VISION, "ssl.queue_size=2000")
    lines = [line for line in err.strip().splitlines() if not line.startswith(("decoding ", "decoded "))]  # progress
    assert code == 2 and len(lines) == 1 and "ssl.queue_size=2000" in lines[0] and "smaller ssl.queue_size" in lines[0]


def test_eval_baseline_misuse_is_a_one_line_error(image_run, digits_dir, monkeypatch, capsys):
    labeled = ["--train", digits_dir / "train", "--test", digits_dir / "test"]
    for args, words in ((["--task", "finetune", "--baseline", "pixels"], "--baseline pixels is for --task linear"),
                        (["--task", "knn", "--baseline", "noise"], "expected random or pixels")):
        code, _, err = run_main(monkeypatch, capsys, "eval", image_run, *args, *labeled)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def test_compare_puts_runs_side_by_side_and_refuses_a_non_run(image_run, tmp_path, monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "compare", image_run)
    assert code in (0, None) and "probe kNN" in out and image_run.name in out
    code, _, err = run_main(monkeypatch, capsys, "compare", tmp_path)
    assert code == 2 and "has no summary.json" in err and len(err.strip().splitlines()) == 1
