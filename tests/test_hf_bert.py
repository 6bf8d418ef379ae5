"""model.init: a Hugging Face BERT or RoBERTa (masked LM or bare model) starts an mlm, simcse or hybrid run with
transformers' own outputs on a padded batch, its tokenizer's special tokens renamed ours; the run exports back as a
BertForMaskedLM with its logits; a run without an mlm term (contriever's simcse) exports as the bare BertModel with
its states and `selfsup embed`'s vectors; what our encoder cannot hold is refused in one line."""

import json

import numpy as np
import pytest
import torch

from selfsup.cli import app
from selfsup.config import ConfigError
from selfsup.data.read.tokenizer import EOS, MASK, PAD
from selfsup.train.continual import load_config
from tests.conftest import TINY
from tests.test_cli import invoke, runner
from tests.test_init_llama import byte_bpe

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["train.batch_size=4", "train.eval_batches=2", "sched.warmup_steps=2", "train.max_steps=2",
         "train.eval_every=2", "train.log_every=1", "model.context=32"]
TEXTS = ["Return the number of items in the container.", "Split a string into parts."]
BERT = ["model.mlp=gelu", "model.bias=all", "model.norm_position=post", "model.learned_positions=true"]  # our options


def wordpiece(texts):
    """BERT's tokenizer: lower-cased WordPiece, [PAD] [UNK] [CLS] [SEP] [MASK] = 0..4, [CLS] text [SEP]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    return tok


def roberta_bpe(texts):
    """RoBERTa's tokenizer: byte-level BPE, <s> <pad> </s> <unk> <mask> = 0..4, <s> text </s>."""
    from tokenizers import processors

    return byte_bpe(texts, 400, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                    processors.RobertaProcessing(("</s>", 2), ("<s>", 0)))


def bert_folder(root, corpus, kind="bert", cls="ForMaskedLM", **changes):
    """A tiny random BERT or RoBERTa saved by transformers itself, with its kind of tokenizer.json. Its biases,
    norms and token types are random too (not transformers' zeros and ones), so any tensor mapped wrong shows."""
    texts = (corpus / "a.txt").read_text().splitlines()
    tok = wordpiece(texts) if kind == "bert" else roberta_bpe(texts)
    settings = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2,
                    vocab_size=tok.get_vocab_size(), max_position_embeddings=66 if kind == "roberta" else 64,
                    type_vocab_size=2 if kind == "bert" else 1, layer_norm_eps=1e-12 if kind == "bert" else 1e-5)
    config = (transformers.BertConfig if kind == "bert" else transformers.RobertaConfig)(**(settings | changes))
    torch.manual_seed(0)
    model = getattr(transformers, ("Bert" if kind == "bert" else "Roberta") + cls)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "token_type" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(root)
    tok.save(str(root / "tokenizer.json"))
    return root, model


@pytest.fixture(scope="module")
def bert(corpus, tmp_path_factory):
    return bert_folder(tmp_path_factory.mktemp("bert"), corpus)


@pytest.fixture(scope="module")
def roberta(corpus, tmp_path_factory):
    return bert_folder(tmp_path_factory.mktemp("roberta"), corpus, "roberta")


def padded(folder):
    """Two texts as the model's tokenizer encodes them ([CLS] text [SEP]), right-padded: (ids, attention_mask)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    pad = 0 if tok.token_to_id("[PAD]") == 0 else 1
    ids = [e.ids for e in tok.encode_batch(TEXTS)]
    T = max(map(len, ids))
    x = torch.tensor([i + [pad] * (T - len(i)) for i in ids])  # (2, T)
    return x, x != pad


def mlm_logits(objective, x, pad_mask):
    head = objective.terms["mlm"].head if hasattr(objective, "terms") else objective.head
    hidden = objective.model(x, pad_mask=pad_mask)  # (B, T, D)
    return objective.model.logits(head(hidden)) + head.bias


def built(cfg, init=True):
    """The objective cfg names, with the folder's weights (model.init)."""
    from selfsup.data.read.tokenizer import load
    from selfsup.models.hf.init import load_init
    from selfsup.objectives.build import build_objective

    objective = build_objective(cfg, load(cfg.data.tokenizer))
    line = load_init(cfg, objective)[1] if init else None
    return objective.eval(), line


def squeeze(text):
    return "".join(text.split())


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_the_config_and_the_tokenizer_come_from_the_model(which, request, corpus):
    from tokenizers import Tokenizer

    from selfsup.data.read.tokenizer import load
    from selfsup.views.masking import MaskingTable

    folder, _ = request.getfixturevalue(which)
    cfg = load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"])
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.mlp_hidden, m.mlp, m.norm, m.bias, m.norm_position, m.learned_positions) == (
        32, 2, 2, 80, "gelu", "layernorm", "all", "post", True)
    assert m.norm_eps == (1e-12 if which == "bert" else 1e-5)
    assert m.context == 64  # BERT's 64 positions; RoBERTa's 66 less its offset of 2 (the recipe's 128 is more)
    tok, theirs = load(cfg.data.tokenizer), Tokenizer.from_file(str(folder / "tokenizer.json"))
    names = {"bert": ("[CLS]", "[PAD]", "[MASK]"), "roberta": ("<s>", "<pad>", "<mask>")}[which]
    assert [tok.token_to_id(t) for t in (EOS, PAD, MASK)] == [theirs.token_to_id(t) for t in names]
    assert tok.token_to_id(names[0]) is None and tok.get_vocab_size() == theirs.get_vocab_size()
    assert tok.encode(TEXTS[0]).ids == theirs.encode(TEXTS[0]).ids  # [CLS] text [SEP]: only names changed
    assert MaskingTable(tok, 448).mask_id == theirs.token_to_id(names[2])  # the model's own mask token masks


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_imported_logits_equal_transformers_on_a_padded_batch(which, request, corpus):
    folder, hf = request.getfixturevalue(which)
    objective, line = built(load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"]))
    assert "fresh" not in line  # the head is the model's
    x, mask = padded(folder)
    with torch.no_grad():
        ours = mlm_logits(objective, x, mask)[..., :hf.config.vocab_size]
        expected = hf(input_ids=x, attention_mask=mask.long()).logits
    assert torch.allclose(ours[mask], expected[mask], atol=1e-4)  # padded positions carry no meaning


def test_train_from_bert_and_export_back(bert, corpus, tmp_path):
    from selfsup.rundir import open_run

    folder, hf = bert
    out = tmp_path / "run"
    said = invoke("train", "bert-mlm", f"model.init={folder}", f"data.path={corpus}", f"out_dir={out}", *SMALL,
                  "optim.lr=1e-9")  # two steps that barely move: the run still is the model it started from
    assert squeeze(f"its CLS token '[CLS]' is renamed '{EOS}', its padding token '[PAD]' is renamed '{PAD}', its "
                   f"mask token '[MASK]' is renamed '{MASK}' in data.tokenizer") in squeeze(said)
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "BertForMaskedLM"
    _, objective, _ = open_run(out, torch.device("cpu"))
    x, mask = padded(folder)
    with torch.no_grad():
        ours = mlm_logits(objective, x, mask)
        assert torch.allclose(back(input_ids=x, attention_mask=mask.long()).logits[mask], ours[mask], atol=1e-4)
        expected = hf(input_ids=x, attention_mask=mask.long()).logits
        assert torch.allclose(ours[mask][:, :hf.config.vocab_size], expected[mask], atol=1e-3)  # where it started
    from tests.test_model_card import card, snippet

    scope = {}
    exec(snippet(card(tmp_path / "hf")[1], tmp_path / "hf"), scope)  # AutoModel: the trunk, without a random pooler
    assert scope["model"].pooler is None and tuple(scope["embeddings"].shape) == (2, hf.config.hidden_size)


def test_a_roberta_hybrid_trains_and_exports_as_bert(roberta, corpus, tmp_path):
    from selfsup.rundir import open_run

    folder, _ = roberta
    out = tmp_path / "run"
    said = invoke("train", "hybrid-mlm-contrastive", f"model.init={folder}", f"data.path={corpus}", f"out_dir={out}",
                  *SMALL)
    assert squeeze("terms.simcse.projector starts fresh (not in the folder)") in squeeze(said)
    assert squeeze("its CLS token '<s>' is renamed") in squeeze(said)
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "BertForMaskedLM" and back.config.max_position_embeddings == 32
    _, objective, _ = open_run(out, torch.device("cpu"))
    x, mask = padded(folder)
    with torch.no_grad():
        ours = mlm_logits(objective, x, mask)
        assert torch.allclose(back(input_ids=x, attention_mask=mask.long()).logits[mask], ours[mask], atol=1e-4)


def test_a_bare_bert_starts_simcse_with_its_cls_state(corpus, tmp_path):
    """BertModel has no MLM head: an mlm run's starts fresh, and says so; SimCSE pools its [CLS] state."""
    from selfsup.objectives.simcse import longest_segment

    folder, hf = bert_folder(tmp_path / "bare", corpus, cls="Model")
    cfg = load_config("simcse", [f"model.init={folder}", f"data.path={corpus}", "model.pooling=cls"])
    objective, line = built(cfg)
    assert "projector starts fresh" in line
    x, _ = padded(folder)
    x = x[:1, :-1]  # the longer text, [CLS] .. [SEP]: the [CLS] (our EOS) opens the one document
    doc_ids = torch.cumsum(x == objective.eos_id, dim=1)
    with torch.no_grad():
        ours = objective.embed(x, doc_ids, longest_segment(doc_ids))  # (1, D)
        expected = hf(input_ids=x).last_hidden_state[:, 0]
    assert torch.allclose(ours, expected, atol=1e-4)
    _, line = built(load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"]))
    assert "head starts fresh (not in the folder)" in line
    invoke("train", "simcse", f"model.init={folder}", f"data.path={corpus}", f"out_dir={tmp_path / 'run'}", *SMALL,
           "model.pooling=cls")


def test_tf_era_layer_norm_names_load(bert, corpus, tmp_path):
    """Checkpoints converted from TensorFlow name LayerNorm's weight and bias gamma and beta."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder, hf = bert
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(folder / name, tmp_path / name)
    tensors = load_file(folder / "model.safetensors")
    save_file({k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    objective, _ = built(load_config("bert-mlm", [f"model.init={tmp_path}", f"data.path={corpus}"]))
    x, mask = padded(folder)
    with torch.no_grad():
        ours = mlm_logits(objective, x, mask)[..., :hf.config.vocab_size]
        assert torch.allclose(ours[mask], hf(input_ids=x, attention_mask=mask.long()).logits[mask], atol=1e-4)


def test_a_run_with_bert_options_exports_as_bert(corpus, tmp_path):
    from selfsup.rundir import open_run

    out = tmp_path / "run"
    invoke("train", "bert-mlm", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=2", *BERT)
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "BertForMaskedLM" and back.config.layer_norm_eps == 1e-5
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tok([TEXTS[0], "Split a <|mask|> into parts, then more."], padding=True, return_tensors="pt")
    mask = batch["attention_mask"].bool()
    _, objective, _ = open_run(out, torch.device("cpu"))
    again, _ = built(load_config("bert-mlm", [f"model.init={tmp_path / 'hf'}", f"data.path={corpus}"]))
    with torch.no_grad():
        ours = mlm_logits(objective, batch["input_ids"], mask)
        assert torch.allclose(back(**batch).logits[mask], ours[mask], atol=1e-4)
        assert torch.allclose(mlm_logits(again, batch["input_ids"], mask)[mask], ours[mask], atol=1e-4)  # and back
    geglu = tmp_path / "geglu"
    invoke("train", "bert-mlm", f"data.path={corpus}", f"out_dir={geglu}", *TINY, "train.max_steps=1",
           "model.norm_position=post")
    result = runner.invoke(app, ["export", str(geglu), "--format", "hf", "--out", str(tmp_path / "y")])
    assert "maps onto none of" in str(result.exception) and "BertForMaskedLM needs a masked LM" in str(result.exception)


def exported_batch(folder, texts=TEXTS):
    """texts as the export's tokenizer encodes them (EOS + text, right-padded, cut at the context): (ids, mask)."""
    batch = transformers.AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True,
                                                               return_tensors="pt")
    mask = batch["attention_mask"].bool()
    assert not mask.all()  # a padded batch
    return batch["input_ids"], mask


def assert_card_gives_embed(body: str, out, run, tmp_path) -> None:
    """The model card's usage code (AutoModel, then the run's pooling) run on its two texts gives what `selfsup
    embed` writes for them, to 1e-4."""
    from tests.test_model_card import snippet

    scope = {}
    exec(snippet(body, out), scope)
    texts = tmp_path / "texts.txt"
    texts.write_text("A first text.\nAnother one, longer than the first.\n")  # the snippet's texts
    invoke("embed", run, texts, "--out", tmp_path / "emb.npy", "--device", "cpu")
    expected = torch.from_numpy(np.load(tmp_path / "emb.npy"))
    assert torch.allclose(scope["embeddings"], expected, atol=1e-4)


@pytest.fixture(scope="module")
def contriever_run(corpus, tmp_path_factory):
    """A simcse run with BERT's options (the contriever recipe: mean pooling), two steps; a document a line, as the
    corpus holds too few files for data.document=file."""
    out = tmp_path_factory.mktemp("contriever") / "run"
    invoke("train", "contriever", f"data.path={corpus}", f"out_dir={out}", *TINY, "train.max_steps=2",
           "data.document=line", "ssl.proj_hidden=32", "ssl.proj_dim=16", *BERT)
    return out


def test_a_run_without_mlm_exports_as_a_bare_bert_with_our_states_and_embeddings(contriever_run, tmp_path):
    from safetensors import safe_open

    from selfsup.rundir import open_run
    from tests.test_model_card import card

    out = tmp_path / "hf"
    invoke("export", contriever_run, "--format", "hf", "--out", out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    with safe_open(out / "model.safetensors", "pt") as f:  # the bare model's names: no "bert.", no MLM head, no pooler
        assert f.keys() and not any(k.startswith(("bert.", "cls.", "pooler.")) for k in f.keys())
    back, info = transformers.AutoModel.from_pretrained(out, add_pooling_layer=False, output_loading_info=True)
    assert type(back) is transformers.BertModel and not info["missing_keys"] and not info["unexpected_keys"]
    x, mask = exported_batch(out)
    _, objective, _ = open_run(contriever_run, torch.device("cpu"))
    with torch.no_grad():
        ours = objective.model(x, pad_mask=mask)  # (B, T, D) the last block's post-norm states
        expected = back.eval()(input_ids=x, attention_mask=mask.long()).last_hidden_state
        assert torch.allclose(expected[mask], ours[mask], atol=1e-4)  # padded positions carry no meaning

    _, body = card(out)
    assert "BertModel" in body and "add_pooling_layer=False" in body and "model.pooling=mean" in body
    assert_card_gives_embed(body, out, contriever_run, tmp_path)


def test_a_bare_bert_export_imports_back_into_simcse(contriever_run, corpus, tmp_path):
    """model.init reads the bare export (prefix-free names) into the trunk; the projector, never exported, starts
    fresh."""
    from selfsup.rundir import open_run

    invoke("export", contriever_run, "--format", "hf", "--out", tmp_path / "hf")
    again, line = built(load_config("contriever", [f"model.init={tmp_path / 'hf'}", f"data.path={corpus}"]))
    assert "projector starts fresh" in line
    _, objective, _ = open_run(contriever_run, torch.device("cpu"))
    x, mask = exported_batch(tmp_path / "hf")
    with torch.no_grad():
        assert torch.allclose(again.model(x, pad_mask=mask)[mask], objective.model(x, pad_mask=mask)[mask], atol=1e-4)


@pytest.mark.parametrize("changes, says", [
    ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new' (our BERT MLP and MLM head are exact gelu)"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings false (our MLM decoder is the token embedding)"),
    ({"is_decoder": True}, "is_decoder true (our encoder is bidirectional, without cross-attention)"),
])
def test_what_our_encoder_cannot_hold_is_refused(corpus, tmp_path, changes, says):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 400} | changes))
    with pytest.raises(ConfigError) as e:
        load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"])
    assert str(e.value) == f"model.init '{folder}': {says} is not supported yet"


def test_wrong_objectives_overrides_and_tensors_are_one_line(bert, roberta, corpus, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = bert
    with pytest.raises(ConfigError, match="is a BertForMaskedLM, which starts objective mlm or simcse; this run has "
                                          "objective=clm"):
        load_config("gpt-clm", [f"model.init={folder}", f"data.path={corpus}"])
    with pytest.raises(ConfigError, match=r"objective=hybrid \(mae, simclr\)"):
        load_config("hybrid-mae-contrastive", [f"model.init={folder}", f"data.path={corpus}"])
    with pytest.raises(ConfigError) as e:
        load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}", "model.norm_position=pre"])
    assert str(e.value) == f"model.norm_position=pre: model.init '{folder}' has model.norm_position post; drop the " \
                           "override"
    with pytest.raises(ConfigError, match="model.context=128: .* has max_position_embeddings 66; expected "
                                          "model.context <= 64"):
        load_config("bert-mlm", [f"model.init={roberta[0]}", f"data.path={corpus}", "model.context=128"])
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    tensors = load_file(folder / "model.safetensors")
    del tensors["bert.encoder.layer.1.output.dense.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    cfg = load_config("bert-mlm", [f"model.init={tmp_path}", f"data.path={corpus}"])
    with pytest.raises(ConfigError) as e:
        built(cfg)
    assert str(e.value) == f"model.init '{tmp_path}': its weights have no 'bert.encoder.layer.1.output.dense.bias'; " \
                           "expected a BertForMaskedLM's tensors"


def test_a_tokenizer_without_a_mask_token_is_one_line(corpus, tmp_path):
    from tokenizers import Tokenizer

    folder, _ = bert_folder(tmp_path / "bert", corpus)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "[MASK]"]
    tok["model"]["vocab"]["[MASKED]"] = tok["model"]["vocab"].pop("[MASK]")
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    Tokenizer.from_file(str(folder / "tokenizer.json"))  # still a tokenizer
    with pytest.raises(ConfigError, match=r"its tokenizer.json has no mask token \(config.json's mask_token_id, "
                                          r"tokenizer_config.json's mask_token, or one of \[MASK\], <mask>\) and no "
                                          r"'<\|mask\|>'"):
        load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"])
    (folder / "tokenizer_config.json").write_text(json.dumps({"mask_token": "[MASKED]"}))
    cfg = load_config("bert-mlm", [f"model.init={folder}", f"data.path={corpus}"])
    assert Tokenizer.from_file(cfg.data.tokenizer).token_to_id(MASK) == 4


def test_whole_word_masking_reads_wordpiece_continuations(bert, corpus):
    """WordPiece marks a piece that continues a word with '##' (byte-level BPE marks a word's start instead)."""
    from selfsup.data.read.tokenizer import load
    from selfsup.views.masking import MaskingTable

    tok = load(load_config("bert-mlm", [f"model.init={bert[0]}", f"data.path={corpus}"]).data.tokenizer)
    table = MaskingTable(tok, 448)
    pieces = {piece: bool(table.word_start[i]) for piece, i in tok.get_vocab().items()}
    assert any(p.startswith("##") for p in pieces) and all(start != p.startswith("##") for p, start in pieces.items())
