"""The paper-scale recipes (recipes/scale/): each builds at its published size, on the meta device, to the parameter
count its comment states (the published count, or that count and what differs), and one narrowed copy of each
trains a real step on the CPU.

The counts of the published models are transformers' own classes built from these shapes (GPT2LMHeadModel,
BertModel, XLNetModel, CLIPModel, SiglipModel, HubertModel, ModernBertModel, LlamaForCausalLM, BeitModel), timm's
ViTs and torchvision's ResNet-50, written here as numbers so the test needs neither.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from selfsup import config
from selfsup.data.builtin.tones import write_tones
from selfsup.objectives.build import network
from selfsup.train import trainer
from tests.test_cli import invoke
from tests.test_train import quiet

pytestmark = pytest.mark.usefixtures("one_thread")

VIT_S, VIT_B = 21_665_664, 85_798_656  # timm's ViT-S/16 and ViT-B/16 at 224 px without a head, learned positions
RESNET50 = 25_557_032  # torchvision's resnet50, with its 1000-class fc layer
BERT = 109_482_240  # BertModel(bert-base-uncased): token types and pooler included

# recipe: (the published count, ours: that count with what the recipe's comment says differs); CLAP publishes no
# total for towers of these shapes
COUNTS = {
    "gpt2-124m": (124_439_808, 124_439_808 + (50304 - 50257) * 768),  # vocab padded to x64
    "llama-1b": (1_235_814_400, 1_235_814_400),
    "bert-base": (BERT, BERT - 2 * 768 - (768 * 768 + 768) + (30528 - 30522) * 768),  # no token types, no pooler
    "modernbert-base": (149_014_272, 149_014_272),
    # rotary, not relative positions: no position projection, biases or segment embeddings; no MLP or norm biases
    "xlnet-base": (116_718_336, 116_718_336 - 12 * (768 * 768 + 3 * 768 + 2 * 768 + 3072 + 768 + 2 * 768)),
    "simclr-r50": (RESNET50, RESNET50 - (2048 * 1000 + 1000)),  # no classifier
    "swav-r50": (RESNET50, RESNET50 - (2048 * 1000 + 1000)),
    "mocov3-vits16": (VIT_S, VIT_S - 197 * 384),  # sin-cos positions are not parameters
    "dino-vits16": (VIT_S, VIT_S - 197 * 384),
    "mae-vitb16": (VIT_B + 769_000, VIT_B - 197 * 768),  # ViT-B/16's 86.6M count its 1000-class head
    "beit-vitb16": (86_000_000, VIT_B - 197 * 768 + 12 * 2 * 768),  # the paper's 86M; layer scale 2 x 768 a block
    "clip-vitb32": (151_277_313, 151_277_313),
    "siglip-b16": (203_155_970, 203_155_970),
    # HubertModel's masked_spec_embed is the objective's mask embedding, not the encoder's
    "hubert-base": (94_371_712, 94_371_712 - 768),
    # the text tower is bert-base at 77 positions, the audio tower a transformer, not CNN14
    "clap-base": (None, 197_107_969),
}


def scale_recipes() -> list[str]:
    return sorted(name for name, path in config.recipe_files().items() if config.paper_scale(path))


def test_every_paper_scale_recipe_has_a_count_and_is_listed_apart():
    assert scale_recipes() == sorted(COUNTS)
    assert not config.paper_scale(config.recipe_files()["gpt-clm"])
    plain, scaled = invoke("recipes"), invoke("recipes", "--scale")
    assert "gpt-clm" in plain and "gpt2-124m" not in plain
    assert "gpt-clm" in scaled and all(name in scaled for name in COUNTS)
    assert "gpt2-124m          124.5M" in scaled and "llama-1b          1235.8M" in scaled  # built on meta


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_builds_at_the_published_size(name):
    """Built on the meta device (no memory): the count is exactly the published one, or it with the differences the
    recipe names; the recipe's comment states it, and the published one where they are 1% or more apart."""
    published, ours = COUNTS[name]
    cfg = config.load(name)
    with torch.device("meta"):
        net = network(cfg)
    count = sum(p.numel() for p in net.parameters())
    assert count == ours, f"{name}: {count:,} parameters, expected {ours:,}"
    text = config.recipe_files()[name].read_text()
    assert f"{ours:,}" in text and "Source:" in text
    if published is not None and abs(count / published - 1) >= 0.01:
        assert f"{published:,}" in text, f"{name}: {count:,} is {count / published - 1:+.1%} from {published:,}"


def test_a_few_shapes_are_the_papers():
    """What the counts cannot see: crops, masks, decoders, heads and the lr rule."""
    dino = config.load("dino-vits16")
    assert (dino.image.size, dino.views.local_crops, dino.views.local_size, dino.model.patch) == (224, 10, 96, 16)
    assert dino.train.batch_size * dino.train.grad_accum * 8 == 1024 and dino.dist.lr_scaling == "linear"
    mae = config.load("mae-vitb16")
    assert (mae.mae.mask_ratio, mae.mae.decoder_dim, mae.mae.decoder_depth) == (0.75, 512, 8)
    assert mae.optim.lr * mae.train.batch_size * 8 / mae.dist.base_batch == pytest.approx(2.4e-3)  # 1.5e-4 x 4096/256
    gpt = config.load("gpt2-124m")
    assert gpt.train.batch_size * gpt.train.grad_accum * 8 * gpt.model.context == 491_520


# a narrowed copy of each: small widths, short sequences, 32 px images, 1 s of audio; ResNet-50 keeps its widths
NARROW = ["train.max_steps=1", "train.batch_size=4", "train.grad_accum=1", "train.precision=fp32",
          "train.eval_batches=1", "train.log_every=1", "data.workers=0", "dist.strategy=ddp"]
TEXT = ["model.dim=64", "model.depth=3", "model.heads=2", "model.context=32", "model.vocab_size=512"]
VIT = ["model.dim=64", "model.depth=2", "model.heads=2", "image.size=32", "views.local_size=16",
       "views.local_crops=2", "ssl.proj_hidden=64", "ssl.proj_dim=16", "ssl.pred_hidden=32", "dino.out_dim=64",
       "dino.bottleneck=16", "swav.prototypes=16", "mae.decoder_dim=32", "mae.decoder_depth=1",
       "mae.decoder_heads=2", "beit.codebook_size=16", "beit.codebook_images=64"]
TOWER = ["text.dim=64", "text.depth=2", "text.heads=2", "text.context=16", "text.vocab_size=512"]
AUDIO = ["model.dim=64", "model.depth=2", "model.heads=2", "audio.sample_rate=16000", "audio.seconds=1.0",
         "audio.n_fft=400", "audio.hop=160", "audio.n_mels=32"]
NARROWER = {
    "gpt2-124m": TEXT, "bert-base": TEXT, "xlnet-base": TEXT,
    "llama-1b": [*TEXT, "model.kv_heads=1", "model.mlp_hidden=96"],
    "modernbert-base": [*TEXT, "model.mlp_hidden=96", "model.local_attention=8"],
    "simclr-r50": ["image.size=32", "ssl.proj_hidden=64", "ssl.proj_dim=16"],
    "swav-r50": ["image.size=32", "views.local_size=16", "views.local_crops=2", "ssl.proj_hidden=64",
                 "ssl.proj_dim=16", "swav.prototypes=16"],
    "mocov3-vits16": VIT, "dino-vits16": VIT, "mae-vitb16": VIT, "beit-vitb16": VIT,
    "clip-vitb32": [*VIT, *TOWER, "align.embed_dim=32"],
    "siglip-b16": [*VIT, *TOWER, "align.embed_dim=64"],
    "clap-base": [*AUDIO, *TOWER, "align.embed_dim=32"],
    "hubert-base": [*AUDIO, "hubert.clusters=8", "hubert.kmeans_frames=2000", "hubert.proj_dim=16"],
}


@pytest.fixture(scope="module")
def small_data(corpus, tmp_path_factory):
    """Smaller data than the built-in sets, whose preparation (a tokenizer, thousands of clips) would take most of
    the time: the docstrings corpus and 8 tones of each class; images stay scikit-learn's digits."""
    tones = tmp_path_factory.mktemp("tones")
    write_tones(tones, per_class_train=8, per_class_test=0)
    return {"text": corpus, "audio": tones / "train", "pairs": tones / "train.jsonl"}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_a_narrowed_copy_trains_a_step(name, small_data, tmp_path):
    kind = config.load(name)
    data = {"text": small_data["text"], "audio": small_data["pairs" if kind.pairs else "audio"]}.get(kind.modality)
    extra = [f"data.path={data}"] if data else []
    cfg = config.load(name, [*NARROW, *NARROWER[name], *extra, f"out_dir={tmp_path}"])
    summary = trainer.train(cfg, quiet())
    assert summary["status"] == "finished" and summary["steps"] == 1
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
