"""Continual pretraining: a finished run continued on a new stream with replay, and --task forgetting."""

import json
import signal

import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from selfsup import config
from selfsup.cli import app
from selfsup.config import ConfigError, DataConfig
from selfsup.data.cache import tokens
from selfsup.data.errors import DataError
from selfsup.data.load.mixture import Mixture
from selfsup.data.load.rows import RowLoader
from selfsup.train import trainer
from selfsup.train.continual import load_config
from tests.conftest import TINY, docstrings
from tests.test_train import _cli, _wait_for_step, losses, quiet

pytestmark = pytest.mark.usefixtures("one_thread")
# eval_batches covers each whole validation split, so a run's val_loss is its loss on every validation window
PARENT = [*TINY, "train.max_steps=8", "train.eval_batches=1000", "train.log_every=1"]


@pytest.fixture(scope="module")
def new_corpus(tmp_path_factory):
    """Another domain: docstrings of modules the old corpus (conftest) does not hold."""
    import email.message, http.client, logging, unittest, xml.dom.minidom, zipfile

    path = tmp_path_factory.mktemp("new") / "new.txt"
    path.write_text("\n".join(docstrings(email.message, http.client, logging, unittest, xml.dom.minidom,
                                         zipfile)) + "\n")
    return path


@pytest.fixture(scope="module")
def parent(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "parent"
    trainer.train(config.load("gpt-clm", [f"data.path={corpus}", f"out_dir={out}", *PARENT]), quiet())
    return out


CHILD = ["train.max_steps=6", "sched.warmup_steps=3", "train.log_every=1", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def child(parent, new_corpus):
    cfg = load_config(str(parent), [f"continual.data={new_corpus}", "continual.replay=0.25", *CHILD])
    return cfg, trainer.train(cfg, quiet())


def test_replay_share_is_exact_and_resumes():
    new = RowLoader({"x": np.arange(100)}, seed=1)
    old = RowLoader({"x": np.arange(1000, 1050)}, seed=2)
    mix = Mixture(new, old, 0.2)
    counts, seen = [], []
    for t in range(1, 26):
        rows = mix.next_batch(16)["x"]  # (16,)
        counts.append(int((rows >= 1000).sum()))
        assert sum(counts) == int(3.2 * t + 0.5)  # round(0.2 × rows so far): 3.2·t is never a half
        assert (rows[:16 - counts[-1]] < 1000).all()  # new rows first, then the replay rows
        if t == 10:
            state = json.loads(json.dumps(mix.state()))
        if t > 10:
            seen.append(rows)
    assert set(counts) == {3, 4} and sum(counts) == 80  # 0.2 × 400 rows
    again = Mixture(RowLoader({"x": np.arange(100)}, seed=1), RowLoader({"x": np.arange(1000, 1050)}, seed=2), 0.2)
    again.load_state(state)
    for rows in seen:
        assert again.next_batch(16)["x"].tolist() == rows.tolist()
    assert (Mixture(new, old, 0.0).next_batch(16)["x"] < 1000).all()


def test_continued_run_records_its_parent_and_rewarms(parent, child, new_corpus):
    cfg, summary = child
    out = parent.with_name("parent-continual")
    assert cfg.out_dir == str(out) and summary["status"] == "finished"
    saved = config.load_yaml(out / "config.yaml")
    assert saved["continual"] == dict(data=str(new_corpus), replay=0.25, parent=str(parent.resolve()),
                                      old_data=config.load_yaml(parent / "config.yaml")["data"]["path"])
    assert saved["data"]["path"] == str(new_corpus)
    assert (out / "tokenizer.json").read_text() == (parent / "tokenizer.json").read_text()
    assert summary["data"]["replay"]["share"] == 0.25
    parent_lr = [json.loads(line)["lr"] for line in (parent / "metrics.jsonl").read_text().splitlines()]
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    peak = cfg.optim.lr
    assert parent_lr[-1] < 0.2 * peak  # the parent ended decayed ...
    assert lrs[:3] == pytest.approx([peak / 3, 2 * peak / 3, peak])  # ... the continuation warms up again


def test_parent_weights_start_the_continued_run(parent, new_corpus, tmp_path):
    cfg = load_config(str(parent), [f"continual.data={new_corpus}", f"out_dir={tmp_path / 'c'}", "optim.lr=1e-12",
                                    "train.max_steps=1"])
    trainer.train(cfg, quiet())
    before, after = load_file(parent / "model.safetensors"), load_file(tmp_path / "c" / "model.safetensors")
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_allclose(after[k].numpy(), before[k].numpy(), atol=1e-7, err_msg=k)
    # the old domain's validation loss, logged while continuing, starts where the parent ended
    record = json.loads((tmp_path / "c" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_loss_old"] == pytest.approx(json.loads((parent / "summary.json").read_text())["val_loss"],
                                                   abs=1e-5)


def test_killed_continuation_resumes_to_the_same_losses(parent, new_corpus, child, tmp_path):
    out = tmp_path / "k"
    args = ["train", parent, f"continual.data={new_corpus}", "continual.replay=0.25", f"out_dir={out}", *CHILD]
    proc = _cli(*args)
    _wait_for_step(proc, out, 3)  # past the checkpoint at 2, before the one at 4
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _cli(*args)  # the same command again
    output = resumed.communicate()[0]
    assert resumed.returncode == 0 and "resuming from" in output, output
    reference = losses(parent.with_name("parent-continual"))
    after = losses(out)
    assert sorted(after) == list(range(1, 7))
    for step, loss in reference.items():
        assert after[step] == pytest.approx(loss, abs=1e-6), step


def labeled(path, *modules):
    """A labeled .jsonl: each module's docstrings, labeled by the module."""
    with open(path, "w") as f:
        for m in modules:
            f.writelines(json.dumps({"text": d, "label": m.__name__}) + "\n" for d in docstrings(m))
    return path


def test_forgetting_table_matches_each_runs_own_validation(parent, child, tmp_path):
    import argparse, json as json_module, pathlib, textwrap

    out = parent.with_name("parent-continual")
    train = labeled(tmp_path / "train.jsonl", argparse, json_module)
    test = labeled(tmp_path / "test.jsonl", pathlib, textwrap)  # other modules: only the classes must match
    test.write_text(test.read_text().replace('"pathlib"', '"argparse"').replace('"textwrap"', '"json"'))
    result = CliRunner().invoke(app, ["eval", str(out), "--task", "forgetting", "--batch-size", "4",
                                      "--device", "cpu", "--train", str(train), "--test", str(test)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    r = json.loads((out / "eval" / "forgetting.json").read_text())
    for domain in ("old", "new"):  # the table shows what the JSON holds
        for model in ("parent", "continued"):
            assert f"{r[domain][model]['perplexity']:.2f}" in result.output
    probe = r["probe"]
    assert probe["accuracy_change"] == pytest.approx(probe["continued"]["accuracy"] - probe["parent"]["accuracy"])
    assert "linear accuracy" in result.output and "L-BFGS" in probe["protocol"]
    parent_summary = json.loads((parent / "summary.json").read_text())
    old, new = r["old"], r["new"]
    assert old["parent"]["loss"] == pytest.approx(parent_summary["val_loss"], abs=1e-5)  # before = its own eval
    assert new["continued"]["loss"] == pytest.approx(child[1]["val_loss"], abs=1e-5)
    assert old["loss_change"] == pytest.approx(old["continued"]["loss"] - old["parent"]["loss"])
    assert new["continued"]["loss"] < new["parent"]["loss"]  # it learned the new domain
    assert old["parent"]["perplexity"] == pytest.approx(np.exp(old["parent"]["loss"]))


def test_image_run_continues_with_its_normalisation_and_replay(tmp_path):
    from selfsup.data.builtin.digits import write_digits

    write_digits(tmp_path / "digits")
    vision = ["image.size=8", "image.channels=1", "model.dim=32", "model.depth=1", "model.heads=2", "model.patch=4",
              "mae.decoder_dim=16", "mae.decoder_depth=1", "mae.decoder_heads=2", "train.batch_size=16",
              "train.max_steps=2", "train.eval_every=1", "data.workers=0"]
    parent = tmp_path / "mae"
    trainer.train(config.load("mae", [f"data.path={tmp_path / 'digits' / 'train'}", f"out_dir={parent}", *vision]),
                  quiet())
    cfg = load_config(str(parent), [f"continual.data={tmp_path / 'digits' / 'test'}", "continual.replay=0.5"])
    summary = trainer.train(cfg, quiet())
    mean = config.load_yaml(parent / "config.yaml")["image"]["mean"]
    assert config.load_yaml(tmp_path / "mae-continual" / "config.yaml")["image"]["mean"] == mean  # not re-measured
    assert summary["data"]["replay"]["images"]["train"] > 0 and summary["data"]["images"]["train"] < 500
    assert all("val_loss_old" in json.loads(line)
               for line in (tmp_path / "mae-continual" / "metrics.jsonl").read_text().splitlines())


def test_a_continuation_on_token_shards_is_the_continuation_on_their_corpus(parent, child, new_corpus, tmp_path):
    """The new stream tokenized ahead with the parent's tokenizer (`selfsup data tokenize --tokenizer`), which the
    shards hold re-saved: the continuation reads them in place and trains as it does on the corpus."""
    shards = tmp_path / "shards"
    tokens.tokenize(DataConfig(path=str(new_corpus), tokenizer=str(parent / "tokenizer.json")), None, shards,
                    log=lambda s: None)
    out = tmp_path / "on-shards"
    trainer.train(load_config(str(parent), [f"continual.data={shards}", "continual.replay=0.25", *CHILD,
                                            f"out_dir={out}"]), quiet())
    assert losses(out) == losses(parent.with_name("parent-continual"))


def test_one_line_errors(parent, new_corpus, child, tmp_path):
    with pytest.raises(ConfigError, match="continual.replay"):
        load_config(str(parent), [f"continual.data={new_corpus}", "continual.replay=1.0"])
    with pytest.raises(ConfigError, match="continual.replay needs the old domain to replay"):
        load_config("gpt-clm", ["continual.replay=0.2"])
    with pytest.raises(ConfigError, match="not a run directory"):
        load_config("gpt-clm", [f"continual.data={new_corpus}"])
    with pytest.raises(ConfigError, match="already holds a run continuing .* continual.replay=0.25; expected another "
                                          "out_dir"):
        load_config(str(parent), [f"continual.data={new_corpus}", "continual.replay=0.5"])  # the default out_dir
    with pytest.raises(ConfigError, match="already holds a run continuing"):
        load_config(str(parent.with_name("parent-continual")), ["continual.replay=0"])  # resumed with another share
    with pytest.raises(ConfigError, match="its own directory"):
        load_config(str(parent), [f"continual.data={new_corpus}", f"out_dir={parent}"])
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((parent / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="no final model.safetensors"):
        load_config(str(unfinished), [f"continual.data={new_corpus}"])
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="trained clm on text, so the new stream must be text"):
        load_config(str(parent), [f"continual.data={images}"])
    vision = tmp_path / "vision"
    vision.mkdir()
    (vision / "config.yaml").write_text(config.dump(config.load("simclr", [f"out_dir={vision}"])))
    (vision / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match="trained simclr on image, so the new stream must be image"):
        load_config(str(vision), [f"continual.data={new_corpus}"])
    result = CliRunner().invoke(app, ["eval", str(parent), "--task", "forgetting"])
    assert isinstance(result.exception, ConfigError) and "continues no run" in str(result.exception)


def test_package_docstrings_make_a_deterministic_corpus(tmp_path):
    from selfsup.data.builtin.package_docs import write_docstrings

    pkg = tmp_path / "pkg"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "b.py").write_text('"""Module b."""\ndef f():\n    """Does f."""\n')
    (pkg / "a.py").write_text('class A:\n    """An A."""\n')
    (pkg / "tests" / "test_a.py").write_text('"""Tests are left out."""\n')
    counts = write_docstrings([str(pkg)], tmp_path / "docs.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "docs.jsonl").read_text().splitlines()]
    assert counts == {str(pkg): 3} and [d["text"] for d in lines] == ["An A.", "Module b.", "Does f."]
    with pytest.raises(DataError, match="neither an installed package nor a folder"):
        write_docstrings(["no_such_package_xyz"], tmp_path / "x.jsonl")
