"""The Hugging Face export loads with transformers' Auto classes and gives selfsup's logits."""

import pytest
import torch

from selfsup.cli import app
from tests.conftest import TINY
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
    assert ids == [ours_tok.token_to_id("<|endoftext|>")] + ours_tok.encode(text).ids  # EOS opens it, as in training
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = objective.model.logits(objective.model(x))
        got = hf(input_ids=x).logits
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4)


def test_safetensors_export_has_weights_config_and_tokenizer(run, tmp_path):
    invoke("export", run, "--format", "safetensors", "--out", tmp_path / "st")
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["README.md", "config.yaml", "model.safetensors",
                                                                    "tokenizer.json"]


@pytest.fixture(scope="module")
def mlm_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm") / "run"
    invoke("train", "bert-mlm", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=6")
    return out


@pytest.fixture(scope="module")
def hybrid_mlm_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid") / "run"
    invoke("train", "hybrid-mlm-contrastive", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=4")
    return out


@pytest.mark.parametrize("which", ["mlm_run", "hybrid_mlm_run"])
def test_mlm_export_loads_as_modernbert_with_the_same_logits(which, request, tmp_path):
    """A masked LM, and a hybrid with an mlm term (exported with that term's head)."""
    from selfsup.rundir import open_run

    mlm_run = request.getfixturevalue(which)
    invoke("export", mlm_run, "--format", "hf", "--out", tmp_path / "hf")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", attn_implementation="sdpa").eval()
    assert type(hf).__name__ == "ModernBertForMaskedLM"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    _, objective, _ = open_run(mlm_run, torch.device("cpu"))
    head = objective.terms["mlm"].head if which == "hybrid_mlm_run" else objective.head
    batch = tok(["Return the number of items.", "Split a <|mask|> into parts, then more."], padding=True,
                return_tensors="pt")  # the tokenizer opens each with EOS
    pad_mask = batch["attention_mask"].bool()
    with torch.no_grad():
        h = head(objective.model(batch["input_ids"], pad_mask=pad_mask))
        expected = objective.model.logits(h) + head.bias
        got = hf(**batch).logits
    assert got.shape == expected.shape
    assert torch.allclose(got[pad_mask], expected[pad_mask], atol=1e-4)  # padded positions carry no meaning


def test_export_of_an_unmappable_model_says_why(corpus, tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "run"
    invoke("train", "gpt-clm", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=2", "model.mlp=gelu")
    result = CliRunner().invoke(app, ["export", str(out), "--format", "hf", "--out", str(tmp_path / "x")])
    assert "model.mlp=gelu" in str(result.exception)


def test_perplexity_of_a_masked_lm_is_refused(mlm_run, tmp_path):
    from typer.testing import CliRunner

    held = tmp_path / "h.txt"
    held.write_text("some text\n")
    result = CliRunner().invoke(app, ["eval", str(mlm_run), "--task", "perplexity", "--data", str(held)])
    assert "scores a causal LM" in str(result.exception)
