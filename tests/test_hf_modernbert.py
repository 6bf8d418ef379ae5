"""model.init: a Hugging Face ModernBERT (masked LM or bare model) with alternating local (sliding-window) and global
layers of their own rotary bases starts an mlm run with transformers' own outputs on a padded batch; the run, and
one trained from scratch with local layers, export back as ModernBertForMaskedLM with their logits; a run without
an mlm term (contriever's simcse) exports as the bare ModernBertModel with its states and `selfsup embed`'s vectors;
what our encoder cannot hold is refused in one line."""

import json

import pytest
import torch

from selfsup.config import ConfigError
from selfsup.data.read.tokenizer import EOS, MASK, PAD
from selfsup.train.continual import load_config
from tests.conftest import TINY
from tests.test_cli import invoke
from tests.test_hf_bert import assert_card_gives_embed, built, exported_batch, mlm_logits, squeeze
from tests.test_init_llama import byte_bpe

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["train.batch_size=4", "train.eval_batches=2", "sched.warmup_steps=2", "train.max_steps=2",
         "train.eval_every=2", "train.log_every=1", "model.context=32"]
TEXTS = ["Return the number of items in the container.",
         "Split a string into parts."]  # the first far longer than a local layer's window of 8


def bpe(texts):
    """ModernBERT's tokenizer: byte-level BPE, [UNK] [CLS] [SEP] [PAD] [MASK] = 0..4, [CLS] text [SEP]."""
    from tokenizers import processors

    return byte_bpe(texts, 400, ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
                    processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]))


def modernbert_folder(root, corpus, cls="ForMaskedLM", config_json=None, **changes):
    """A tiny random ModernBERT saved by transformers itself: layers global, local, local, global (every third),
    a window of 8 tokens, rotary bases 1000 (global) and 50 (local); its norms and biases random. config_json:
    keys that replace those save_pretrained wrote (older files' spelling)."""
    tok = bpe((corpus / "a.txt").read_text().splitlines())
    settings = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=2,
                    vocab_size=tok.get_vocab_size(), max_position_embeddings=64, local_attention=8,
                    global_rope_theta=1000.0, local_rope_theta=50.0, norm_eps=1e-6, pad_token_id=3, cls_token_id=1,
                    sep_token_id=2, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = getattr(transformers, "ModernBert" + cls)(transformers.ModernBertConfig(**(settings | changes))).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(root)
    if config_json is not None:
        hf = json.loads((root / "config.json").read_text())
        for key in ("layer_types", "rope_parameters"):
            hf.pop(key)
        (root / "config.json").write_text(json.dumps(hf | config_json))
        model = getattr(transformers, "ModernBert" + cls).from_pretrained(root).eval()  # as transformers reads it
    tok.save(str(root / "tokenizer.json"))
    return root, model


@pytest.fixture(scope="module")
def modernbert(corpus, tmp_path_factory):
    return modernbert_folder(tmp_path_factory.mktemp("modernbert"), corpus)


def padded(folder):
    """The texts as the model's tokenizer encodes them, right-padded with [PAD]: (ids, attention_mask)."""
    from tokenizers import Tokenizer

    ids = [e.ids for e in Tokenizer.from_file(str(folder / "tokenizer.json")).encode_batch(TEXTS)]
    T = max(map(len, ids))
    assert T > 12  # several windows long
    x = torch.tensor([i + [3] * (T - len(i)) for i in ids])  # (2, T)
    return x, x != 3


def test_the_config_and_the_tokenizer_come_from_the_model(modernbert, corpus):
    from tokenizers import Tokenizer

    from selfsup.data.read.tokenizer import load

    folder, _ = modernbert
    cfg = load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"])
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.mlp_hidden, m.norm_eps, m.mlp, m.bias) == (32, 4, 2, 48, 1e-6, "geglu", "none")
    assert (m.local_attention, m.global_every, m.rope_theta, m.local_rope_theta) == (8, 3, 1000.0, 50.0)
    tok, theirs = load(cfg.data.tokenizer), Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in (EOS, PAD, MASK)] == [1, 3, 4]
    assert tok.encode(TEXTS[1]).ids == theirs.encode(TEXTS[1]).ids


@pytest.mark.parametrize("variant", [
    {},  # layer_types and rope_parameters per layer type, as transformers 5 writes them
    {"config_json": {"global_attn_every_n_layers": 2, "global_rope_theta": 2000.0, "local_rope_theta": 30.0}},
    {"attention_bias": True, "mlp_bias": True, "norm_bias": True, "classifier_bias": True},  # model.bias=all
    {"layer_types": ["full_attention"] * 4, "decoder_bias": False},  # every layer global; no decoder bias
])
def test_imported_logits_equal_transformers_on_a_padded_batch(variant, modernbert, corpus, tmp_path):
    folder, hf = modernbert_folder(tmp_path / "m", corpus, **variant) if variant else modernbert
    objective, line = built(load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"]))
    assert "fresh" not in line
    x, mask = padded(folder)
    with torch.no_grad():
        ours = mlm_logits(objective, x, mask)[..., :hf.config.vocab_size]
        expected = hf(input_ids=x, attention_mask=mask.long()).logits
    assert torch.allclose(ours[mask], expected[mask], atol=1e-4)  # padded positions carry no meaning


def test_a_bare_modernbert_gives_its_states_and_a_fresh_head(corpus, tmp_path):
    folder, hf = modernbert_folder(tmp_path / "bare", corpus, cls="Model")
    objective, line = built(load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"]))
    assert "head starts fresh (not in the folder)" in line
    x, mask = padded(folder)
    with torch.no_grad():
        ours = objective.model(x, pad_mask=mask)
        expected = hf(input_ids=x, attention_mask=mask.long()).last_hidden_state
    assert torch.allclose(ours[mask], expected[mask], atol=1e-4)


def test_train_from_modernbert_and_export_back(modernbert, corpus, tmp_path):
    from selfsup.rundir import open_run

    folder, hf = modernbert
    out = tmp_path / "run"
    said = invoke("train", "bert-mlm", f"model.init={folder}", f"data.path={corpus}", f"out_dir={out}", *SMALL,
                  "optim.lr=1e-9")  # two steps that barely move: the run still is the model it started from
    assert squeeze(f"its CLS token '[CLS]' is renamed '{EOS}'") in squeeze(said)
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert back.config.layer_types == hf.config.layer_types and back.config.local_attention == 8
    assert back.config.rope_parameters["sliding_attention"]["rope_theta"] == 50.0
    _, objective, _ = open_run(out, torch.device("cpu"))
    x, mask = padded(folder)
    with torch.no_grad():
        ours = mlm_logits(objective, x, mask)
        assert torch.allclose(back(input_ids=x, attention_mask=mask.long()).logits[mask], ours[mask], atol=1e-4)
        expected = hf(input_ids=x, attention_mask=mask.long()).logits
        assert torch.allclose(ours[mask][:, :hf.config.vocab_size], expected[mask], atol=1e-3)  # where it started


@pytest.mark.parametrize("options", [
    ["model.local_attention=8", "model.global_every=2", "model.local_rope_theta=500"],
    ["model.bias=all"],
])
def test_a_run_trained_from_scratch_exports_with_its_layers(options, corpus, tmp_path):
    from selfsup.rundir import open_run

    out = tmp_path / "run"
    invoke("train", "bert-mlm", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=2", *options)
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "ModernBertForMaskedLM"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tok([TEXTS[0], "Split a <|mask|> into parts."], padding=True, return_tensors="pt")
    mask = batch["attention_mask"].bool()
    _, objective, _ = open_run(out, torch.device("cpu"))
    again, _ = built(load_config("bert-mlm", [f"model.init={tmp_path / 'hf'}", f"data.path={corpus}"]))
    with torch.no_grad():
        ours = mlm_logits(objective, batch["input_ids"], mask)
        assert torch.allclose(back(**batch).logits[mask], ours[mask], atol=1e-4)
        assert torch.allclose(mlm_logits(again, batch["input_ids"], mask)[mask], ours[mask], atol=1e-4)  # and back


@pytest.fixture(scope="module")
def contriever_run(corpus, tmp_path_factory):
    """A simcse run (the contriever recipe: mean pooling, geglu, layernorm), two steps; a document a line, as the
    corpus holds too few files for data.document=file."""
    out = tmp_path_factory.mktemp("contriever") / "run"
    invoke("train", "contriever", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=2",
           "data.document=line", "ssl.proj_hidden=32", "ssl.proj_dim=16")
    return out


def test_a_run_without_mlm_exports_as_a_bare_modernbert_with_our_states_and_embeddings(contriever_run, tmp_path):
    from safetensors import safe_open

    from selfsup.rundir import open_run
    from tests.test_model_card import card

    out = tmp_path / "hf"
    invoke("export", contriever_run, "--format", "hf", "--out", out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ModernBertModel"]
    with safe_open(out / "model.safetensors", "pt") as f:  # the bare model's names: no "model.", no MLM head
        assert f.keys() and not any(k.startswith(("model.", "head.", "decoder.")) for k in f.keys())
    back = transformers.AutoModel.from_pretrained(out).eval()
    assert type(back) is transformers.ModernBertModel
    x, mask = exported_batch(out, TEXTS)
    _, objective, _ = open_run(contriever_run, torch.device("cpu"))
    with torch.no_grad():
        ours = objective.model(x, pad_mask=mask)  # (B, T, D) the trunk's final-norm states
        expected = back(input_ids=x, attention_mask=mask.long()).last_hidden_state
        assert torch.allclose(expected[mask], ours[mask], atol=1e-4)  # padded positions carry no meaning

    _, body = card(out)
    assert "ModernBertModel" in body and "model.pooling=mean" in body
    assert_card_gives_embed(body, out, contriever_run, tmp_path)


def test_a_bare_modernbert_export_imports_back_into_simcse(contriever_run, corpus, tmp_path):
    """model.init reads the bare export (prefix-free names) into the trunk; the projector, never exported, starts
    fresh."""
    from selfsup.rundir import open_run

    invoke("export", contriever_run, "--format", "hf", "--out", tmp_path / "hf")
    again, _ = built(load_config("contriever", [f"model.init={tmp_path / 'hf'}", f"data.path={corpus}"]))
    _, objective, _ = open_run(contriever_run, torch.device("cpu"))
    x, mask = exported_batch(tmp_path / "hf", TEXTS)
    with torch.no_grad():
        assert torch.allclose(again.model(x, pad_mask=mask)[mask], objective.model(x, pad_mask=mask)[mask], atol=1e-4)


def test_local_layers_with_a_window_over_everything_are_global_ones():
    """The trunk's local layers differ from global ones by their window and rotary base alone."""
    from selfsup.config import ModelConfig
    from selfsup.models.encoder import Encoder

    x = torch.randint(0, 300, (2, 24))
    outs = []
    for local in ({}, {"local_attention": 48}, {"local_attention": 8},
                  {"local_attention": 48, "local_rope_theta": 7.0}):
        torch.manual_seed(0)
        outs.append(Encoder(ModelConfig(dim=32, depth=3, heads=2, context=32, vocab_size=300, norm="layernorm",
                                        mlp="geglu", global_every=2, **local)).eval()(x))
    assert torch.equal(outs[0], outs[1])  # bit for bit
    assert not torch.allclose(outs[0], outs[2]) and not torch.allclose(outs[0], outs[3])


@pytest.mark.parametrize("changes, says", [
    ({"layer_types": ["full_attention", "full_attention", "sliding_attention", "full_attention"]},
     "layer_types ['full_attention', 'full_attention', 'sliding_attention', 'full_attention'] (only layer i global "
     "where i is a multiple of n)"),
    ({"attention_bias": True}, "attention_bias true, mlp_bias false, norm_bias false, classifier_bias false (our "
                               "biases are on every layer or on none)"),
    ({"hidden_activation": "silu"}, "hidden_activation 'silu' (our GeGLU and MLM head are exact gelu)"),
    ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0}}}, "rope type 'linear' (only "
                                                                                        "plain RoPE)"),
])
def test_what_our_encoder_cannot_hold_is_refused(corpus, tmp_path, changes, says):
    folder = tmp_path / "modernbert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"], "hidden_size": 32,
        "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 48, "vocab_size": 400} | changes))
    with pytest.raises(ConfigError) as e:
        load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"])
    assert str(e.value) == f"model.init '{folder}': {says} is not supported yet"


def test_local_layer_keys_out_of_place_are_one_line(corpus):
    with pytest.raises(ConfigError, match="model.local_attention=8 is the bidirectional window of an encoder's local "
                                          "layers"):
        load_config("gpt-clm", ["model.local_attention=8", f"data.path={corpus}"])
    with pytest.raises(ConfigError, match="model.global_every=2 shapes the local layers of an encoder: expected "
                                          "model.local_attention set$"):
        load_config("bert-mlm", ["model.global_every=2", f"data.path={corpus}"])
    with pytest.raises(ConfigError, match=r"model.local_rope_theta=50.0 .* and rotary positions"):
        load_config("bert-mlm", ["model.local_attention=8", "model.local_rope_theta=50", "model.learned_positions=true",
                                 f"data.path={corpus}"])
    with pytest.raises(ConfigError, match="model.local_attention=8: xlnet-plm's two-stream attention needs"):
        load_config("xlnet-plm", ["model.local_attention=8", f"data.path={corpus}"])
