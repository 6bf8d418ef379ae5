"""Media-text alignment and audio end to end on data made here: every multimodal recipe trains from the CLI
config, exact resume, zero-shot and retrieval evaluation with their baselines, audio kNN through the shared
evaluation path, the data commands and bad input.

Images are scikit-learn's digits with generated captions at 16×16; audio the synthetic tones at 8 kHz; video
the moving digits. Towers are 2 blocks of width 32 on one CPU thread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selfsup import config
from selfsup.data.builtin.digits import write_digits
from selfsup.data.builtin.moving_digits import write_moving_digits
from selfsup.data.builtin.tones import write_tones
from selfsup.eval import joint
from selfsup.objectives.clip import CLIP
from selfsup.train import trainer
from tests.test_train import Killed, crash_after_step, losses, quiet
from tests.test_vision import run_main

pytestmark = pytest.mark.usefixtures("one_thread")

TOWERS = ["model.dim=32", "model.depth=2", "model.heads=2", "text.dim=32", "text.depth=2", "text.heads=2",
          "text.vocab_size=512", "align.embed_dim=32", "train.batch_size=16", "train.eval_batches=1",
          "sched.warmup_steps=1", "data.workers=0", "train.log_every=1"]
IMAGE = ["image.size=16", "image.channels=1"]
AUDIO = ["audio.sample_rate=8000", "audio.n_fft=200", "audio.hop=80", "audio.n_mels=32"]
VIDEO = ["image.size=16", "video.frames=4", "video.cache_frames=8", "model.patch=4"]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("digit-pairs")
    write_digits(root)
    return root


@pytest.fixture(scope="module")
def tones_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    write_tones(root, per_class_train=12, per_class_test=6, sample_rate=16000)
    return root


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("moving")
    write_moving_digits(root, per_class_train=12, per_class_test=4)
    return root


def _train(recipe, data, out, *extra):
    cfg = config.load(recipe, [f"data.path={data}", f"out_dir={out}", *TOWERS, *extra])
    return trainer.train(cfg, quiet())


@pytest.mark.parametrize("recipe", ["clip", "siglip"])
def test_image_text_recipes_train_and_learn_the_pairs(recipe, digits_dir, tmp_path):
    out = tmp_path / recipe
    summary = _train(recipe, digits_dir / "train.jsonl", out, *IMAGE, "train.max_steps=30", "optim.lr=0.003")
    assert summary["status"] == "finished" and summary["unit"] == "pair" and summary["pairs_seen"] == 30 * 16
    assert summary["data"]["samples"]["train"] + summary["data"]["samples"]["val"] == 1352
    assert summary["flops_per_pair"] > 0 and summary["val_loss"] is not None
    for name in ("config.yaml", "tokenizer.json", "model.safetensors"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("logit_scale" in r and "pair_acc" in r for r in records)
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-5:]) / 5
    assert last < first  # the loss falls
    cfg = config.load(str(out))
    assert cfg.image.mean is not None and len(cfg.image.mean) == 1  # measured, written for evaluation


def test_clip_crash_then_resume_gives_identical_losses(digits_dir, tmp_path, monkeypatch):
    """Killed after the step-4 checkpoint, the run resumes with the same pairs, crops, scale and optimizer."""
    args = [*IMAGE, "train.max_steps=8", "train.checkpoint_every=4"]
    _train("clip", digits_dir / "train.jsonl", tmp_path / "full", *args)
    undo = crash_after_step(monkeypatch, CLIP, 6)
    with pytest.raises(Killed):
        _train("clip", digits_dir / "train.jsonl", tmp_path / "cut", *args)
    undo()
    trainer.train(config.load(str(tmp_path / "cut")), quiet())
    full, cut = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(cut) == list(range(1, 9))
    for step, loss in full.items():
        assert cut[step] == pytest.approx(loss, abs=1e-6), step


def test_zeroshot_and_retrieval_print_tables_beside_random_init(digits_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "clip"
    _train("clip", digits_dir / "train.jsonl", out, *IMAGE, "train.max_steps=40", "optim.lr=0.003")
    code, text, _ = run_main(monkeypatch, capsys, "eval", out, "--task", "zeroshot", "--test", digits_dir / "test",
                             "--prompt", "the digit {label}", "--prompt", "a handwritten {label}",
                             "--baseline", "random")
    assert code in (0, None), text
    assert "zeroshot" in text and "pretrained" in text and "random" in text and "chance" in text
    result = json.loads((out / "eval" / "zeroshot.json").read_text())
    assert result["pretrained"]["chance"] == pytest.approx(0.1)
    assert 0 <= result["random"]["accuracy"] <= 1 and "2 prompt embeddings" in result["protocol"]
    assert result["data"]["test"]["examples"] == 445

    code, _, err = run_main(monkeypatch, capsys, "eval", out, "--task", "zeroshot", "--test", digits_dir / "test",
                            "--prompt", "a handwritten digit")
    assert code == 2 and "has no {label}" in err and len(err.strip().splitlines()) == 1

    code, text, _ = run_main(monkeypatch, capsys, "eval", out, "--task", "retrieval", "--test",
                             digits_dir / "test.jsonl", "--baseline", "random")
    assert code in (0, None), text
    result = json.loads((out / "eval" / "retrieval.json").read_text())
    for model in ("pretrained", "random"):
        for direction in ("media_to_text", "text_to_media"):
            r = result[model][direction]
            assert 0 <= r["1"] <= r["5"] <= r["10"] <= 1  # recall grows with k
    assert result["pretrained"]["items"] == 445 and result["pretrained"]["texts"] < 445  # repeated captions merged
    # 40 steps of the tiny towers already retrieve better than a random init
    assert result["pretrained"]["mean_recall"] > result["random"]["mean_recall"]


def test_retrieval_counts_identical_captions_as_one_text():
    class Fixed(torch.nn.Module):  # embeddings chosen by hand: item i at text i's direction, items 2, 3 share text 1
        media_proj = torch.nn.Linear(1, 3)
        text_proj = torch.nn.Linear(1, 3)

        def __init__(self):
            super().__init__()
            self.model = torch.nn.Identity()
            self.model.out_dim = 3

        def project_media(self, x):
            return torch.nn.functional.normalize(x, dim=-1)

        def embed_text(self, ids, mask):
            return torch.nn.functional.normalize(torch.eye(3)[ids[:, 1] % 3], dim=-1)

    class Rows:
        def prepare(self, items):
            return items

        def order(self, items):
            return list(range(len(items)))

        def batch(self, items, rows, device):
            return (items[rows],)

        def features(self, trunk, x):
            return trunk(x)

        def describe(self, trunk):
            return "fixed"

    class Tok:  # captions "a", "b", "c" -> ids [eos, 0|1|2]
        post_processor = None  # no special tokens of its own: selfsup's [EOS] + tokens

        def encode_batch(self, texts, add_special_tokens=False):
            return [type("E", (), {"ids": [ord(t) - ord("a")]}) for t in texts]

        def token_to_id(self, token):
            return 9

    media = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0.9, 0.1], [0, 0, 1.0]])
    r = joint.retrieval(Fixed(), Tok(), Rows(), media, ["a", "b", "b", "c"], 4, 8, torch.device("cpu"))
    assert r["texts"] == 3 and r["items"] == 4
    assert r["media_to_text"][1] == 1.0 and r["text_to_media"][1] == 1.0


def test_clap_and_audio_mask_train_and_audio_knn_runs(tones_dir, tmp_path, monkeypatch, capsys):
    clap = tmp_path / "clap"
    s = _train("clap", tones_dir / "train.jsonl", clap, *AUDIO, "train.max_steps=6")
    assert s["status"] == "finished" and s["data"]["samples"]["train"] + s["data"]["samples"]["val"] == 72
    assert s["data"]["notes"] == {"resampled": 72}  # 16 kHz files, an 8 kHz config
    hubert = tmp_path / "hubert"
    s = _train("audio-mask", tones_dir / "train", hubert, *AUDIO, "train.max_steps=6", "hubert.clusters=8",
               "hubert.mask_length=4")
    assert s["status"] == "finished" and s["unit"] == "clip" and s["final_loss"] > 0
    records = [json.loads(line) for line in (hubert / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["masked_share"] < 1 for r in records)
    code, text, _ = run_main(monkeypatch, capsys, "eval", hubert, "--task", "knn", "--train", tones_dir / "train",
                             "--test", tones_dir / "test", "--baseline", "random")
    assert code in (0, None), text
    result = json.loads((hubert / "eval" / "knn.json").read_text())
    assert result["classes"] == sorted(["beeps", "falling", "hum", "noise", "rising", "whistle"])
    assert "audio encoder" in result["protocol"] and result["data"]["test"]["examples"] == 36
    code, text, _ = run_main(monkeypatch, capsys, "eval", clap, "--task", "zeroshot", "--test", tones_dir / "test")
    assert code in (0, None) and "3 prompt templates" in text

    code, text, _ = run_main(monkeypatch, capsys, "embed", clap, tones_dir / "test", "--out", tmp_path / "j.npy",
                             "--joint")
    assert code in (0, None), text
    e = np.load(tmp_path / "j.npy")
    assert e.shape == (36, 32) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    code, text, _ = run_main(monkeypatch, capsys, "embed", hubert, tones_dir / "test", "--out", tmp_path / "h.npy")
    assert code in (0, None) and np.load(tmp_path / "h.npy").shape == (36, 32) and "audio encoder" in text


def test_videoclip_trains_and_zeroshot_reads_video_folders(video_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "vc"
    s = _train("videoclip", video_dir / "train.jsonl", out, *VIDEO, "train.max_steps=4", "video.temporal_depth=1")
    assert s["status"] == "finished" and s["data"]["samples"]["train"] + s["data"]["samples"]["val"] == 48
    code, text, _ = run_main(monkeypatch, capsys, "eval", out, "--task", "zeroshot", "--test", video_dir / "test",
                             "--prompt", "a digit moving {label}")
    assert code in (0, None), text
    result = json.loads((out / "eval" / "zeroshot.json").read_text())
    assert result["data"]["test"]["examples"] == 16 and "video encoder" in result["protocol"]


def test_cli_data_tones_and_moving_digits(tmp_path, monkeypatch, capsys):
    code, text, _ = run_main(monkeypatch, capsys, "data", "tones", "--out", tmp_path / "t")
    assert code in (0, None) and (tmp_path / "t" / "train.jsonl").is_file()
    code, text, _ = run_main(monkeypatch, capsys, "data", "moving-digits", "--out", tmp_path / "m")
    assert code in (0, None) and len((tmp_path / "m" / "test.jsonl").read_text().splitlines()) == 200


def test_pairs_without_captions_and_joint_tasks_on_other_runs_are_one_line_errors(tones_dir, digits_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "train", "clap", f"data.path={tones_dir / 'train'}",
                            f"out_dir={tmp_path / 'x'}", *TOWERS, *AUDIO, "train.max_steps=1")
    errors = [line for line in err.splitlines() if not line.startswith("decoding ")]  # beside progress lines
    assert code == 2 and "carry no captions" in err and len(errors) == 1
    hubert = tmp_path / "h"
    _train("audio-mask", tones_dir / "train", hubert, *AUDIO, "train.max_steps=1", "hubert.clusters=8")
    code, _, err = run_main(monkeypatch, capsys, "eval", hubert, "--task", "zeroshot", "--test", tones_dir / "test")
    assert code == 2 and "needs a joint media-text space" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(monkeypatch, capsys, "embed", hubert, tones_dir / "test", "--out", tmp_path / "e.npy",
                            "--joint")
    assert code == 2 and "--joint needs a joint media-text space" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(monkeypatch, capsys, "train", "videoclip", "video.frames=3", "video.cache_frames=8",
                            f"out_dir={tmp_path / 'v'}")
    assert code == 2 and "multiple of video.frames" in err
