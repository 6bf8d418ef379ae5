"""model.init and --format hf for SigLIP: a tiny random transformers SiglipModel (and a tokenizer shaped like
SigLIP's: lowercase words, each caption closed by </s>, padded with </s> to a fixed length and read whole, without
an attention mask) starts a siglip run with its own image embeddings, text embeddings and logits; the run trains
from the CLI and exports back as a SiglipModel (with a processor) that AutoModel loads with our embeddings; a run
trained from scratch with SigLIP's shape exports too; what does not map is one line."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from selfsup.config import ConfigError
from selfsup.data.read.captions import caption_arrays
from selfsup.data.read.tokenizer import EOS, load
from selfsup.models.hf import siglip
from selfsup.models.hf.init import load_init
from selfsup.objectives.build import build_objective
from selfsup.train.continual import load_config
from tests.test_cli import invoke
from tests.test_hf_clip import CAPTIONS, MEAN, SMALL, STD, WORDS, clip_tokenizer, images, pairs  # noqa: F401

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
# the keys that make the siglip recipe SigLIP's architecture (with align.embed_dim=model.dim)
SIGLIP_SHAPE = ["model.pooling=map", "text.learned_positions=true", "text.embed_norm=false", "text.pooling=last",
                "align.media_proj=false", "align.attend_padding=true"]


def siglip_tokenizer():
    """Words over a tiny vocabulary, <pad> </s> <unk> first as SigLIP's, each caption closed by </s>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>", *WORDS, ","])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>",
                                                unk_token="<unk>", model_max_length=16)


def siglip_folder(root, logit_scale=4.5, **vision):
    """A tiny random SiglipModel saved by transformers (more embedding rows than its tokenizer has tokens, as
    SigLIP's), its tokenizer and its image processor."""
    tok = siglip_tokenizer()
    text = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, vocab_size=300,
                max_position_embeddings=16, eos_token_id=1, bos_token_id=1, pad_token_id=1, projection_size=32)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                  patch_size=4) | vision
    torch.manual_seed(0)
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():  # trained SigLIPs end near these (transformers starts both at zero)
        model.logit_scale.fill_(logit_scale)
        model.logit_bias.fill_(-12.5)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    transformers.SiglipImageProcessor(size={"height": 16, "width": 16}, image_mean=MEAN,
                                      image_std=STD).save_pretrained(root)
    return root, model


@pytest.fixture(scope="module")
def hf_siglip(tmp_path_factory):
    return siglip_folder(tmp_path_factory.mktemp("siglip"))


def ours_and_theirs(objective, hf, tok, context):
    """(image embeds, text embeds, logits_per_image) of our objective and of transformers' model, on captions padded
    to `context` and read whole (SigLIP's way: transformers gets no attention mask)."""
    ids, mask = (torch.from_numpy(a) for a in caption_arrays(tok, CAPTIONS, context))
    pixels = images()
    with torch.no_grad():
        media = objective.project_media(objective.model(pixels))
        text = objective.embed_text(ids.long(), mask)
        out = hf(input_ids=ids.long(), pixel_values=pixels)
    ours = (media, text, objective.logit_scale.exp() * media @ text.t() + objective.logit_bias)
    return ours, (out.image_embeds, out.text_embeds, out.logits_per_image)


def test_the_config_and_the_captions_come_from_the_model(hf_siglip, pairs):  # noqa: F811
    folder, _ = hf_siglip
    cfg = load_config("siglip", [f"model.init={folder}", f"data.path={pairs}"])
    m, t, a = cfg.model, cfg.text, cfg.align
    assert (m.dim, m.mlp_hidden, m.mlp, m.pooling, m.learned_positions, m.norm_eps) == (32, 64, "gelu_tanh", "map",
                                                                                         True, 1e-6)
    assert (t.context, t.causal, t.embed_norm, t.pooling) == (16, False, False, "last")
    assert (a.embed_dim, a.media_proj, a.text_proj_bias, a.attend_padding) == (32, False, True, True)
    assert (cfg.image.mean, cfg.image.std) == (MEAN, STD)
    tok = load(cfg.data.tokenizer)  # a copy whose </s> is named <|endoftext|>, the same id
    assert cfg.data.tokenizer != str(folder / "tokenizer.json") and tok.token_to_id(EOS) == 1
    ids, mask = caption_arrays(tok, CAPTIONS, t.context)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)(CAPTIONS, padding="max_length", max_length=16,
                                                                truncation=True)
    assert ids.tolist() == theirs["input_ids"]  # text </s>, padded with </s>, cut to 16 with </s> kept
    assert ids[0, :5].tolist() == [3, 4, 9, 1, 1] and ids[2, -1] == 1


def test_imported_embeddings_and_logits_equal_transformers(hf_siglip, pairs):  # noqa: F811
    folder, hf = hf_siglip
    cfg = load_config("siglip", [f"model.init={folder}", f"data.path={pairs}"])
    tok = load(cfg.data.tokenizer)
    objective = build_objective(cfg, tok).eval()
    load_init(cfg, objective)
    for got, expected in zip(*ours_and_theirs(objective, hf, tok, cfg.text.context)):
        assert torch.allclose(got, expected, atol=1e-4)


def test_train_from_the_model_and_export_back(hf_siglip, pairs, tmp_path):  # noqa: F811
    from selfsup.rundir import open_run

    folder, hf = hf_siglip
    out = tmp_path / "run"
    invoke("train", "siglip", f"model.init={folder}", f"data.path={pairs}", f"out_dir={out}", *SMALL,
           "optim.lr=1e-9")
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "SiglipModel"
    cfg, objective, tok = open_run(out, torch.device("cpu"))
    ours, exported = ours_and_theirs(objective, back, tok, cfg.text.context)
    for got, expected in zip(ours, exported):
        assert torch.allclose(got, expected, atol=1e-4)  # the trained run, exported
    for got, expected in zip(ours, ours_and_theirs(objective, hf, tok, cfg.text.context)[1]):
        assert torch.allclose(got, expected, atol=1e-4)  # started from the model
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")
    pictures = [Image.open(pairs.parent / f"{i}.png") for i in range(3)]
    inputs = processor(text=CAPTIONS, images=pictures, padding="max_length", truncation=True, return_tensors="pt")
    assert inputs["input_ids"].tolist() == caption_arrays(tok, CAPTIONS, cfg.text.context)[0].tolist()
    assert inputs["pixel_values"].shape == (3, 3, 16, 16)
    invoke("eval", out, "--task", "retrieval", "--test", pairs)  # the joint space of a media tower without projection
    assert json.loads((out / "eval" / "retrieval.json").read_text())["pretrained"]["mean_recall"] >= 0


def test_a_run_from_scratch_with_siglips_shape_exports(pairs, tmp_path):  # noqa: F811
    """Our ViT's fixed sin-cos positions, no biases (model.bias=none) and LayerNorms without bias: as SigLIP's."""
    from selfsup.rundir import open_run

    clip_tokenizer().save_pretrained(tmp_path / "tok")
    out = tmp_path / "run"
    shape = ["model.dim=32", "model.depth=2", "model.heads=2", "text.dim=32", "text.depth=2", "text.heads=2",
             "text.vocab_size=600", "text.context=16", "align.embed_dim=32", "image.size=16", "model.pooling=map",
             "align.media_proj=false", "align.attend_padding=true", "text.learned_positions=true",
             "text.embed_norm=false", "text.pooling=last", "text.mlp=gelu_tanh", "model.mlp=gelu_tanh",
             "model.bias=none", "text.bias=none", "model.learned_positions=false",
             f"data.tokenizer={tmp_path / 'tok' / 'tokenizer.json'}"]
    invoke("train", "siglip", f"data.path={pairs}", f"out_dir={out}", *shape, *SMALL, "optim.lr=0.01")
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    cfg, objective, tok = open_run(out, torch.device("cpu"))
    for got, expected in zip(*ours_and_theirs(objective, back, tok, cfg.text.context)):
        assert torch.allclose(got, expected, atol=1e-4)


def test_what_does_not_map_is_one_line(hf_siglip, pairs, tmp_path):  # noqa: F811
    folder, _ = siglip_folder(tmp_path / "headless", vision_use_head=False)
    with pytest.raises(ConfigError) as e:
        load_config("siglip", [f"model.init={folder}", f"data.path={pairs}"])
    assert str(e.value) == (f"model.init '{folder}': vision_config.vision_use_head false (no pooled image embedding "
                            "to align) is not supported yet")
    folder, _ = hf_siglip
    weights = folder.parent / "missing"
    weights.mkdir()
    for f in folder.iterdir():
        (weights / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(weights / "model.safetensors"))
    del tensors["vision_model.head.probe"]
    save_file(tensors, str(weights / "model.safetensors"), metadata={"format": "pt"})
    cfg = load_config("siglip", [f"model.init={weights}", f"data.path={pairs}"])
    with pytest.raises(ConfigError) as e:  # where the weights are read, before training starts
        load_init(cfg, build_objective(cfg, load(cfg.data.tokenizer)))
    assert str(e.value) == (f"model.init '{weights}': its weights have no 'vision_model.head.probe'; expected a "
                            "SiglipModel's tensors")
    folder, _ = siglip_folder(tmp_path / "hot", logit_scale=4.76)  # exp: 117, as google/siglip-base-patch16-224's
    cfg = load_config("siglip", [f"model.init={folder}", f"data.path={pairs}"])
    with pytest.raises(ConfigError) as e:
        load_init(cfg, build_objective(cfg, load(cfg.data.tokenizer)))
    assert str(e.value) == (f"model.init '{folder}': its logit_scale is exp(4.76) = 116.7, outside [1, "
                            "align.max_logit_scale=100] where training clamps it; expected align.max_logit_scale >= "
                            "117")
    cfg = load_config("siglip", [f"model.init={folder}", f"data.path={pairs}", "align.max_logit_scale=117"])
    load_init(cfg, build_objective(cfg, load(cfg.data.tokenizer)))
    # the recipe is not SigLIP's shape (it learns faster): its run is told every key at once, in one line
    assert siglip.unfit(load_config("siglip", [])) == (
        "model.pooling=map (SigLIP's attention pooling head) and no model.embed_norm, and text.causal=false, "
        "text.learned_positions=true, text.embed_norm=false, text.pooling=last, and align.media_proj=false "
        "(align.embed_dim=model.dim), align.attend_padding=true")
    assert siglip.unfit(load_config("siglip", [*SIGLIP_SHAPE, "align.embed_dim=192"])) is None
    assert siglip.unfit(load_config("siglip", [*SIGLIP_SHAPE, "align.embed_dim=192", "model.pooling=cls"])) == (
        "model.pooling=map (SigLIP's attention pooling head) and no model.embed_norm")
    with pytest.raises(ConfigError, match="model.pooling=map pools a ViT without class token for clip/siglip on "
                                          "images; this run is objective dino"):
        load_config("dino", ["model.pooling=map"])
    with pytest.raises(ConfigError, match="align.media_proj=false makes the media tower's features"):
        load_config("siglip", ["align.media_proj=false", "align.embed_dim=256"])
    assert json.loads((folder / "config.json").read_text())["model_type"] == "siglip"


def test_a_run_from_scratch_with_the_recipe_exports(pairs, tmp_path):  # noqa: F811
    """The recipe with SigLIP's keys (SIGLIP_SHAPE) is SigLIP's architecture and the BPE it trains closes every
    caption with <|endoftext|> and pads with it, read whole to the last position: SiglipModel gives our embeddings,
    its processor our captions."""
    from selfsup.rundir import open_run

    out = tmp_path / "run"
    shape = ["model.dim=32", "model.depth=2", "model.heads=2", "text.dim=32", "text.depth=2", "text.heads=2",
             "text.vocab_size=600", "text.context=16", "align.embed_dim=32", "image.size=16", *SIGLIP_SHAPE]
    invoke("train", "siglip", f"data.path={pairs}", f"out_dir={out}", *shape, *SMALL, "optim.lr=0.01")
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    cfg, objective, tok = open_run(out, torch.device("cpu"))
    assert cfg.data.tokenizer is None and tok.post_processor is not None  # the run's own BPE
    ids, mask = caption_arrays(tok, CAPTIONS, cfg.text.context)
    assert ids[0, mask[0].sum() - 1] == ids[0, -1] == tok.token_to_id(EOS) and ids[2, -1] == tok.token_to_id(EOS)
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "SiglipModel"
    for got, expected in zip(*ours_and_theirs(objective, back, tok, cfg.text.context)):
        assert torch.allclose(got, expected, atol=1e-4)
    inputs = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")(text=CAPTIONS, padding="max_length",
                                                                         truncation=True)
    assert inputs["input_ids"] == ids.tolist()
    invoke("eval", out, "--task", "retrieval", "--test", pairs)  # the joint space of a tower without projection
    assert json.loads((out / "eval" / "retrieval.json").read_text())["pretrained"]["items"] == 24
