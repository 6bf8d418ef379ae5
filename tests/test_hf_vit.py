"""model.init and --format hf for the ViT: a tiny random ViTModel or Dinov2Model saved by transformers itself starts an
image run with transformers' own features (class and patch tokens, at the model's grid and interpolated to others),
in the student and the momentum teacher; a dino run trained from one exports back to the same class; runs trained
from scratch export as ViTModel (sin-cos positions) or Dinov2Model (layer scale), with a preprocessor_config.json
that prepares images as our evaluation does; what cannot be mapped is one line."""

import json

import numpy as np
import pytest
import torch

from selfsup.config import ConfigError
from selfsup.train.continual import load_config
from tests.test_cli import invoke
from tests.test_model_card import snippet

transformers = pytest.importorskip("transformers")

NORM = ["image.mean=[0.3,0.4,0.5]", "image.std=[0.2,0.3,0.4]"]  # objectives built directly need resolved ones
HEADS = ["ssl.proj_hidden=64", "ssl.proj_dim=16", "dino.out_dim=64", "dino.bottleneck=16", "views.local_crops=2"]
TRAIN = ["train.batch_size=8", "train.eval_batches=1", "sched.warmup_steps=1", "data.workers=0",
         "train.max_steps=2", "train.eval_every=2", "train.log_every=1"]
TINY = ["image.size=16", "model.dim=32", "model.depth=2", "model.heads=2", "model.patch=4", *HEADS, *TRAIN]

pytestmark = pytest.mark.usefixtures("one_thread")


def hf_folder(root, kind, classifier=False, **changes):
    """A tiny random ViTModel (16 px, patch 4: a 4 × 4 grid) or Dinov2Model (24 px: a 6 × 6 grid that our 16 px
    runs always interpolate, as DINOv2's 518 px table is at 224), or with `classifier` its ...ForImageClassification,
    saved by transformers itself; every weight moved off its initial value so the LayerNorm biases, layer scales and
    positions all count."""
    if kind == "vit":
        settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        image_size=16, patch_size=4)
        config = transformers.ViTConfig(**(settings | changes))
        model = (transformers.ViTForImageClassification if classifier else transformers.ViTModel)(config)
    else:
        settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=3, image_size=24,
                        patch_size=4, layerscale_value=0.5)
        config = transformers.Dinov2Config(**(settings | changes))
        model = (transformers.Dinov2ForImageClassification if classifier else transformers.Dinov2Model)(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(root)
    return root, model


@pytest.fixture(scope="module", params=["vit", "dinov2"])
def folder(request, tmp_path_factory):
    return hf_folder(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """200 small RGB images in an .npz: scikit-learn's digits, each stroke in a colour of its own."""
    from sklearn.datasets import load_digits

    pixels = load_digits().images[:200, :, :, None] * np.random.default_rng(0).random((200, 1, 1, 3))  # (N, 8, 8, 3)
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, images=(pixels * 255 / 16).astype(np.uint8))
    return path


def features(hf, x):
    """transformers' last_hidden_state at any image size (ViT interpolates only when asked)."""
    extra = {"interpolate_pos_encoding": True} if hf.config.model_type == "vit" else {}
    return hf(pixel_values=x, **extra).last_hidden_state  # (B, 1 + T, D)


def test_the_config_comes_from_the_model(folder):
    path, hf = folder
    m = load_config("dino", [f"model.init={path}", "image.size=16"]).model
    dinov2 = hf.config.model_type == "dinov2"
    assert (m.dim, m.depth, m.heads, m.patch, m.mlp, m.norm, m.bias) == (32, 2, 4, 4, "gelu", "layernorm", "all")
    assert (m.learned_positions, m.position_grid) == (True, 6 if dinov2 else 4)
    assert (m.mlp_hidden, m.norm_eps, m.layer_scale) == ((96, 1e-6, 0.5) if dinov2 else (48, 1e-12, None))


def test_imported_features_equal_transformers_in_student_and_teacher(folder):
    from selfsup.models.hf.init import load_init
    from selfsup.objectives.build import build_objective

    path, hf = folder
    cfg = load_config("dino", [f"model.init={path}", "image.size=16", *NORM, *HEADS])
    objective = build_objective(cfg).eval()
    load_init(cfg, objective)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for size in (16, 8, 12):  # the run's grid, and local crops' (interpolated from the model's table)
            x = torch.randn(2, 3, size, size, generator=g)
            expected = features(hf, x)
            ours = objective.model.tokens(x)
            assert ours.shape == expected.shape and expected.abs().mean() > 0.1
            assert torch.allclose(ours, expected, atol=1e-4)  # class and patch tokens
            assert torch.equal(objective.teacher.model.tokens(x), ours)  # the teacher starts as the student
        x = torch.randn(2, 3, 12, 8, generator=g)  # a grid that is not square
        assert torch.allclose(objective.model.tokens(x), features(hf, x), atol=1e-4)
        if hf.config.model_type == "dinov2":
            assert torch.allclose(objective.model(x), hf(pixel_values=x).pooler_output, atol=1e-4)


@pytest.mark.parametrize("objective", ["byol", "mocov3", "mae"])
def test_every_copy_of_the_backbone_starts_as_the_model(objective, tmp_path):
    from selfsup.models.hf.init import load_init
    from selfsup.models.hf.vit import backbones
    from selfsup.objectives.build import build_objective

    path, hf = hf_folder(tmp_path, "vit")
    cfg = load_config(objective, [f"model.init={path}", "image.size=16", *NORM, *HEADS, "mae.decoder_dim=16",
                                  "mae.decoder_heads=2"])
    built = build_objective(cfg).eval()
    load_init(cfg, built)
    copies = backbones(built)
    assert len(copies) == (1 if objective == "mae" else 2)  # the student, and the momentum encoder
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for prefix in copies:
            assert torch.allclose(built.get_submodule(prefix[:-1]).tokens(x), features(hf, x), atol=1e-4)


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_an_image_classifier_imports_its_backbone(kind, tmp_path):
    from selfsup.models.hf.init import load_init
    from selfsup.objectives.build import build_objective

    path, hf = hf_folder(tmp_path, kind, classifier=True)
    cfg = load_config("simclr", [f"model.init={path}", "image.size=16", *NORM, *HEADS])
    objective = build_objective(cfg).eval()
    load_init(cfg, objective)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(objective.model.tokens(x), features(getattr(hf, kind), x), atol=1e-4)


def test_dinov2_with_swiglu_both_ways(tmp_path):
    from safetensors.torch import save_file

    from selfsup.models.hf import dinov2
    from selfsup.models.hf.init import load_init
    from selfsup.objectives.build import build_objective

    path, hf = hf_folder(tmp_path / "in", "dinov2", use_swiglu_ffn=True, mlp_ratio=4)  # 88 wide, as the giant's
    cfg = load_config("dino", [f"model.init={path}", "image.size=16", *NORM, *HEADS])
    assert (cfg.model.mlp, cfg.model.mlp_hidden) == ("swiglu", 88)
    objective = build_objective(cfg).eval()
    load_init(cfg, objective)
    tensors, config = dinov2.to_hf(cfg, objective, {})
    (tmp_path / "out").mkdir()
    save_file(tensors, tmp_path / "out" / "model.safetensors")
    (tmp_path / "out" / "config.json").write_text(json.dumps(config))
    back = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state
        assert torch.allclose(objective.model.tokens(x), expected, atol=1e-4)
        assert torch.allclose(back(pixel_values=x).last_hidden_state, expected, atol=1e-4)


def test_a_vit_mae_imports_its_encoder(tmp_path):
    from selfsup.models.hf.init import load_init
    from selfsup.objectives.build import build_objective

    config = transformers.ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=48, image_size=16, patch_size=4, decoder_hidden_size=16,
                                       decoder_intermediate_size=32, decoder_num_hidden_layers=1,
                                       decoder_num_attention_heads=2, mask_ratio=0.75)
    hf = transformers.ViTMAEForPreTraining(config).eval()
    hf.save_pretrained(tmp_path)
    cfg = load_config("mae", [f"model.init={tmp_path}", "image.size=16", *NORM, "mae.decoder_dim=16",
                              "mae.decoder_heads=2"])
    objective = build_objective(cfg).eval()
    load_init(cfg, objective)
    g = torch.Generator().manual_seed(5)
    x, noise = torch.randn(2, 3, 16, 16, generator=g), torch.rand(2, 16, generator=g)
    keep = noise.argsort(dim=1)[:, :4]  # the quarter ViTMAE keeps for this noise
    with torch.no_grad():
        expected = hf.vit(pixel_values=x, noise=noise).last_hidden_state  # (2, 1 + 4, D)
        assert torch.allclose(objective.model.tokens(x, keep), expected, atol=1e-4)


def test_train_dino_from_dinov2_and_export_back(digits, tmp_path):
    from selfsup.rundir import open_run

    path, hf = hf_folder(tmp_path / "dinov2", "dinov2")
    out = tmp_path / "run"
    text = invoke("train", "dino", f"model.init={path}", f"data.path={digits}", f"out_dir={out}", "image.size=16",
                  *HEADS, *TRAIN, "optim.lr=1e-9")  # two steps that barely move: the run still is the model
    assert "".join(f"model.init: {path} (weights sha256".split()) in "".join(text.split())
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "Dinov2Model" and back.config.image_size == 24  # its own 6 × 6 table
    _, objective, _ = open_run(out, torch.device("cpu"))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = objective.model.tokens(x)
        assert torch.allclose(back(pixel_values=x).last_hidden_state, ours, atol=1e-4)  # the trained run
        assert torch.allclose(back(pixel_values=x).pooler_output, objective.model(x), atol=1e-4)
        assert torch.allclose(ours, hf(pixel_values=x).last_hidden_state, atol=1e-4)  # started from the model
    assert not back.embeddings.mask_token.any()  # unused by our forward: written as Dinov2's zeros


@pytest.mark.parametrize("recipe, extra, architecture", [
    ("simclr", [], "ViTModel"),  # the recipe's sin-cos positions, no biases, LayerNorm without bias
    ("dino", ["model.layer_scale=0.1", "model.learned_positions=true", "model.pooling=mean"], "Dinov2Model"),
])
def test_a_run_from_scratch_exports_with_its_features(recipe, extra, architecture, digits, tmp_path):
    from PIL import Image

    from selfsup.data.read.image import decode_image
    from selfsup.rundir import open_run
    from selfsup.views.augment import center_view

    out = tmp_path / "run"
    invoke("train", recipe, f"data.path={digits}", f"out_dir={out}", *TINY, *extra)
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [architecture]
    assert config["selfsup_pooling"].startswith("last_hidden_state[:, 0]" if recipe == "simclr" else
                                                "last_hidden_state[:, 1:].mean(1)")
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf", **(
        {"add_pooling_layer": False} if architecture == "ViTModel" else {})).eval()
    cfg, objective, _ = open_run(out, torch.device("cpu"))
    image = tmp_path / "a.png"
    y, x = np.mgrid[0:48, 0:48] / 48
    Image.fromarray((np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y), np.sin(3 * x * y)], -1) * 127 + 128)
                    .astype(np.uint8)).save(image)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    pixels = processor(Image.open(image), return_tensors="pt").pixel_values  # (1, 3, 16, 16)
    ours = center_view(torch.from_numpy(decode_image(image, 16, 3).copy())[None], 16, cfg.image.mean,
                       cfg.image.std)  # what selfsup eval / embed feed the model
    assert torch.allclose(pixels, ours, atol=1e-5)
    with torch.no_grad():
        hidden = back(pixel_values=pixels).last_hidden_state  # (1, 1 + T, D)
        pooled = hidden[:, 0] if recipe == "simclr" else hidden[:, 1:].mean(1)
        assert torch.allclose(hidden, objective.model.tokens(ours), atol=1e-4)
        assert torch.allclose(pooled, objective.model(ours), atol=1e-4)
    scope = {}
    exec(snippet((tmp_path / "hf" / "README.md").read_text(), tmp_path / "hf"), scope)  # the model card's usage code
    assert scope["embeddings"].shape == (2, 32)


@pytest.mark.parametrize("kind, changes, says", [
    ("dinov2", {"image_size": [24, 16]}, "image_size [24, 16] (our ViT is square)"),
    ("vit", {"hidden_act": "gelu_new"}, "hidden_act 'gelu_new' (our ViT's MLP is the exact gelu)"),
    ("vit", {"qkv_bias": False}, "qkv_bias false (our ViT has biases on every layer: model.bias=all)"),
])
def test_what_our_vit_cannot_hold_is_refused(tmp_path, kind, changes, says):
    path, _ = hf_folder(tmp_path, kind, **changes)
    with pytest.raises(ConfigError) as e:
        load_config("dino", [f"model.init={path}", "image.size=16"])
    assert str(e.value) == f"model.init '{path}': {says} is not supported yet"


def test_wrong_sizes_overrides_and_variants_are_one_line(folder, tmp_path):
    path, hf = folder
    with pytest.raises(ConfigError, match=r"image.size \(18\) must be a multiple of model.patch \(4\)"):
        load_config("dino", [f"model.init={path}", "image.size=18"])
    with pytest.raises(ConfigError) as e:
        load_config("dino", [f"model.init={path}", "image.size=16", "model.depth=3"])
    assert str(e.value) == f"model.depth=3: model.init '{path}' has num_hidden_layers 2; drop the override"
    with pytest.raises(ConfigError, match=f"'{path}' is a {type(hf).__name__}, which starts objective simclr or "):
        load_config("bert-mlm", [f"model.init={path}"])
    registers = tmp_path / "registers"
    registers.mkdir()
    (registers / "config.json").write_text(json.dumps({"model_type": "dinov2_with_registers"}))
    with pytest.raises(ConfigError, match="model_type 'dinov2_with_registers' .* is not supported yet; expected one "
                                          "of: .*vit, vit_mae, dinov2"):
        load_config("dino", [f"model.init={registers}"])


def test_inspect_says_what_model_init_would_make_of_it(folder):
    from selfsup.inspect import inspect_model

    path, hf = folder
    rows = dict(inspect_model(str(path)))
    assert rows["model.init"].startswith("maps onto objective simclr or ") and type(hf).__name__ in rows["model.init"]
    assert "model.dim=32, model.depth=2, model.heads=4, model.patch=4" in rows["model"] and "tokenizer" not in rows


def test_position_options_are_refused_where_nothing_reads_them():
    with pytest.raises(ConfigError, match="model.position_grid=6 sizes a ViT's learned position table; expected "
                                          "model.backbone=vit with model.learned_positions=true"):
        load_config("dino", ["model.position_grid=6"])
    with pytest.raises(ConfigError, match="model.learned_positions shapes the text trunk or a ViT; this run's "
                                          "modality is image with model.backbone=resnet18"):
        load_config("simclr", ["model.backbone=resnet18", "model.learned_positions=true"])


def test_a_vit_export_that_does_not_map_says_why(tmp_path):
    from selfsup.export import ExportError, export

    cfg = load_config("simclr", [*TINY, *NORM, "model.norm=rmsnorm"])
    with pytest.raises(ExportError, match="ViTModel needs model.mlp=gelu, model.norm=layernorm, "
                                          "model.norm_position=pre; Dinov2Model needs model.mlp=gelu or swiglu, "):
        export(tmp_path / "run", cfg, None, "hf", tmp_path / "out")  # refused before the weights are read
    cfg = load_config("dino", [*TINY, *NORM, "model.layer_scale=0.1", "model.mlp_hidden=48"])
    with pytest.raises(ExportError, match=r"Dinov2Model needs an MLP width that an integer mlp_ratio gives "
                                          r"\(model.mlp_hidden = model.dim × mlp_ratio\); use --format safetensors"):
        export(tmp_path / "run", cfg, None, "hf", tmp_path / "out")
