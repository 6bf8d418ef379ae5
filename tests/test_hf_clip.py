"""model.init and --format hf for CLIP: a tiny random transformers CLIPModel (and a CLIP-shaped BPE tokenizer:
lowercase, </w> word ends, <|startoftext|> ... <|endoftext|>) starts a clip run with its own image embeddings, text
embeddings and logits; the run tokenizes captions as CLIPTokenizer does, trains from the CLI, and exports back as a
CLIPModel (with a processor) that AutoModel loads with our embeddings; a run trained from scratch with CLIP's
shape exports too; what does not map is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.config import ConfigError
from selfsup.data.read.captions import caption_arrays
from selfsup.data.read.tokenizer import load
from selfsup.models.hf import clip
from selfsup.objectives.build import build_objective
from selfsup.train.continual import load_config
from tests.test_cli import invoke

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["a", "red", "green", "blue", "dark", "bright", "square", "with", "stripes"]
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
CAPTIONS = ["a red square", "A bright green square with stripes", "a dark blue square, with a red square and "
            "a green square and a blue square"]  # the last is longer than the 16 positions: truncated
SMALL = ["train.batch_size=4", "train.eval_batches=1", "sched.warmup_steps=1", "train.max_steps=2",
         "train.eval_every=2", "train.log_every=1", "data.workers=0", "data.val_fraction=0.2"]
MEAN, STD = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]


def clip_tokenizer():
    """A CLIPTokenizer over the byte alphabet (each byte also as a word end, </w>) and the merges that spell WORDS."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)} | {c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)}
    merges = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
            parts = [pair[0] + pair[1]] + parts[2:]
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def clip_folder(root, eos_token_id=None, **vision):
    """A tiny random CLIPModel saved by transformers, its tokenizer and its image processor. eos_token_id: the text
    config's (default: the tokenizer's <|endoftext|>; 2, as OpenAI's first uploads, makes transformers pool at the
    largest id instead)."""
    tok = clip_tokenizer()
    text = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=len(tok), max_position_embeddings=16, eos_token_id=eos_token_id or tok.eos_token_id,
                bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, layer_norm_eps=1e-5)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                  patch_size=4, hidden_act="gelu") | vision
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                           projection_dim=24)).eval()
    with torch.no_grad():  # transformers starts it at ln(1/0.07); any value must come through
        model.logit_scale.fill_(2.0)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size=16, image_mean=MEAN,
                                    image_std=STD).save_pretrained(root)
    return root, model


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    return clip_folder(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """24 coloured squares, some striped, with captions in WORDS."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(24):
        name, colour = list(COLOURS.items())[i % 3]
        image = np.clip(np.array(colour) + rng.integers(-20, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        striped = i % 2 == 0
        if striped:
            image[::4] = 255
        Image.fromarray(image).save(root / f"{i}.png")
        caption = f"a {'bright' if i % 4 else 'dark'} {name} square" + (" with stripes" if striped else "")
        lines.append(json.dumps({"image": f"{i}.png", "text": caption}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root / "pairs.jsonl"


def images(n=3, seed=1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W) normalised


def ours_and_theirs(objective, hf, tok, context):
    """(image embeds, text embeds, logits_per_image) of our objective and of transformers' model, on a padded
    caption batch (our captions' ids and mask are fed to both)."""
    ids, mask = (torch.from_numpy(a) for a in caption_arrays(tok, CAPTIONS, context))
    pixels = images()
    with torch.no_grad():
        media = objective.project_media(objective.model(pixels))
        text = objective.embed_text(ids.long(), mask)
        out = hf(input_ids=ids.long(), attention_mask=mask.long(), pixel_values=pixels)
    ours = (media, text, objective.logit_scale.exp() * media @ text.t())
    return ours, (out.image_embeds, out.text_embeds, out.logits_per_image)


def test_the_config_and_the_captions_come_from_the_model(hf_clip, pairs):
    folder, _ = hf_clip
    cfg = load_config("clip", [f"model.init={folder}", f"data.path={pairs}"])
    m, t = cfg.model, cfg.text
    assert (m.dim, m.depth, m.mlp_hidden, m.patch, m.mlp, m.bias, m.embed_norm, m.learned_positions) == (
        32, 2, 64, 4, "gelu", "all", True, True)
    assert (t.mlp_hidden, t.context, t.mlp, t.causal, t.embed_norm, t.pooling) == (48, 16, "quick_gelu", True,
                                                                                   False, "last")
    assert (cfg.image.size, cfg.image.mean, cfg.image.std, cfg.align.embed_dim) == (16, MEAN, STD, 24)
    assert cfg.data.tokenizer == str(folder / "tokenizer.json")  # it has <|endoftext|>: used as it is
    # the captions as CLIPTokenizer makes them: <|startoftext|> text <|endoftext|>, cut to 16 with the end kept,
    # padded with <|endoftext|>
    tok = load(cfg.data.tokenizer)
    ids, mask = caption_arrays(tok, CAPTIONS, t.context)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)(CAPTIONS, padding="max_length", max_length=16,
                                                                truncation=True)
    assert ids.tolist() == theirs["input_ids"] and mask.astype(int).tolist() == theirs["attention_mask"]
    assert ids[0, :5].tolist() == [tok.token_to_id(w) for w in ("<|startoftext|>", "a</w>", "red</w>", "square</w>",
                                                                 "<|endoftext|>")]
    assert mask[2].all() and ids[2, -1] == tok.token_to_id("<|endoftext|>")


@pytest.mark.parametrize("legacy_eos", [False, True])
def test_imported_embeddings_and_logits_equal_transformers(hf_clip, pairs, legacy_eos, tmp_path):
    from selfsup.models.hf.init import load_init

    folder, hf = clip_folder(tmp_path, eos_token_id=2) if legacy_eos else hf_clip
    cfg = load_config("clip", [f"model.init={folder}", f"data.path={pairs}"])
    tok = load(cfg.data.tokenizer)
    objective = build_objective(cfg, tok).eval()
    assert len(load_init(cfg, objective)[0]["sha256"]) == 64
    for got, expected in zip(*ours_and_theirs(objective, hf, tok, cfg.text.context)):
        assert torch.allclose(got, expected, atol=1e-4)


def test_train_from_the_model_and_export_back(hf_clip, pairs, tmp_path):
    from selfsup.rundir import open_run
    from selfsup.views.augment import center_view

    folder, hf = hf_clip
    out = tmp_path / "run"
    invoke("train", "clip", f"model.init={folder}", f"data.path={pairs}", f"out_dir={out}", *SMALL,
           "optim.lr=1e-9")  # two steps that barely move: the run still is the model it started from
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "CLIPModel"
    cfg, objective, tok = open_run(out, torch.device("cpu"))
    ours, exported = ours_and_theirs(objective, back, tok, cfg.text.context)
    for got, expected in zip(ours, exported):
        assert torch.allclose(got, expected, atol=1e-4)  # the trained run, exported
    for got, expected in zip(ours, ours_and_theirs(objective, hf, tok, cfg.text.context)[1]):
        assert torch.allclose(got, expected, atol=1e-4)  # started from the model
    # its processor prepares captions and images as training did
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")
    pictures = [Image.open(pairs.parent / f"{i}.png") for i in range(3)]
    inputs = processor(text=CAPTIONS, images=pictures, padding="max_length", truncation=True, return_tensors="pt")
    ids, mask = caption_arrays(tok, CAPTIONS, cfg.text.context)
    assert inputs["input_ids"].tolist() == ids.tolist() and inputs["attention_mask"].bool().tolist() == mask.tolist()
    rows = torch.from_numpy(np.stack([np.asarray(p).transpose(2, 0, 1) for p in pictures]))  # (B, C, H, W) uint8
    assert torch.allclose(inputs["pixel_values"], center_view(rows, 16, MEAN, STD), atol=1e-5)


def test_a_run_from_scratch_with_clips_shape_exports(hf_clip, pairs, tmp_path):
    """Our ViT's fixed sin-cos positions and its patch convolution's bias, no biases elsewhere (model.bias=none)
    and LayerNorms without bias: folded into CLIP's tensors exactly."""
    from selfsup.rundir import open_run

    folder, _ = hf_clip
    out = tmp_path / "run"
    shape = ["model.dim=32", "model.depth=2", "model.heads=2", "text.dim=32", "text.depth=2", "text.heads=2",
             "text.vocab_size=600", "text.context=16", "align.embed_dim=16", "image.size=16", "model.embed_norm=true",
             "text.causal=true", "text.learned_positions=true", "text.embed_norm=false", "text.pooling=last",
             "text.mlp=quick_gelu", "model.bias=none", "text.bias=none", "model.learned_positions=false",
             f"data.tokenizer={folder / 'tokenizer.json'}"]
    invoke("train", "clip", f"data.path={pairs}", f"out_dir={out}", *shape, *SMALL, "optim.lr=0.01")
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    cfg, objective, tok = open_run(out, torch.device("cpu"))
    assert objective.model.embed.bias.abs().sum() > 0  # trained: a bias to fold
    for got, expected in zip(*ours_and_theirs(objective, back, tok, cfg.text.context)):
        assert torch.allclose(got, expected, atol=1e-4)


def test_what_does_not_map_is_one_line(hf_clip, pairs, tmp_path):
    folder, _ = clip_folder(tmp_path / "relu", hidden_act="relu")
    with pytest.raises(ConfigError) as e:
        load_config("clip", [f"model.init={folder}", f"data.path={pairs}"])
    assert str(e.value) == (f"model.init '{folder}': vision_config.hidden_act 'relu' (expected one of quick_gelu, "
                            "gelu, gelu_pytorch_tanh, gelu_new) is not supported yet")
    folder, _ = hf_clip
    with pytest.raises(ConfigError, match="model.init '.*' is a CLIPModel, which starts objective clip; this run has "
                                          "objective=siglip"):
        load_config("siglip", [f"model.init={folder}", f"data.path={pairs}"])
    with pytest.raises(ConfigError, match="text.context=32: model.init '.*' has text_config.max_position_embeddings "
                                          "16; drop the override"):
        load_config("clip", [f"model.init={folder}", f"data.path={pairs}", "text.context=32"])
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "preprocessor_config.json").write_text('{"image_mean": "grey"}')
    with pytest.raises(ConfigError) as e:
        load_config("clip", [f"model.init={broken}", f"data.path={pairs}"])
    assert str(e.value) == (f"model.init '{broken}': its preprocessor_config.json has no readable image_mean and "
                            "image_std (ValueError); expected the normalisation its images were trained with, lists "
                            "of numbers")
    assert clip.unfit(load_config("clip", [])) is None  # the recipe is CLIP's shape
    assert clip.unfit(load_config("clip", ["model.embed_norm=false"])) == ("model.embed_norm=true (CLIP's "
                                                                          "pre_layrnorm) and model.pooling=cls")
    for recipe, key, says in [
            ("clip", "model.causal=true", "model.causal shapes the text tower of clip/siglip (text.causal)"),
            ("clip", "text.pooling=map", "text.pooling=map pools a ViT; expected cls, mean or last"),
            ("clip", "model.pooling=last", "model.pooling=last pools a text trunk; this run's modality is image"),
            ("bert-mlm", "model.embed_norm=false", "model.embed_norm shapes a ViT (text.embed_norm: the text tower "
                                                   "of clip/siglip); this run's modality is text")]:
        with pytest.raises(ConfigError) as e:
            load_config(recipe, [key])
        assert str(e.value).startswith(says)
    assert clip.unfit(load_config("clip", ["text.causal=false"])).startswith("text.causal=true, "
                                                                             "text.learned_positions=true")


RECIPE_SHAPE = ["model.dim=32", "model.depth=2", "model.heads=2", "text.dim=32", "text.depth=2", "text.heads=2",
                "text.vocab_size=600", "text.context=16", "align.embed_dim=16", "image.size=16"]  # sizes alone


@pytest.fixture(scope="module")
def scratch(pairs, tmp_path_factory):
    """A clip run trained from scratch with the recipe as shipped (its own BPE; only the sizes made tiny), and its
    export: (run directory, export folder)."""
    root = tmp_path_factory.mktemp("scratch")
    invoke("train", "clip", f"data.path={pairs}", f"out_dir={root / 'run'}", *RECIPE_SHAPE, *SMALL, "optim.lr=0.003",
           "train.max_steps=40", "train.eval_every=40")  # enough to tell the colours apart
    invoke("export", root / "run", "--format", "hf", "--out", root / "hf")
    return root / "run", root / "hf"


def test_a_run_from_scratch_with_the_recipe_exports(scratch, pairs):
    """The recipe is CLIP's architecture and the BPE it trains closes every caption with <|endoftext|>, where the
    causal text tower pools: CLIPModel gives our embeddings, its processor our captions."""
    from selfsup.rundir import open_run

    run, hf = scratch
    cfg, objective, tok = open_run(run, torch.device("cpu"))
    assert cfg.data.tokenizer is None and tok.post_processor is not None  # the run's own BPE
    ids, mask = caption_arrays(tok, CAPTIONS, cfg.text.context)
    ends = mask.sum(axis=1) - 1
    assert (ids[np.arange(3), ends] == tok.token_to_id("<|endoftext|>")).all()  # cut or not, the end is kept
    assert (ids[~mask] == tok.token_to_id("<|endoftext|>")).all()  # padded with it, as CLIP's
    back = transformers.AutoModel.from_pretrained(hf).eval()
    assert type(back).__name__ == "CLIPModel"
    assert objective.model.embed.bias.abs().sum() > 0 and objective.text.positions.weight.requires_grad
    for got, expected in zip(*ours_and_theirs(objective, back, tok, cfg.text.context)):
        assert torch.allclose(got, expected, atol=1e-4)
    inputs = transformers.AutoProcessor.from_pretrained(hf)(text=CAPTIONS, padding="max_length", truncation=True)
    assert inputs["input_ids"] == ids.tolist() and inputs["attention_mask"] == mask.astype(int).tolist()


def hf_features(model, processor, texts=None, pictures=None):
    """(N, E) unit image or text features of the exported CLIPModel, prepared by its processor."""
    with torch.no_grad():
        if texts is not None:
            inputs = processor(text=texts, padding="max_length", truncation=True, return_tensors="pt")
            out = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        else:
            out = model.get_image_features(pixel_values=processor(images=pictures, return_tensors="pt")
                                           ["pixel_values"])
    out = getattr(out, "pooler_output", out)  # transformers 5 returns an output object
    return torch.nn.functional.normalize(out, dim=-1)


def test_zeroshot_and_retrieval_through_the_export_equal_selfsup_eval(scratch, pairs, tmp_path):
    """Part 2 of issue 16: zero-shot accuracy and the retrieval recalls computed with the exported CLIPModel
    (get_image_features / get_text_features on its processor's inputs) are `selfsup eval`'s numbers."""
    run, hf = scratch
    labeled = tmp_path / "labeled"  # the pairs' pictures in a folder per colour
    lines = [json.loads(line) for line in pairs.read_text().splitlines()]
    for line in lines:
        colour = next(c for c in COLOURS if c in line["text"])
        (labeled / colour).mkdir(parents=True, exist_ok=True)
        (labeled / colour / line["image"]).write_bytes((pairs.parent / line["image"]).read_bytes())
    prompts = ["a {label} square", "a picture of {label}"]
    invoke("eval", run, "--task", "zeroshot", "--test", labeled, *[a for p in prompts for a in ("--prompt", p)])
    invoke("eval", run, "--task", "retrieval", "--test", pairs)
    zeroshot = json.loads((run / "eval" / "zeroshot.json").read_text())["pretrained"]
    retrieval = json.loads((run / "eval" / "retrieval.json").read_text())["pretrained"]

    model, processor = (transformers.AutoModel.from_pretrained(hf).eval(),
                        transformers.AutoProcessor.from_pretrained(hf))
    classes = sorted(COLOURS)
    files = sorted(labeled.glob("*/*.png"))
    labels = torch.tensor([classes.index(f.parent.name) for f in files])
    media = hf_features(model, processor, pictures=[Image.open(f) for f in files])  # (N, E)
    weights = hf_features(model, processor, [p.format(label=c) for c in classes for p in prompts])  # (K·P, E)
    weights = torch.nn.functional.normalize(weights.view(len(classes), len(prompts), -1).mean(1), dim=-1)
    predicted = (media @ weights.t()).argmax(1)  # (N,)
    assert len(predicted.unique()) > 1  # a model that tells items apart
    assert predicted.eq(labels).sum().item() / len(labels) == zeroshot["accuracy"]

    captions = [line["text"] for line in lines]
    texts = sorted(set(captions))
    own = torch.tensor([texts.index(c) for c in captions])  # (N,)
    sims = hf_features(model, processor, pictures=[Image.open(pairs.parent / line["image"]) for line in lines]) @ \
        hf_features(model, processor, texts).t()  # (N, U)
    m2t = (sims > sims.gather(1, own[:, None])).sum(1)  # (N,) rank of the item's own caption
    carried = own[:, None] == torch.arange(len(texts))  # (N, U)
    t2m = (sims > sims.masked_fill(~carried, float("-inf")).max(0).values).sum(0)  # (U,) rank of the best carrier
    assert len(m2t.unique()) > 1
    for k in (1, 5, 10):
        assert (m2t < k).float().mean().item() == retrieval["media_to_text"][str(k)]
        assert (t2m < k).float().mean().item() == retrieval["text_to_media"][str(k)]


def test_a_tokenizer_that_does_not_close_captions_is_refused(scratch, tmp_path):
    """A run whose BPE leaves captions open ([EOS] + text, as before this version) would be pooled elsewhere by
    CLIPModel: refused in one line, nothing written."""
    import shutil

    from selfsup.export import ExportError, export
    from selfsup.rundir import open_run

    run, _ = scratch
    old = tmp_path / "old"
    shutil.copytree(run, old)
    tok = load(old / "tokenizer.json")
    tok.post_processor = None
    tok.save(str(old / "tokenizer.json"))
    cfg, objective, _ = open_run(old, torch.device("cpu"))
    for fmt, what in (("hf", "CLIPModel"), ("open_clip", "open_clip's CLIP")):
        with pytest.raises(ExportError) as e:
            export(old, cfg, objective, fmt, tmp_path / fmt)
        assert str(e.value) == (f"--format {fmt}: {what} pools the text at the end-of-text token, but this run's "
                                "tokenizer.json does not close captions with <|endoftext|> (a run whose BPE was "
                                "trained before selfsup closed captions for text.pooling=last); expected a run "
                                "trained with this version, or with data.tokenizer a model's tokenizer.json")
        assert not (tmp_path / fmt).exists()
