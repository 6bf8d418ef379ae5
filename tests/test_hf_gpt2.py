"""model.init and --format hf for GPT-2: a tiny random GPT2LMHeadModel saved by transformers starts a gpt-clm run with
its own logits (on a right-padded batch too), trains, and exports back; a run trained from scratch with GPT-2's
options exports as GPT2LMHeadModel; what our trunk cannot hold is refused in one line."""

import json

import pytest
import torch

from selfsup.config import ConfigError
from selfsup.train.continual import load_config
from tests.conftest import TINY
from tests.test_cli import invoke
from tests.test_init_llama import SMALL, holding

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["Return the number of items in the container.", "Split the string."]  # the second is padded


def gpt2_tokenizer(texts):
    """A byte-level BPE as GPT-2's: no special token but `<|endoftext|>`, added last (GPT-2's 50256; here 319)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=319, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


def gpt2_folder(root, corpus, **changes):
    """A tiny random GPT2LMHeadModel saved by transformers itself, with GPT-2's kind of tokenizer. Its biases and
    LayerNorm weights are moved off their zeros and ones, so a bias mapped to the wrong place shows."""
    tok = gpt2_tokenizer((corpus / "a.txt").read_text().splitlines())
    settings = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=320, n_positions=64, layer_norm_epsilon=1e-6,
                    bos_token_id=319, eos_token_id=319)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**(settings | changes))).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(root)
    tok.save(str(root / "tokenizer.json"))
    return root, model


@pytest.fixture(scope="module")
def gpt2(corpus, tmp_path_factory):
    return gpt2_folder(tmp_path_factory.mktemp("gpt2"), corpus)


def padded(folder):
    """Two texts right-padded to one length: ids (2, T) and attention_mask (2, T), 1 on real tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = [tok.encode(t).ids for t in TEXTS]
    T = max(map(len, ids))
    x = torch.tensor([i + [0] * (T - len(i)) for i in ids])  # (2, T)
    mask = torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])  # (2, T)
    assert mask[1].sum() < T
    return x, mask


def same_on_real_tokens(ours, theirs_logits, x, mask):
    """Our logits on the padded batch equal `theirs_logits` on every real token."""
    with torch.no_grad():
        got = ours.logits(ours(x, pad_mask=mask.bool()))[..., :theirs_logits.shape[-1]]  # (2, T, V)
    real = mask.bool()
    assert torch.allclose(got[real], theirs_logits[real], atol=1e-4)


def test_the_config_comes_from_the_model(gpt2, corpus):
    folder, _ = gpt2
    cfg = load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"])
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.kv_heads, m.vocab_size, m.mlp_hidden, m.norm_eps) == (32, 2, 2, 2, 320, 128,
                                                                                              1e-6)
    assert (m.mlp, m.norm, m.bias, m.learned_positions, m.tied) == ("gelu_tanh", "layernorm", "all", True, True)
    assert m.context == 64  # the recipe's 128 is more than n_positions
    assert cfg.data.tokenizer == str(folder / "tokenizer.json")  # its <|endoftext|> is our end-of-text token


@pytest.mark.parametrize("changes", [
    {},
    {"tie_word_embeddings": False},  # an lm_head of its own
    {"activation_function": "gelu", "n_inner": 96},  # exact GELU, an MLP width that is not 4 × n_embd
    {"reorder_and_upcast_attn": True, "attn_implementation": "eager"},  # the same product in another order
])
def test_imported_logits_equal_transformers_on_a_padded_batch(corpus, tmp_path, changes):
    from selfsup.models.gpt import GPT
    from selfsup.models.hf.init import load_init

    folder, hf = gpt2_folder(tmp_path, corpus, **changes)
    cfg = load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"])
    ours = GPT(cfg.model).eval()
    load_init(cfg, holding(ours))
    x, mask = padded(folder)
    with torch.no_grad():
        expected = hf(input_ids=x, attention_mask=mask).logits  # (2, T, 320)
    same_on_real_tokens(ours, expected, x, mask)


def test_a_checkpoint_saved_from_the_base_model_loads(gpt2, corpus, tmp_path):
    """openai-community/gpt2's own weights are GPT2Model's: named without the "transformer." prefix."""
    import shutil

    from selfsup.models.gpt import GPT
    from selfsup.models.hf.init import load_init

    folder, hf = gpt2
    hf.transformer.save_pretrained(tmp_path)
    shutil.copyfile(folder / "tokenizer.json", tmp_path / "tokenizer.json")
    cfg = load_config("gpt-clm", [f"model.init={tmp_path}", f"data.path={corpus}"])
    ours = GPT(cfg.model).eval()
    load_init(cfg, holding(ours))
    x, mask = padded(folder)
    with torch.no_grad():
        expected = hf(input_ids=x, attention_mask=mask).logits
    same_on_real_tokens(ours, expected, x, mask)


def test_train_from_the_model_and_export_back(gpt2, corpus, tmp_path):
    from selfsup.rundir import open_run

    folder, hf = gpt2
    out = tmp_path / "run"
    invoke("train", "gpt-clm", f"model.init={folder}", f"data.path={corpus}", f"out_dir={out}", *SMALL,
           "optim.lr=1e-9")  # two steps that barely move: the run still is the model it started from
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["n_positions"], config["activation_function"]) == ("gpt2", 32, "gelu_new")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "GPT2LMHeadModel"
    _, objective, _ = open_run(out, torch.device("cpu"))
    x, mask = padded(folder)
    with torch.no_grad():
        exported = back(input_ids=x, attention_mask=mask).logits  # (2, T, 320)
        started = hf(input_ids=x, attention_mask=mask).logits
    same_on_real_tokens(objective.model, exported, x, mask)  # the trained run, exported
    same_on_real_tokens(objective.model, started, x, mask)  # started from the model


def test_a_run_from_scratch_with_gpt2_options_exports_as_gpt2(corpus, tmp_path):
    from selfsup.rundir import open_run

    out = tmp_path / "run"
    invoke("train", "gpt-clm", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=2",
           "model.learned_positions=true", "model.bias=all", "model.norm=layernorm", "model.mlp=gelu_tanh",
           "model.tied=false")
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "GPT2LMHeadModel" and not back.config.tie_word_embeddings
    _, objective, _ = open_run(out, torch.device("cpu"))
    x, mask = padded(out)
    with torch.no_grad():
        exported = back(input_ids=x, attention_mask=mask).logits
    same_on_real_tokens(objective.model, exported, x, mask)


@pytest.mark.parametrize("changes, says", [
    ({"scale_attn_by_inverse_layer_idx": True},
     "scale_attn_by_inverse_layer_idx true (our attention does not scale by layer)"),
    ({"add_cross_attention": True}, "add_cross_attention true (our decoder has no cross-attention)"),
    ({"scale_attn_weights": False}, "scale_attn_weights false (our attention scales by 1/sqrt(head size))"),
    ({"activation_function": "relu"},
     "activation_function 'relu' (expected one of: gelu_new, gelu_pytorch_tanh, gelu, quick_gelu)"),
])
def test_what_our_trunk_cannot_hold_is_refused(corpus, tmp_path, changes, says):
    folder, _ = gpt2_folder(tmp_path, corpus, **changes)
    with pytest.raises(ConfigError) as e:
        load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"])
    assert str(e.value) == f"model.init '{folder}': {says} is not supported yet"


def test_overrides_that_contradict_the_model_are_one_line(gpt2, corpus):
    folder, _ = gpt2
    cases = [("model.context=128", "model.context=128: model.init '{}' has n_positions 64; expected model.context "
                                   "<= 64"),
             ("model.bias=none", "model.bias=none: model.init '{}' has model.bias all; drop the override"),
             ("model.heads=4", "model.heads=4: model.init '{}' has n_head 2; drop the override")]
    for override, says in cases:
        with pytest.raises(ConfigError) as e:
            load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}", override])
        assert str(e.value) == says.format(folder)


def test_what_gpt2_cannot_hold_is_not_exported_as_gpt2(corpus):
    from selfsup.models.hf import gpt2, llama

    gqa = load_config("gpt-clm", [f"data.path={corpus}", "model.learned_positions=true", "model.bias=all",
                                  "model.norm=layernorm", "model.mlp=gelu_tanh", "model.kv_heads=2"])
    assert gpt2.unfit(gqa) == "multi-head attention (GPT-2 has no grouped-query attention; model.kv_heads=2)"
    assert llama.unfit(gqa).startswith("a causal LM with model.mlp=swiglu")
    rotary = load_config("gpt-clm", [f"data.path={corpus}", "model.bias=all", "model.norm=layernorm",
                                     "model.mlp=gelu_tanh"])
    assert gpt2.unfit(rotary).startswith("a causal LM with model.learned_positions=true")
