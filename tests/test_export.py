"""The Hugging Face export loads with transformers' Auto classes and gives selfsup's logits."""

import pytest
import torch

from selfsup.cli import app
from tests.test_cli import invoke, run  # noqa: F401  (the trained run fixture)

transformers = pytest.importorskip("transformers")


def test_hf_export_matches_selfsup_logits(run, tmp_path):
    from selfsup.rundir import open_run

    invoke("export", run, "--format", "hf", "--out", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    _, objective, ours_tok = open_run(run, torch.device("cpu"))
    text = "Return the number of items in the container."
    ids = tok(text)["input_ids"]
    assert ids == ours_tok.encode(text).ids
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = objective.model.logits(objective.model(x))
        got = hf(input_ids=x).logits
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4)


def test_safetensors_export_has_weights_config_and_tokenizer(run, tmp_path):
    invoke("export", run, "--format", "safetensors", "--out", tmp_path / "st")
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["config.yaml", "model.safetensors", "tokenizer.json"]
