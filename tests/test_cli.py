import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from selfsup.cli import app
from tests.conftest import TINY

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    text = invoke("train", "gpt-clm", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=20",
                  "train.eval_every=10")
    assert "validation perplexity" in text and "unigram baseline perplexity" in text
    return out


def test_recipes_lists_each_with_a_line():
    assert "gpt-clm" in invoke("recipes") and "causal LM" in invoke("recipes")


def test_train_help_lists_every_key():
    text = invoke("train", "--help")
    for key in ("train.max_steps", "optim.name", "sched.warmup_steps", "model.context", "data.path"):
        assert key in text


def test_report_is_written(run):
    html = (run / "report.html").read_text()
    assert "data:image/png;base64" in html and "gpt-clm" in html
    (run / "report.html").unlink()
    assert "report.html" in invoke("report", run)
    assert (run / "report.html").is_file()


def test_eval_perplexity_writes_json(run, corpus, tmp_path):
    held_out = tmp_path / "held.txt"
    held_out.write_text("Return the number of items in the container.\n\xa0\nSplit the path into a pair.\n")
    text = invoke("eval", run, "--task", "perplexity", "--data", held_out)
    result = json.loads((run / "eval" / "perplexity.json").read_text())
    assert result["task"] == "perplexity" and result["documents"] == 2 and result["skipped"] == {"empty": 1}
    assert 1 < result["perplexity"] < 512 and "protocol" in result and "perplexity" in text
    assert result["perplexity"] == pytest.approx(2.718281828 ** result["loss"])


def test_generate_continues_the_prompt(run):
    first = invoke("generate", run, "--prompt", "Return the", "--max-new-tokens", "10", "--seed", "3")
    assert first.startswith("Return the") and len(first) > len("Return the")
    assert first == invoke("generate", run, "--prompt", "Return the", "--max-new-tokens", "10", "--seed", "3")
    greedy = invoke("generate", run, "--prompt", "Return", "--temperature", "0", "--max-new-tokens", "5")
    assert greedy.startswith("Return")


def test_bad_config_is_one_line_and_exit_2(corpus, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "selfsup", "train", "gpt-clm", "train.max_step=3"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown config key 'train.max_step' (did you mean 'train.max_steps'?)"
    proc = subprocess.run([sys.executable, "-m", "selfsup", "eval", tmp_path, "--data", "x.txt"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "is not a run directory" in proc.stderr and "Traceback" not in proc.stderr
