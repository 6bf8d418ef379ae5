"""Continued pretraining of an imported model: its lr warms up again from step 0, and `selfsup eval RUN --task
forgetting --old-data OLD` scores the model as imported and the continued run on the old and the new domain."""

import json

import pytest
import torch
from typer.testing import CliRunner

from selfsup.cli import app
from selfsup.config import ConfigError, SchedConfig
from selfsup.train.schedule import lr_at
from tests.test_cli import invoke
from tests.test_init_llama import SMALL, llama_folder, squeeze

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def continued(corpus, tmp_path_factory):
    """A tiny Llama, continued 6 steps on the jsonl half of the corpus (the new domain)."""
    root = tmp_path_factory.mktemp("continued")
    folder, hf = llama_folder(root / "llama", corpus)
    out = root / "run"
    invoke("train", "gpt-clm", f"model.init={folder}", f"data.path={corpus / 'sub'}", f"out_dir={out}", *SMALL,
           "train.max_steps=6", "sched.warmup_steps=4", "optim.lr=0.003", "train.eval_every=6")
    return folder, hf, out


def test_the_lr_warms_up_again_from_step_0(continued):
    _, _, out = continued
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in logged if "lr" in r]
    sched = SchedConfig(warmup_steps=4)
    assert lrs == pytest.approx([lr_at(i, 6, 0.003, sched) for i in range(6)])
    assert lrs[0] == pytest.approx(0.003 / 4) and lrs[3] == pytest.approx(0.003)  # warm-up, then the peak


def test_forgetting_compares_the_imported_model_with_the_run(continued, corpus):
    from selfsup.eval.forgetting import forgetting, validation_rows
    from selfsup.rundir import open_run

    folder, hf, out = continued
    result = CliRunner().invoke(app, ["eval", str(out), "--task", "forgetting", "--old-data", str(corpus / "a.txt"),
                                      "--batch-size", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    r = json.loads((out / "eval" / "forgetting.json").read_text())
    assert r["parent"].startswith(f"model.init {folder} (weights sha256 ")
    assert "namedby--old-data" in squeeze(result.output)
    assert r["old"]["data"] == str(corpus / "a.txt") and r["new"]["data"] == str(corpus / "sub")
    cfg, ours, _ = open_run(out, torch.device("cpu"))
    rows = validation_rows(cfg, cfg.data.model_copy(update={"path": str(corpus / "a.txt")}), 1)
    x = torch.as_tensor(rows.window(0)[None].astype("int64"))  # (1, T + 1): the first old-domain window
    with torch.no_grad():  # the parent is transformers' own model: its loss on the window, by hand
        logits = hf(input_ids=x[:, :-1]).logits  # (1, T, 320)
        loss = torch.nn.functional.cross_entropy(logits[0], x[0, 1:]).item()
    one, _ = forgetting(out, torch.device("cpu"), 1, max_rows=1, old_data=str(corpus / "a.txt"))
    assert one["old"]["parent"]["loss"] == pytest.approx(loss, abs=1e-4)
    assert one["old"]["continued"]["loss"] != pytest.approx(loss, abs=1e-3)  # 6 steps at lr 3e-3 moved it


def test_an_unknown_old_domain_is_one_line(continued, corpus):
    _, _, out = continued
    result = CliRunner().invoke(app, ["eval", str(out), "--task", "forgetting"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == (f"--task forgetting: '{out}' started from model.init '{continued[0]}', whose "
                                     "training data selfsup does not know; name data of its old domain with "
                                     "--old-data PATH (read like data.path; its validation split is scored), or "
                                     "train with continual.old_data=PATH")
    result = CliRunner().invoke(app, ["eval", str(out), "--task", "perplexity", "--data", str(corpus),
                                      "--old-data", str(corpus)])
    assert str(result.exception) == "--old-data is for --task forgetting (got --task perplexity)"


def test_an_imported_model_replays_and_watches_its_old_domain(continued, corpus, tmp_path):
    """continual.old_data names a model.init run's old domain: a share of each batch replays it, its validation loss
    is logged as training goes, and --task forgetting reads it without --old-data."""
    folder, _, _ = continued
    out = tmp_path / "run"
    old = str(corpus / "a.txt")
    with pytest.raises(ConfigError, match="continual.replay needs the old domain to replay"):
        from selfsup.train.continual import load_config

        load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus / 'sub'}", "continual.replay=0.25"])
    invoke("train", "gpt-clm", f"model.init={folder}", f"data.path={corpus / 'sub'}", f"out_dir={out}", *SMALL,
           f"continual.old_data={old}", "continual.replay=0.25")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["replay"]["path"] == old and summary["data"]["replay"]["share"] == 0.25
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss_old" in r for r in logged)  # forgetting as it happens
    result = CliRunner().invoke(app, ["eval", str(out), "--task", "forgetting", "--batch-size", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((out / "eval" / "forgetting.json").read_text())["old"]["data"] == old
