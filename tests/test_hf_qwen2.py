"""model.init and --format hf for the Llama-shaped families beside Llama: Qwen2 (biases on q/k/v: model.bias=qkv)
and Mistral, each a tiny random model saved by transformers, imported with its own logits on a right-padded batch,
trained and exported back; a run from scratch with model.bias=qkv exports as Qwen2ForCausalLM. A sliding window
caps model.context where it would bind (our attention has none), and an explicit longer context is one line."""

import json

import pytest
import torch

from selfsup.config import ConfigError
from selfsup.data.read.tokenizer import train_bpe
from selfsup.train.continual import load_config
from tests.conftest import TINY
from tests.test_cli import invoke
from tests.test_hf_gpt2 import padded, same_on_real_tokens
from tests.test_init_llama import SMALL, holding

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=320, tie_word_embeddings=True, rms_norm_eps=1e-5,
                max_position_embeddings=64)


def folder_of(kind, root, corpus, **changes):
    """A tiny random Qwen2ForCausalLM or MistralForCausalLM (grouped-query: 2 heads, 1 key/value head) saved by
    transformers itself, with selfsup's byte-level BPE. Its biases and norm weights are moved off their zeros and
    ones, so a bias mapped to the wrong rows shows."""
    config, model = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                     "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[kind]
    torch.manual_seed(0)
    hf = model(config(**(SETTINGS | changes))).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(root)
    train_bpe((corpus / "a.txt").read_text().splitlines(), 320).save(str(root / "tokenizer.json"))
    return root, hf


@pytest.fixture(scope="module")
def qwen2(corpus, tmp_path_factory):
    return folder_of("qwen2", tmp_path_factory.mktemp("qwen2"), corpus)


def imported(folder, corpus, *overrides):
    from selfsup.models.gpt import GPT
    from selfsup.models.hf.init import load_init

    cfg = load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}", *overrides])
    ours = GPT(cfg.model).eval()
    load_init(cfg, holding(ours))
    return cfg, ours


def test_the_config_comes_from_the_model(qwen2, corpus):
    folder, _ = qwen2
    m = load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"]).model
    assert (m.dim, m.depth, m.heads, m.kv_heads, m.mlp_hidden, m.norm_eps, m.context) == (32, 2, 2, 1, 96, 1e-5, 64)
    assert (m.mlp, m.norm, m.bias, m.learned_positions, m.tied) == ("swiglu", "rmsnorm", "qkv", False, True)


@pytest.mark.parametrize("kind, changes", [
    ("qwen2", {}),
    ("qwen2", {"tie_word_embeddings": False}),
    ("mistral", {"sliding_window": 4096}),  # wider than the context: it never binds
    ("mistral", {"sliding_window": None, "num_key_value_heads": 2, "rope_theta": 500.0}),
])
def test_imported_logits_equal_transformers_on_a_padded_batch(corpus, tmp_path, kind, changes):
    folder, hf = folder_of(kind, tmp_path, corpus, **changes)
    cfg, ours = imported(folder, corpus)
    assert cfg.model.bias == ("qkv" if kind == "qwen2" else "none")
    x, mask = padded(folder)
    with torch.no_grad():
        expected = hf(input_ids=x, attention_mask=mask).logits  # (2, T, 320)
    same_on_real_tokens(ours, expected, x, mask)


def test_train_from_qwen2_and_export_back(qwen2, corpus, tmp_path):
    from selfsup.rundir import open_run

    folder, hf = qwen2
    out = tmp_path / "run"
    invoke("train", "gpt-clm", f"model.init={folder}", f"data.path={corpus}", f"out_dir={out}", *SMALL,
           "optim.lr=1e-9")  # two steps that barely move: the run still is the model it started from
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("qwen2", ["Qwen2ForCausalLM"])
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "Qwen2ForCausalLM" and back.config.num_key_value_heads == 1
    _, objective, _ = open_run(out, torch.device("cpu"))
    x, mask = padded(folder)
    with torch.no_grad():
        exported = back(input_ids=x, attention_mask=mask).logits
        started = hf(input_ids=x, attention_mask=mask).logits
    same_on_real_tokens(objective.model, exported, x, mask)  # the trained run, exported
    same_on_real_tokens(objective.model, started, x, mask)  # started from the model


def test_a_run_from_scratch_with_qkv_biases_exports_as_qwen2(corpus, tmp_path):
    from selfsup.rundir import open_run

    out = tmp_path / "run"
    invoke("train", "gpt-clm", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=2", "model.bias=qkv",
           "model.tied=false")
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "Qwen2ForCausalLM" and not back.config.tie_word_embeddings
    _, objective, _ = open_run(out, torch.device("cpu"))
    assert objective.model.blocks[0].attn.qkv.bias.abs().sum() > 0  # trained away from its zeros
    x, mask = padded(out)
    with torch.no_grad():
        exported = back(input_ids=x, attention_mask=mask).logits
    same_on_real_tokens(objective.model, exported, x, mask)


@pytest.mark.parametrize("kind, changes", [
    ("mistral", {"sliding_window": 8}),  # every layer
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}),  # layers from 1 on
])
def test_a_sliding_window_caps_the_context(corpus, tmp_path, kind, changes):
    """Within the window our full attention is the model's: the context is capped there (8 tokens, where a token
    still sees the 7 before it), and a longer one asked for is one line."""
    folder, hf = folder_of(kind, tmp_path, corpus, **changes)
    cfg, ours = imported(folder, corpus)
    assert cfg.model.context == 8
    x, mask = padded(folder)
    x, mask = x[:, :8], mask[:, :8]
    with torch.no_grad():
        expected = hf(input_ids=x, attention_mask=mask).logits
    same_on_real_tokens(ours, expected, x, mask)
    with pytest.raises(ConfigError) as e:
        load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}", "model.context=16"])
    assert str(e.value) == (f"model.context=16: model.init '{folder}' has sliding_window 8; expected model.context "
                            "<= 8")


def test_a_sliding_window_no_layer_uses_is_ignored(corpus, tmp_path):
    """Qwen2's window applies from layer max_window_layers on: with 2 layers and max_window_layers 2, to none."""
    folder, _ = folder_of("qwen2", tmp_path, corpus, use_sliding_window=True, sliding_window=8, max_window_layers=2)
    assert load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"]).model.context == 64


def test_published_config_files_read_as_transformers_reads_them():
    """Keys as the hub's config.json files write them (older transformers: no layer_types, keys left out)."""
    from selfsup.models.hf import llama
    from selfsup.models.hf.folder import context_limit

    shape = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6}
    qwen = shape | {"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 32768,
                    "max_window_layers": 21, "max_position_embeddings": 32768}  # Qwen2.5-0.5B: the window is off
    assert context_limit(qwen) == ("max_position_embeddings", 32768)
    assert context_limit(qwen | {"use_sliding_window": True, "sliding_window": 4096}) == ("sliding_window", 4096)
    mistral = shape | {"model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 32768}
    assert context_limit(mistral) == ("sliding_window", 4096)  # Mistral-7B-v0.1: every layer
    values = llama.config_values(mistral)  # no tie_word_embeddings: MistralConfig's False, as Llama's and Qwen2's
    assert (values["model.tied"], values["model.bias"]) == (False, "none")


def test_what_neither_exports_is_one_line(corpus):
    from selfsup.models.hf import llama

    for override in ("model.bias=all", "model.learned_positions=true", "model.norm_position=post",
                     "model.layer_scale=0.1"):
        cfg = load_config("gpt-clm", [f"data.path={corpus}", override])
        assert llama.unfit(cfg) == ("a causal LM with model.mlp=swiglu, model.norm=rmsnorm, model.bias=none (or qkv: "
                                    "Qwen2ForCausalLM), rotary positions, pre-norm, no layer scale")
