"""Every export carries a model card (README.md) whose metadata the Hub reads and whose usage snippet runs; causal
exports carry a generation config; `--push` is checked before any work and uploads the export folder."""

import json
import re

import pytest
import yaml

from selfsup.cli import app
from selfsup.model_card import PLACEHOLDER
from tests.test_cli import invoke, run, runner  # noqa: F401  (the trained run fixture)
from tests.test_export import mlm_run  # noqa: F401

transformers = pytest.importorskip("transformers")


def card(folder):
    """(metadata, body) of folder/README.md."""
    text = (folder / "README.md").read_text()
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def snippet(body, folder):
    """The card's python snippet with the export's path put in."""
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    return code.replace(PLACEHOLDER, str(folder))


def test_an_encoder_card_has_metadata_training_and_a_snippet_that_embeds(mlm_run, tmp_path):
    out = tmp_path / "hf"
    (mlm_run / "eval").mkdir(exist_ok=True)
    (mlm_run / "eval" / "linear.json").write_text(json.dumps({
        "task": "linear", "protocol": "linear probe: a protocol", "pretrained": {"accuracy": 0.5},
        "random": {"accuracy": 0.25}}))
    (mlm_run / "eval" / "linear-whitened.json").write_text(json.dumps({
        "task": "linear", "protocol": "linear probe: whitened", "pretrained": {"accuracy": 0.6}}))
    invoke("export", mlm_run, "--format", "hf", "--out", out, "--license", "apache-2.0", "--dataset", "org/corpus")
    meta, body = card(out)
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["org/corpus"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "feature-extraction"
    assert {"selfsup", "mlm", "bert-mlm"} <= set(meta["tags"])
    summary = json.loads((mlm_run / "summary.json").read_text())
    assert f"| steps | {summary['steps']:,} |" in body and "ModernBertForMaskedLM" in body
    assert "**linear**: pretrained 50.0%, random 25.0%. Protocol: linear probe: a protocol" in body
    assert "**linear-whitened**: pretrained 60.0%. Protocol: linear probe: whitened" in body  # named by its file
    scope = {}
    exec(snippet(body, out), scope)  # the card's own usage code
    assert tuple(scope["embeddings"].shape) == (2, scope["model"].config.hidden_size)


def test_a_causal_card_generates_and_the_export_has_a_generation_config(run, tmp_path):
    out = tmp_path / "hf"
    invoke("export", run, "--format", "hf", "--out", out)
    meta, body = card(out)
    assert meta["pipeline_tag"] == "text-generation" and "license" not in meta  # none given: none claimed
    generation = json.loads((out / "generation_config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert generation["eos_token_id"] == config["eos_token_id"] is not None
    exec(snippet(body, out), {})  # loads and generates


def test_push_is_checked_before_any_work_and_uploads_the_export(run, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["export", str(run), "--format", "hf", "--out", str(tmp_path / "a"), "--push",
                                 "org/model"])
    assert "HF_HUB_OFFLINE is set" in str(result.exception) and not (tmp_path / "a").exists()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    result = runner.invoke(app, ["export", str(run), "--format", "hf", "--out", str(tmp_path / "a"), "--push",
                                 "org/model"])
    assert "no Hugging Face token found" in str(result.exception) and not (tmp_path / "a").exists()
    result = runner.invoke(app, ["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "a"),
                                 "--push", "org/model"])
    assert "expected --format hf" in str(result.exception)

    calls = {}
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_token")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: calls.update(repo=repo, **kw))

    def upload_folder(self, folder_path, repo_id, **kw):
        calls["files"] = sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())
        return f"https://hub.example/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    said = invoke("export", run, "--format", "hf", "--out", tmp_path / "b", "--push", "org/model")
    assert calls["repo"] == "org/model" and calls["private"] is True
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(calls["files"])
    assert "uploaded to https://hub.example/org/model/commit/1" in said
    assert "\n# org/model\n" in (tmp_path / "b" / "README.md").read_text()  # the card is titled with its Hub name
