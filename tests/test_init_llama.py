"""model.init: a Hugging Face Llama causal LM starts a gpt-clm run with its own logits, trains, and exports back to
transformers with the logits of the trained run; what our trunk cannot hold is refused in one line."""

import hashlib
import json

import pytest
import torch

from selfsup.cli import app
from selfsup.config import ConfigError
from selfsup.data.read.tokenizer import train_bpe
from selfsup.train.continual import load_config
from tests.test_cli import invoke, runner

transformers = pytest.importorskip("transformers")

SMALL = ["train.batch_size=4", "train.eval_batches=2", "model.context=32", "sched.warmup_steps=2",
         "train.max_steps=2", "train.eval_every=2", "train.log_every=1"]


def byte_bpe(texts, vocab_size: int, specials: list[str], post_processor):
    """A byte-level BPE trained on `texts` whose special tokens come first (ids 0, 1, ...), with `post_processor`:
    the tokenizer shape of Llama, RoBERTa and ModernBERT, each with its own specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.post_processor = post_processor
    return tok


def llama_tokenizer(texts):
    """A byte-level BPE with Llama 2's special tokens (<unk>, <s>, </s> = 0, 1, 2) and its BOS template."""
    from tokenizers import processors

    return byte_bpe(texts, 320, ["<unk>", "<s>", "</s>"],
                    processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1), ("</s>", 2)]))


def llama_folder(root, corpus, llama_tokens=False, **changes):
    """A tiny random LlamaForCausalLM saved by transformers itself, with a byte-level BPE tokenizer.json (selfsup's
    or, llama_tokens, one with Llama's special tokens). Its MLP width (96) is not one our mlp_ratio gives, and its
    norm eps (1e-5) not our default."""
    texts = (corpus / "a.txt").read_text().splitlines()
    tok = llama_tokenizer(texts) if llama_tokens else train_bpe(texts, 320)
    settings = dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2, vocab_size=320, tie_word_embeddings=True, rms_norm_eps=1e-5,
                    max_position_embeddings=64, rope_theta=500.0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**(settings | changes))).eval()
    model.save_pretrained(root)
    tok.save(str(root / "tokenizer.json"))
    return root, model


@pytest.fixture(scope="module")
def llama(corpus, tmp_path_factory):
    return llama_folder(tmp_path_factory.mktemp("llama"), corpus)


def holding(model):
    """`model` as an objective's backbone (load_init fills objective.model)."""
    return torch.nn.ModuleDict({"model": model})


def squeeze(text):
    """text without whitespace: the console wraps long lines wherever its width ends."""
    return "".join(text.split())


def batch(folder):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return torch.tensor([tok.encode("Return the number of items in the container.").ids])  # (1, T)


def test_the_config_comes_from_the_model(llama, corpus):
    folder, _ = llama
    cfg = load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"])
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.kv_heads, m.vocab_size, m.mlp_hidden, m.norm_eps) == (32, 2, 2, 2, 320, 96,
                                                                                              1e-5)
    assert m.rope_theta == 500.0 and m.context == 64  # the recipe's 128 is more than max_position_embeddings
    assert cfg.data.tokenizer == str(folder / "tokenizer.json")


def test_imported_logits_equal_transformers(llama, corpus):
    from selfsup.models.gpt import GPT
    from selfsup.models.hf.init import load_init

    folder, hf = llama
    cfg = load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"])
    ours = GPT(cfg.model).eval()
    assert len(load_init(cfg, holding(ours))[0]["sha256"]) == 64
    x = batch(folder)
    with torch.no_grad():
        got = ours.logits(ours(x))[..., :320]
        expected = hf(input_ids=x).logits
    assert torch.allclose(got, expected, atol=1e-4)


def test_train_from_the_model_and_export_back(llama, corpus, tmp_path):
    from selfsup.rundir import open_run

    folder, hf = llama
    out = tmp_path / "run"
    text = invoke("train", "gpt-clm", f"model.init={folder}", f"data.path={corpus}", f"out_dir={out}", *SMALL,
                  "optim.lr=1e-9")  # two steps that barely move: the run still is the model it started from
    assert squeeze(f"model.init: {folder} (weights sha256 ") in squeeze(text)
    saved = (out / "config.yaml").read_text()
    assert f"init: {folder}" in saved and "mlp_hidden: 96" in saved
    first = json.loads((out / "history.jsonl").read_text().splitlines()[0])
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert first["started_from"] == {"path": str(folder), "sha256": sha} and sha in squeeze(text)
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["intermediate_size"] == 96
    _, objective, _ = open_run(out, torch.device("cpu"))
    x = batch(folder)
    with torch.no_grad():
        ours = objective.model.logits(objective.model(x))
        assert torch.allclose(back(input_ids=x).logits, ours, atol=1e-4)  # the trained run, exported
        assert torch.allclose(ours[..., :320], hf(input_ids=x).logits, atol=1e-4)  # started from the model


def test_an_override_that_contradicts_the_model_is_one_line(llama, corpus):
    folder, _ = llama
    with pytest.raises(ConfigError) as e:
        load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}", "model.dim=64"])
    assert str(e.value) == f"model.dim=64: model.init '{folder}' has hidden_size 32; drop the override"
    with pytest.raises(ConfigError, match="model.context=128: .* max_position_embeddings 64; expected model.context "
                                          "<= 64"):
        load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}", "model.context=128"])


@pytest.mark.parametrize("changes, says", [
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' (our SwiGLU is silu)"),
    ({"mlp_bias": True}, "mlp_bias true (our Llama layout has no biases; Qwen2's are on q/k/v alone)"),
    ({"attention_bias": True}, "attention_bias true (our Llama layout has no biases; Qwen2's are on q/k/v alone)"),
])
def test_what_our_trunk_cannot_hold_is_refused(corpus, tmp_path, changes, says):
    folder, _ = llama_folder(tmp_path, corpus, **changes)
    with pytest.raises(ConfigError) as e:
        load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"])
    assert str(e.value) == f"model.init '{folder}': {says} is not supported yet"


def test_other_objectives_are_refused(llama, corpus, tmp_path):
    folder, _ = llama
    with pytest.raises(ConfigError, match="is a LlamaForCausalLM, which starts objective clm; this run has "
                                          "objective=mlm"):
        load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"])
    with pytest.raises(ConfigError, match=r"model.kv_heads \(3\) must divide model.heads \(4\)"):
        load_config("gpt-clm", ["model.heads=4", "model.kv_heads=3", f"data.path={corpus}"])
    with pytest.raises(ConfigError, match="model.kv_heads=1: xlnet-plm's two-stream attention needs the trunk's "
                                          "defaults"):
        load_config("xlnet-plm", ["model.kv_heads=1", f"data.path={corpus}"])
    with pytest.raises(ConfigError, match="model.norm_position=post: xlnet-plm's two-stream attention needs"):
        load_config("xlnet-plm", ["model.norm_position=post", f"data.path={corpus}"])
    with pytest.raises(ConfigError, match="model.tied=false gives the GPT decoder .* objective mlm ties"):
        load_config("bert-mlm", ["model.tied=false", f"data.path={corpus}"])
    with pytest.raises(ConfigError, match="model.mlp_hidden shapes a transformer; this run's modality is image with "
                                          "model.backbone=resnet18"):
        load_config("simclr", ["model.backbone=resnet18", "model.mlp_hidden=64"])
    with pytest.raises(ConfigError, match="model.tied shapes the text trunk; this run's modality is image"):
        load_config("dino", ["model.tied=false"])
    with pytest.raises(ConfigError, match="model.learned_positions shapes the text trunk or a ViT; this run's modality "
                                          "is audio"):
        load_config("audio-mask", ["model.learned_positions=true"])
    with pytest.raises(ConfigError, match="no readable config.json"):
        load_config("gpt-clm", [f"model.init={tmp_path}", f"data.path={corpus}"])


def test_a_tokenizer_without_our_eos_has_its_own_renamed(corpus, tmp_path):
    from tokenizers import Tokenizer

    from selfsup.data.read.tokenizer import EOS, eos_id, load

    folder, hf = llama_folder(tmp_path / "llama", corpus, llama_tokens=True, eos_token_id=2, bos_token_id=1)
    cfg = load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"])
    tok, theirs = load(cfg.data.tokenizer), Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert eos_id(tok) == 2 and tok.token_to_id("</s>") is None and tok.get_vocab_size() == theirs.get_vocab_size()
    text = "Return the number of items in the container."
    assert tok.encode(text).ids == theirs.encode(text).ids  # [<s>=1, ...]: only the name of token 2 changed
    out = tmp_path / "run"
    said = invoke("train", "gpt-clm", f"model.init={folder}", f"data.path={corpus}", f"out_dir={out}", *SMALL)
    assert squeeze(f"its end-of-text token '</s>' is renamed '{EOS}' in data.tokenizer") in squeeze(said)
    assert eos_id(load(out / "tokenizer.json")) == 2


def test_sharded_weights_load_as_one(llama, corpus, tmp_path):
    import shutil

    from selfsup.models.gpt import GPT
    from selfsup.models.hf.init import load_init

    folder, hf = llama
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    shutil.copyfile(folder / "tokenizer.json", tmp_path / "tokenizer.json")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    cfg = load_config("gpt-clm", [f"model.init={tmp_path}", f"data.path={corpus}"])
    ours = GPT(cfg.model).eval()
    load_init(cfg, holding(ours))
    x = batch(folder)
    with torch.no_grad():
        assert torch.allclose(ours.logits(ours(x))[..., :320], hf(input_ids=x).logits, atol=1e-4)


@pytest.mark.parametrize("changes", [
    {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2},  # a key/value head for 2 query heads
    {"tie_word_embeddings": False},  # an lm_head of its own
])
def test_gqa_and_an_untied_head_import_train_and_export(corpus, tmp_path, changes):
    from selfsup.models.gpt import GPT
    from selfsup.models.hf.init import load_init
    from selfsup.rundir import open_run

    folder, hf = llama_folder(tmp_path / "llama", corpus, **changes)
    cfg = load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"])
    m = cfg.model
    assert (m.heads, m.kv_heads, m.tied) == (changes.get("num_attention_heads", 2),
                                             changes.get("num_key_value_heads", 2),
                                             changes.get("tie_word_embeddings", True))
    ours = GPT(cfg.model).eval()
    load_init(cfg, holding(ours))
    x = batch(folder)
    with torch.no_grad():
        assert torch.allclose(ours.logits(ours(x))[..., :320], hf(input_ids=x).logits, atol=1e-4)
    out = tmp_path / "run"
    invoke("train", "gpt-clm", f"model.init={folder}", f"data.path={corpus}", f"out_dir={out}", *SMALL)
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert (back.config.num_key_value_heads, back.config.tie_word_embeddings) == (m.kv_heads, m.tied)
    _, objective, _ = open_run(out, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(back(input_ids=x).logits, objective.model.logits(objective.model(x)), atol=1e-4)


def test_a_resumed_run_goes_on_from_its_checkpoint(llama, corpus, tmp_path):
    folder, _ = llama
    out = tmp_path / "run"
    invoke("train", "gpt-clm", f"model.init={folder}", f"data.path={corpus}", f"out_dir={out}", *SMALL)
    said = invoke("train", out, "train.max_steps=3")
    assert squeeze(f"resuming from {out / 'checkpoints' / 'step-00000002'}") in squeeze(said)
    again = json.loads((out / "history.jsonl").read_text().splitlines()[1])
    assert again["step"] == 2 and "started_from" not in again  # its weights are the checkpoint's


def test_broken_weights_are_one_line(llama, corpus, tmp_path):
    import shutil

    from selfsup.models.gpt import GPT
    from selfsup.models.hf.init import load_init

    folder, _ = llama
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(folder / name, tmp_path / name)
    cfg = load_config("gpt-clm", [f"model.init={tmp_path}", f"data.path={corpus}", "data.cache_dir=" + str(tmp_path)])
    with pytest.raises(ConfigError, match=f"model.init '{tmp_path}' has no {tmp_path / 'model.safetensors'}"):
        load_init(cfg, holding(GPT(cfg.model)))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])  # truncated
    with pytest.raises(ConfigError, match="model.safetensors could not be read .*; expected a safetensors file"):
        load_init(cfg, holding(GPT(cfg.model)))


def test_a_grouped_query_encoder_is_not_exported_as_modernbert(corpus, tmp_path):
    from tests.conftest import TINY

    out = tmp_path / "run"
    invoke("train", "bert-mlm", f"data.path={corpus}", f"out_dir={out}", *TINY, "model.kv_heads=1",
           "train.max_steps=1")
    result = runner.invoke(app, ["export", str(out), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert "ModernBertForMaskedLM needs multi-head attention (ModernBERT has no grouped-query attention; " \
           "model.kv_heads=1)" in str(result.exception)
