"""`selfsup inspect` of a Hugging Face model folder or hf: id: what model.init would make of it, read from config.json,
tokenizer.json and the safetensors headers, without importing torch; and of an hf:datasets/ id, read as text."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from selfsup import cli
from selfsup.inspect import inspect_path
from tests.test_init_hub import MAIN, cached, hub  # noqa: F401  (hub: the fixture)
from tests.test_init_llama import llama_folder

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(corpus, tmp_path_factory):
    return llama_folder(tmp_path_factory.mktemp("llama"), corpus, num_key_value_heads=1)


def test_a_llama_folder(llama):
    folder, hf = llama
    title, rows = inspect_path(str(folder))
    r = dict(rows)
    assert title == f"Hugging Face model {folder}"
    assert r["architecture"] == "LlamaForCausalLM (model_type llama)"
    assert r["model.init"] == "maps onto objective clm (LlamaForCausalLM)"
    assert r["model"] == "dim 32, depth 2, heads 2, kv heads 1, vocab 320, context up to 64"
    assert r["parameters"] == f"{sum(p.numel() for p in hf.parameters()):,}"  # tied: the embedding once
    size = (folder / "model.safetensors").stat().st_size
    assert r["weights"] == f"1 safetensors file(s), {size / 1e6:,.1f} MB"
    assert r["tokenizer"].startswith("vocab 320; special tokens <|endoftext|>")
    assert r["end of text"] == "<|endoftext|> (selfsup's own)"
    out = CliRunner().invoke(cli.app, ["inspect", str(folder)]).output
    assert "maps onto objective clm" in out


def test_what_model_init_would_refuse_or_rename(corpus, tmp_path):
    folder, _ = llama_folder(tmp_path / "gelu", corpus, hidden_act="gelu", llama_tokens=True, eos_token_id=2)
    r = dict(inspect_path(str(folder))[1])
    assert r["model.init"] == "not supported: hidden_act 'gelu' (our SwiGLU is silu)" and "model" not in r
    assert r["end of text"] == "</s> (id 2), renamed <|endoftext|> in the copy model.init uses"
    other = tmp_path / "mamba"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}))
    r = dict(inspect_path(str(other))[1])
    assert r["architecture"] == "MambaForCausalLM (model_type mamba)"
    assert r["model.init"].startswith("not supported: model_type mamba; selfsup maps llama")
    assert r["weights"].startswith("1 of 1 safetensors file(s) not here (model.safetensors)")
    assert r["tokenizer"] == "no tokenizer.json (model.init needs the fast tokenizer)"


def test_a_hub_id_from_the_cache(hub, llama):  # noqa: F811
    folder, _ = llama
    snap = cached(hub, "org/tiny-llama", folder, MAIN, refs=["main"])
    title, rows = inspect_path("hf:org/tiny-llama")
    r = dict(rows)
    assert title == "Hugging Face model hf:org/tiny-llama"
    assert r["snapshot"] == f"commit {MAIN} in {snap.parent.parent}"
    assert r["model.init"] == "maps onto objective clm (LlamaForCausalLM)" and r["parameters"] == dict(
        inspect_path(str(folder))[1])["parameters"]


def test_no_torch_is_imported(llama):
    folder, _ = llama
    code = ("import sys; from selfsup.inspect import inspect_path; rows = dict(inspect_path(sys.argv[1])[1]); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(rows['parameters'])")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_hub_dataset_is_inspected_as_text(hub, corpus):  # noqa: F811
    snap = cached(hub, "org/corpus", corpus, MAIN, refs=["main"], kind="datasets")
    title, rows = inspect_path("hf:datasets/org/corpus")
    r = dict(rows)
    assert title == "data hf:datasets/org/corpus" and r["read as"] == "text (an hf: dataset)"
    assert r == {**rows_of(snap), "path": "hf:datasets/org/corpus", "read as": "text (an hf: dataset)"}


def rows_of(path):
    return dict(inspect_path(str(path))[1])
