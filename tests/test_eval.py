"""Transfer evaluation: metrics, linear probe, kNN, features, fine-tuning, labeled data, and the CLI end to end."""

import json
import os
import random

import numpy as np
import pytest
import torch
from rich.console import Console

from selfsup import config
from selfsup.cli import app
from selfsup.config import ModelConfig
from selfsup.data.builtin.labeled_docstrings import build as build_docstrings
from selfsup.data.errors import DataError
from selfsup.data.labeled import read_labeled
from selfsup.data.read.tokenizer import train_bpe
from selfsup.eval.features import encode
from selfsup.eval.finetune import Classifier, finetune, llrd_param_groups
from selfsup.models.transformer import Transformer
from selfsup.probe.inputs import TextInputs
from selfsup.probe.knn import knn_eval, knn_predict
from selfsup.probe.linear import GRID, linear_probe, stratified_split
from selfsup.probe.metrics import accuracy, macro_f1
from selfsup.train import trainer
from tests.conftest import TINY
from tests.test_cli import invoke, runner
from tests.test_vision import run_main



pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------------------------ metrics


def test_accuracy_and_macro_f1_on_known_values():
    pred, target = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
    assert accuracy(pred, target) == 0.75
    # F1 per class: 1, 2/3 (tp 1, fp 1), 2/3 (tp 1, fn 1)
    assert macro_f1(pred, target, 3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert macro_f1(pred, target, 5) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)  # absent classes do not count
    assert macro_f1(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1])) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1(target, target) == 1.0
    with pytest.raises(ValueError):
        accuracy(pred, target[:3])


# ---------------------------------------------------------------------------------- linear probe and kNN


def gaussians(n_per_class, seed, classes=3, dim=16, sep=4.0):
    """Unit Gaussians around fixed class means (the same for every seed); `seed` draws the samples."""
    means = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * sep
    y = torch.arange(classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(y), dim, generator=torch.Generator().manual_seed(seed))
    return means[y] + noise + 5.0, y  # offset: kNN must not need centring


@pytest.fixture(scope="module")
def blobs():
    (xtr, ytr), (xte, yte) = gaussians(60, seed=1), gaussians(30, seed=2)
    return xtr, ytr, xte, yte


def shuffled(y, seed=0):
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def test_stratified_split_is_seeded_disjoint_and_per_class():
    y = torch.tensor([0] * 20 + [1] * 10 + [2] * 2)
    fit, val = stratified_split(y, 0.2, seed=3)
    assert set(fit.tolist()).isdisjoint(val.tolist()) and len(fit) + len(val) == len(y)
    assert torch.bincount(y[val]).tolist() == [4, 2, 1]
    assert torch.equal(val, stratified_split(y, 0.2, seed=3)[1])
    assert not torch.equal(val, stratified_split(y, 0.2, seed=4)[1])


def test_linear_probe_separates_gaussians_and_is_chance_on_shuffled_labels(blobs):
    xtr, ytr, xte, yte = blobs
    r = linear_probe(xtr, ytr, xte, yte, 3, features="toy features", seed=0)
    assert r["accuracy"] >= 0.97 and r["macro_f1"] >= 0.97
    assert r["l2"] in GRID and set(r["val_accuracy"]) == {f"{v:g}" for v in GRID}
    assert r["val_examples"] == 27 and r["train_examples"] == 180
    for words in ("toy features", "standardized", "L-BFGS", "200 iterations", "1e-06", "0.1", "15%", "refit"):
        assert words in r["protocol"], words
    bad = linear_probe(xtr, shuffled(ytr), xte, yte, 3, grid=(1e-3, 1e-1), seed=0)
    assert bad["accuracy"] < 0.55  # chance is 1/3
    assert linear_probe(xtr, shuffled(ytr), xte, yte, 3, grid=(1e-3, 1e-1), seed=0) == bad  # deterministic


def test_linear_probe_grid_prefers_what_validates_best(blobs):
    xtr, ytr, xte, yte = blobs
    noisy = ytr.clone()
    noisy[::4] = shuffled(ytr)[::4]  # a quarter of the labels random: strong penalties beat memorising
    r = linear_probe(xtr, noisy, xte, yte, 3, grid=(1e-6, 10.0, 1e4), seed=0)
    assert r["l2"] == 10.0 and "1e-06, 10, 10000" in r["protocol"]


def test_knn_separates_gaussians_and_is_chance_on_shuffled_labels(blobs):
    xtr, ytr, xte, yte = blobs
    r = knn_eval(xtr, ytr, xte, yte, 3, features="toy features")
    assert r["accuracy"] >= 0.97 and r["k"] == 20 and r["temperature"] == 0.07
    for words in ("k=20", "T=0.07", "cosine", "L2-normalised", "toy features"):
        assert words in r["protocol"], words
    assert knn_eval(xtr, shuffled(ytr), xte, yte, 3)["accuracy"] < 0.55
    assert knn_eval(xtr[:5], ytr[:5], xte, yte, 3)["k"] == 5  # k never exceeds the training set
    by_k = r["accuracy_by_k"]  # k = 200 reported beside k = 20, as DINO does, each its own vote
    assert set(by_k) == {"20", str(min(200, len(ytr)))} and by_k["20"] == r["accuracy"]
    assert by_k[str(min(200, len(ytr)))] == knn_eval(xtr, ytr, xte, yte, 3, k=200)["accuracy"]


def test_knn_votes_are_weighted_by_exp_cosine_over_temperature():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])  # one close neighbour of class 0, two far of 1
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.6]])  # cos 0.86 to class 0, 0.51 and 0.55 to class 1
    assert knn_predict(train, labels, query, 2, k=3, temperature=0.07).item() == 0  # near one outweighs
    assert knn_predict(train, labels, query, 2, k=3, temperature=100.0).item() == 1  # ~ a majority vote


# ------------------------------------------------------------------------------------ text and features

A = "apple banana cherry grape lemon mango melon peach pear plum".split()
B = "river mountain forest valley ocean desert island canyon meadow lake".split()


def word_texts(n, seed):
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = [rng.choice(A if label == 0 else B) for _ in range(rng.randint(3, 8))]
        texts.append(" ".join(words))
        labels.append(label)
    return texts, torch.tensor(labels)


@pytest.fixture(scope="module")
def tok():
    texts, _ = word_texts(200, seed=0)
    return train_bpe(texts + ["The quick brown fox jumps over the lazy dog."] * 5, vocab_size=320)


def tiny_trunk(causal=False, pooling="cls", depth=2, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(dim=32, depth=depth, heads=2, context=16, vocab_size=320, pooling=pooling)
    return Transformer(cfg, causal=causal, embed_norm=not causal).eval()


@pytest.mark.parametrize("causal,pooling", [(False, "cls"), (False, "mean"), (True, "cls")])
def test_padding_and_batching_do_not_change_a_texts_features(tok, causal, pooling):
    model = tiny_trunk(causal, pooling)
    short, long = "apple pear", "river mountain forest valley ocean desert island canyon meadow lake river"
    alone = encode(model, tok, [short], 8, torch.device("cpu"))
    both = encode(model, tok, [short, long, short], 8, torch.device("cpu"))  # short is padded to long's length
    assert both.shape == (3, 32) and both.dtype == torch.float32
    torch.testing.assert_close(both[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[2], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[1], both[0])
    # order restored across batches of one
    torch.testing.assert_close(encode(model, tok, [short, long], 1, torch.device("cpu")), both[:2], atol=1e-5,
                               rtol=1e-5)


def test_features_truncate_to_the_context(tok):
    model = tiny_trunk()
    very_long = " ".join(A * 20)  # far more than 16 tokens
    assert encode(model, tok, [very_long], 4, torch.device("cpu")).shape == (1, 32)


# ------------------------------------------------------------------------------------------- fine-tuning


def test_llrd_groups_have_decayed_learning_rates_and_no_decay_on_vectors():
    model = Classifier(tiny_trunk(depth=2), num_classes=3)
    groups = llrd_param_groups(model, lr=1.0, layer_decay=0.5, weight_decay=0.1)
    lr_of = {}
    for g in groups:
        for name, p in zip(g["names"], g["params"]):
            lr_of[name] = g["lr"]
            assert g["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0), name
    assert sorted(lr_of) == sorted(n for n, _ in model.named_parameters())  # each parameter exactly once
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert lr_of["trunk.embed.weight"] == 0.125 and lr_of["trunk.embed_norm.weight"] == 0.125
    assert lr_of["trunk.blocks.0.attn.qkv.weight"] == 0.25
    assert lr_of["trunk.blocks.1.mlp.down.weight"] == 0.5
    assert lr_of["trunk.norm.weight"] == lr_of["head.weight"] == lr_of["head.bias"] == 1.0


def test_finetune_learns_a_tiny_text_task_and_leaves_the_trunk_alone(tok):
    train_texts, train_y = word_texts(80, seed=1)
    test_texts, test_y = word_texts(40, seed=2)
    trunk = tiny_trunk()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    r = finetune(trunk, TextInputs(tok, trunk), train_texts, train_y, test_texts, test_y, 2, torch.device("cpu"), lr=3e-3,
                 max_epochs=6, patience=2, batch_size=8, seed=0)
    assert r["accuracy"] >= 0.85, r["history"]
    assert 1 <= r["best_epoch"] <= r["epochs_run"] <= 6 and len(r["history"]) == r["epochs_run"]
    for words in ("lr=0.003", "layer-wise lr decay 0.75", "batch 8", "patience 2", f"best epoch {r['best_epoch']}"):
        assert words in r["protocol"], words
    assert all(torch.equal(v, trunk.state_dict()[k]) for k, v in before.items())


def test_finetune_can_freeze_blocks_and_pull_toward_the_pretrained_weights(tok):
    train_texts, train_y = word_texts(60, seed=1)
    test_texts, test_y = word_texts(20, seed=2)
    args = (TextInputs(tok, tiny_trunk()), train_texts, train_y, test_texts, test_y, 2, torch.device("cpu"))
    opts = dict(lr=3e-3, max_epochs=3, patience=3, batch_size=8, seed=0)
    free = finetune(tiny_trunk(), *args, **opts)["relative_drift_by_layer"]
    frozen = finetune(tiny_trunk(), *args, freeze_blocks=1, **opts)
    drift = frozen["relative_drift_by_layer"]  # layer 0: embeddings, 1..2: blocks, 3: final norm
    assert drift["0"] == 0.0 and drift["1"] == 0.0 and drift["2"] > 0 and free["0"] > 0 and free["1"] > 0
    assert "embeddings and first 1 blocks frozen" in frozen["protocol"]
    held = finetune(tiny_trunk(), *args, l2sp=10.0, **opts)
    assert all(held["relative_drift_by_layer"][k] < free[k] for k in ("0", "1", "2")), (held, free)
    assert "L2-SP alpha=10" in held["protocol"]


# ---------------------------------------------------------------------------------------- labeled data


def test_labeled_reader_skips_and_counts_bad_lines(tmp_path):
    lines = [json.dumps({"text": "good one", "label": "b"}), "{not json", json.dumps({"label": "a"}),
             json.dumps({"text": "  ", "label": "a"}), json.dumps({"text": "no label"}),
             json.dumps({"text": "bool label", "label": True}), json.dumps({"text": "good two", "label": "a"}),
             json.dumps(["a list"]), "   ", json.dumps({"text": "good three", "label": "b"})]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    s = read_labeled(str(tmp_path / "train.jsonl"))
    assert s.items == ["good one", "good two", "good three"] and s.classes == ["a", "b"]
    assert s.labels.tolist() == [1, 0, 1]
    assert s.skipped == {"bad_json": 1, "empty": 2, "no_label": 2, "no_text_field": 2}
    assert s.counts()["per_class"] == {"a": 1, "b": 2}
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "x", "label": "c"}) + "\n"
                                         + json.dumps({"text": "y", "label": "b"}) + "\n")
    t = read_labeled(str(tmp_path / "test.jsonl"), classes=s.classes)
    assert t.labels.tolist() == [1] and t.skipped == {"unknown_label": 1}


def test_labeled_reader_integer_labels_sort_numerically_and_errors_are_one_line(tmp_path):
    (tmp_path / "ints.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": i}) + "\n"
                                                 for i in (10, 2, 2, 1)))
    s = read_labeled(str(tmp_path / "ints.jsonl"))
    assert s.classes == ["1", "2", "10"] and s.labels.tolist() == [2, 1, 1, 0]
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": "t", "label": "a"}) + "\n")
    with pytest.raises(DataError, match="at least 2"):
        read_labeled(str(tmp_path / "one.jsonl"))
    (tmp_path / "none.jsonl").write_text("{bad\n")
    with pytest.raises(DataError, match="no usable examples.*bad_json"):
        read_labeled(str(tmp_path / "none.jsonl"))
    (tmp_path / "plain.txt").write_text("a text\n")
    with pytest.raises(DataError, match=r"is a .\.txt. file; expected a .jsonl file"):
        read_labeled(str(tmp_path / "plain.txt"))
    with pytest.raises(DataError, match="missing.jsonl' does not exist"):
        read_labeled(str(tmp_path / "missing.jsonl"))


@pytest.fixture(scope="module")
def docstring_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("labeled")
    return out, build_docstrings(out, classes=3, per_class=40)


def test_labeled_docstrings_are_balanced_disjoint_and_deterministic(docstring_set, tmp_path):
    out, summary = docstring_set
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert len(summary["classes"]) == 3 and {r["label"] for r in train} == set(summary["classes"])
    assert len(train) + len(test) == 3 * 40 and 0.1 < len(test) / (3 * 40) < 0.35
    assert {r["text"] for r in train}.isdisjoint(r["text"] for r in test)
    assert build_docstrings(tmp_path, classes=3, per_class=40) == {**summary, "train": {
        **summary["train"], "path": str(tmp_path / "train.jsonl")}, "test": {
        **summary["test"], "path": str(tmp_path / "test.jsonl")}}
    assert (tmp_path / "train.jsonl").read_text() == (out / "train.jsonl").read_text()


# --------------------------------------------------------------------------------------------- the CLI



@pytest.fixture(scope="module")
def mlm_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = config.load("bert-mlm", [f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=4"])
    trainer.train(cfg, Console(file=open(os.devnull, "w")))
    return out


@pytest.mark.parametrize("task", ["linear", "knn"])
def test_cli_eval_transfer_with_random_baseline(mlm_run, docstring_set, task):
    data, _ = docstring_set
    text = invoke("eval", mlm_run, "--task", task, "--train", data / "train.jsonl", "--test", data / "test.jsonl",
                  "--baseline", "random", "--device", "cpu")
    r = json.loads((mlm_run / "eval" / f"{task}.json").read_text())
    assert r["task"] == task and len(r["classes"]) == 3
    for model in ("pretrained", "random"):
        assert 0 <= r[model]["accuracy"] <= 1 and 0 <= r[model]["macro_f1"] <= 1 and r[model]["protocol"]
    assert r["gain"]["accuracy"] == pytest.approx(r["pretrained"]["accuracy"] - r["random"]["accuracy"])
    assert r["data"]["train"]["examples"] + r["data"]["test"]["examples"] == 120
    assert r["skipped"] == {"train": {}, "test": {}}
    assert r["random"]["accuracy"] != r["pretrained"]["accuracy"] or r["random"] != r["pretrained"]
    for words in ("pretrained", "random", "gain", "accuracy", "macro-F1", "protocol:"):
        assert words in text, words
    assert ("k=20" if task == "knn" else "L-BFGS") in r["protocol"]


def test_cli_eval_finetune_and_one_line_errors(mlm_run, docstring_set):
    data, _ = docstring_set
    text = invoke("eval", mlm_run, "--task", "finetune", "--train", data / "train.jsonl", "--test",
                  data / "test.jsonl", "--epochs", "1", "--lr", "0.01", "--device", "cpu")
    r = json.loads((mlm_run / "eval" / "finetune.json").read_text())
    assert r["pretrained"]["epochs_run"] == 1 and "random" not in r and "layer-wise" in r["protocol"]
    # the masked-LM loss on the run's validation data, with the pretrained and the fine-tuned trunk in place
    before, after = r["pretrained"]["objective_loss_before"], r["pretrained"]["objective_loss_after"]
    assert before > 0 and after != before and "pretraining objective (mlm) loss" in text
    from selfsup.eval.objective_loss import objective_loss_probe
    from selfsup.rundir import open_run

    cfg, objective, _ = open_run(mlm_run, torch.device("cpu"))
    probe = objective_loss_probe(cfg, mlm_run, objective, torch.device("cpu"))
    assert probe(objective.model) == pytest.approx(before, abs=1e-6)  # the same batches and masks every time
    assert probe(objective.model) == pytest.approx(before, abs=1e-6)
    result = runner.invoke(app, ["eval", str(mlm_run), "--task", "knn", "--train", str(data / "train.jsonl")])
    assert isinstance(result.exception, config.ConfigError) and "--train and --test" in str(result.exception)
    result = runner.invoke(app, ["eval", str(mlm_run), "--task", "svm"])
    assert isinstance(result.exception, config.ConfigError) and "linear, knn, finetune" in str(result.exception)


def test_cli_embed_writes_npy_and_jsonl(mlm_run, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("Return the number of items.\n \nSplit the path into a pair.\nOpen a file.\n")
    invoke("embed", mlm_run, src, "--out", tmp_path / "emb.npy", "--jsonl", tmp_path / "emb.jsonl",
           "--device", "cpu")
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    rows = [json.loads(line) for line in (tmp_path / "emb.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["Return the number of items.", "Split the path into a pair.", "Open a file."]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), emb, rtol=1e-6)


@pytest.mark.parametrize("task", ["knn", "linear"])
def test_cli_eval_whiten_states_it_and_whitens_the_baseline_too(mlm_run, docstring_set, task):
    data, _ = docstring_set
    labeled = ["--train", data / "train.jsonl", "--test", data / "test.jsonl", "--device", "cpu"]
    invoke("eval", mlm_run, "--task", task, *labeled, "--baseline", "random")
    plain = json.loads((mlm_run / "eval" / f"{task}.json").read_text())
    invoke("eval", mlm_run, "--task", task, *labeled, "--baseline", "random", "--whiten")
    r = json.loads((mlm_run / "eval" / f"{task}-whitened.json").read_text())
    assert json.loads((mlm_run / "eval" / f"{task}.json").read_text()) == plain  # both kept
    for model in ("pretrained", "random"):
        assert "BERT-whitening" in r[model]["protocol"] and "BERT-whitening" not in plain[model]["protocol"]
        assert 0 <= r[model]["accuracy"] <= 1
    assert (r["pretrained"]["accuracy"], r["random"]["accuracy"]) != (plain["pretrained"]["accuracy"],
                                                                      plain["random"]["accuracy"])


def test_eval_whiten_with_another_task_is_a_one_line_error(mlm_run, docstring_set, monkeypatch, capsys):
    data, _ = docstring_set
    code, _, err = run_main(monkeypatch, capsys, "eval", mlm_run, "--task", "finetune", "--whiten",
                            "--train", data / "train.jsonl", "--test", data / "test.jsonl")
    assert code == 2 and err.strip().splitlines() == ["error: --whiten is for --task linear and knn (got --task "
                                                      "finetune)"]


def test_cli_data_labeled_docstrings(tmp_path):
    text = invoke("data", "labeled-docstrings", "--out", tmp_path, "--classes", "2", "--per-class", "20")
    assert (tmp_path / "train.jsonl").is_file() and (tmp_path / "test.jsonl").is_file() and "total" in text
