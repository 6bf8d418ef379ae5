"""model.init and --format hf for ResNets: transformers' own ResNetModel (random weights and BatchNorm statistics,
saved by save_pretrained) starts an image run with its own features, teachers included; the trained run exports
back as a ResNetModel with the run's features and a preprocessor_config.json that prepares a picture as our
evaluation does; what our ResNet cannot hold is refused in one line."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.config import ConfigError
from selfsup.train.continual import load_config
from tests.test_cli import invoke
from tests.test_init_llama import holding, squeeze

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

LAYOUTS = {"resnet18": dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512]),
           "resnet50": dict(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048])}
SMALL = ["image.size=32", "ssl.proj_hidden=64", "ssl.proj_dim=16", "ssl.pred_hidden=32", "ssl.queue_size=16",
         "dino.out_dim=64", "dino.bottleneck=16", "views.local_crops=0", "train.batch_size=8", "train.max_steps=2",
         "train.eval_batches=1", "train.eval_every=2", "train.log_every=1", "sched.warmup_steps=1", "data.workers=0"]
NORM = ["image.mean=[0.5,0.4,0.3]", "image.std=[0.2,0.25,0.3]"]  # objectives built directly need normalisation


def resnet_folder(root, backbone="resnet18", head=False, **changes):
    """A random transformers ResNet of our `backbone`'s layout (a ResNetForImageClassification with `head`) saved by
    save_pretrained, its BatchNorms' affine weights and running statistics drawn too: eval mode reads them."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(**(LAYOUTS[backbone] | changes), num_labels=5)
    model = (transformers.ResNetForImageClassification if head else transformers.ResNetModel)(config).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
    model.save_pretrained(root)
    return root, model.resnet if head else model


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    return resnet_folder(tmp_path_factory.mktemp("resnet18"))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """48 RGB PNGs, 40×36: smooth colour gradients with noise (non-square, so the centre crop matters)."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:36, 0:40] / 40.0
    for i in range(48):
        a, b, c = rng.uniform(0, 1, 3)
        base = np.stack([a * xx + (1 - a) * yy, b * yy, c * xx * yy], -1) * 200
        pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)  # (36, 40, 3)
        Image.fromarray(pixels).save(root / f"{i:02d}.png")
    return root


def features(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_imported_features_equal_transformers(backbone, tmp_path):
    from selfsup.models.hf.init import load_init
    from selfsup.models.resnet import ResNet

    folder, hf = resnet_folder(tmp_path, backbone)
    cfg = load_config("simclr", [f"model.init={folder}"])
    assert (cfg.model.backbone, cfg.model.small_stem, cfg.image.channels) == (backbone, False, 3)
    ours = ResNet(cfg.model.backbone, cfg.image.channels, cfg.model.small_stem).eval()
    started, _ = load_init(cfg, holding(ours))
    assert started["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    x = torch.randn(2, 3, 32, 32)
    expected = hf(x).pooler_output.flatten(1)  # (2, 512 or 2048)
    assert torch.allclose(features(ours, x), expected, atol=1e-4)
    assert ours.layers[0].branch[1].num_batches_tracked == 7


def test_an_image_classifier_imports_its_trunk(tmp_path):
    from selfsup.models.hf.init import load_init
    from selfsup.models.resnet import ResNet

    folder, trunk = resnet_folder(tmp_path, head=True)
    cfg = load_config("simclr", [f"model.init={folder}"])
    ours = ResNet(cfg.model.backbone).eval()
    _, line = load_init(cfg, holding(ours))
    assert line.endswith("; not used: classifier.1.bias, classifier.1.weight")  # 5 labels: no counterpart of ours
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(features(ours, x), trunk(x).pooler_output.flatten(1), atol=1e-4)


@pytest.mark.parametrize("objective, teacher", [("byol", "target"), ("mocov2", "key_encoder"),
                                                ("mocov3", "momentum_encoder"), ("dino", "teacher")])
def test_teachers_start_from_the_imported_weights(resnet18, objective, teacher):
    from selfsup.models.hf.init import load_init
    from selfsup.objectives.build import build_objective

    folder, hf = resnet18
    cfg = load_config(objective, [f"model.init={folder}", *SMALL, *NORM])
    built = build_objective(cfg).eval()
    load_init(cfg, built)
    student, copy = built.model.state_dict(), getattr(built, teacher).model.state_dict()
    assert student.keys() == copy.keys() and all(torch.equal(student[k], copy[k]) for k in student)
    x = torch.randn(2, 3, 32, 32)
    expected = hf(x).pooler_output.flatten(1)
    assert torch.allclose(features(getattr(built, teacher).model, x), expected, atol=1e-4)


def eval_view(path, cfg):
    """A picture file as our evaluation feeds it: decoded into the image cache's row, then the centre view."""
    from selfsup.data.read.image import decode_image
    from selfsup.views.augment import center_view

    row = torch.from_numpy(np.array(decode_image(path, cfg.image.size, cfg.image.channels)))  # (3, S, S) uint8
    return center_view(row[None], cfg.image.size, cfg.image.mean, cfg.image.std)  # (1, 3, S, S)


def test_train_from_the_model_and_export_back(resnet18, pictures, tmp_path):
    from selfsup.rundir import open_run

    folder, hf = resnet18
    out = tmp_path / "run"
    text = invoke("train", "simclr", f"model.init={folder}", f"data.path={pictures}", f"out_dir={out}", *SMALL)
    assert squeeze(f"model.init: {folder} (weights sha256 ") in squeeze(text)
    first = json.loads((out / "history.jsonl").read_text().splitlines()[0])
    assert first["started_from"]["path"] == str(folder)
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                                  "preprocessor_config.json"]
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "ResNetModel" and back.config.architectures == ["ResNetModel"]
    cfg, objective, _ = open_run(out, torch.device("cpu"))
    x = torch.cat([eval_view(pictures / f"{i:02d}.png", cfg) for i in range(4)])  # (4, 3, 32, 32)
    ours = features(objective.model, x)  # (4, 512): the trained run, BatchNorm statistics moved by training
    assert not torch.allclose(ours, hf(x).pooler_output.flatten(1), atol=1e-3)
    assert torch.allclose(features(back, x).pooler_output.flatten(1), ours, atol=1e-4)

    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf", backend="pil")
    for side in ((48, 48), (96, 48)):  # square, and a crop on whole pixels both ways (see export._image_processor)
        picture = tmp_path / f"{side[0]}x{side[1]}.png"
        Image.open(pictures / "00.png").resize(side).save(picture)
        theirs = processor(images=Image.open(picture), return_tensors="pt").pixel_values  # (1, 3, 32, 32)
        assert torch.allclose(theirs, eval_view(picture, cfg), atol=1e-5)


def test_a_grayscale_run_exports_with_its_processor(tmp_path):
    from selfsup.export import export
    from selfsup.objectives.build import build_objective

    cfg = load_config("simclr", ["model.backbone=resnet18", "model.small_stem=false", "image.channels=1",
                                 "image.mean=[0.4]", "image.std=[0.3]", *SMALL])
    objective = build_objective(cfg).eval()
    export(tmp_path / "run", cfg, objective, "hf", tmp_path / "hf")  # a fresh model: only the mapping is at stake
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf", backend="pil")
    picture = tmp_path / "gray.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)).save(picture)
    theirs = processor(images=Image.open(picture), return_tensors="pt").pixel_values  # (1, 1, 32, 32)
    ours = eval_view(picture, cfg)
    assert torch.allclose(theirs, ours, atol=1e-5)
    assert torch.allclose(features(back, theirs).pooler_output.flatten(1), features(objective.model, ours), atol=1e-4)


def test_an_override_that_contradicts_the_model_is_one_line(resnet18):
    folder, _ = resnet18
    with pytest.raises(ConfigError) as e:
        load_config("simclr", [f"model.init={folder}", "model.small_stem=true"])
    assert str(e.value) == (f"model.small_stem=True: model.init '{folder}' has a 7×7 stride-2 stem with max-pool, "
                            "so small_stem False; drop the override")
    with pytest.raises(ConfigError, match="model.backbone=resnet50: .* has layer_type, depths and hidden_sizes of "
                                          "resnet18; drop the override"):
        load_config("simclr", [f"model.init={folder}", "model.backbone=resnet50"])
    with pytest.raises(ConfigError, match="is a ResNetModel, which starts objective simclr or .*; this run has "
                                          "objective=mae"):
        load_config("mae", [f"model.init={folder}"])


@pytest.mark.parametrize("changes, says", [
    ({"depths": [3, 4, 6, 3]}, "layer_type basic with depths [3, 4, 6, 3] and hidden_sizes [64, 128, 256, 512] (our "
                               "ResNets are resnet18: basic [2, 2, 2, 2] [64, 128, 256, 512]; resnet50: bottleneck "
                               "[3, 4, 6, 3] [256, 512, 1024, 2048])"),
    ({"hidden_act": "gelu"}, 'hidden_act "gelu" (ours: "relu")'),
    ({"embedding_size": 32}, "embedding_size 32 (ours: 64)"),
    ({"downsample_in_first_stage": True}, "downsample_in_first_stage true (ours: false)"),
    ({"layer_type": "bottleneck", "depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048],
      "downsample_in_bottleneck": True}, "downsample_in_bottleneck true (ours: false)"),
    ({"num_channels": 4}, "num_channels 4 (image.channels is 1 or 3)"),
])
def test_what_our_resnet_cannot_hold_is_refused(tmp_path, changes, says):
    transformers.ResNetConfig(**(LAYOUTS["resnet18"] | changes)).save_pretrained(tmp_path)  # config.json alone
    with pytest.raises(ConfigError) as e:
        load_config("simclr", [f"model.init={tmp_path}"])
    assert str(e.value) == f"model.init '{tmp_path}': {says} is not supported yet"


def test_a_missing_tensor_is_one_line(resnet18, tmp_path):
    from safetensors.torch import load_file, save_file

    from selfsup.models.hf.init import load_init
    from selfsup.models.resnet import ResNet

    folder, _ = resnet18
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    del tensors["encoder.stages.1.layers.0.shortcut.convolution.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    cfg = load_config("simclr", [f"model.init={tmp_path}"])
    with pytest.raises(ConfigError) as e:
        load_init(cfg, holding(ResNet(cfg.model.backbone)))
    assert str(e.value) == (f"model.init '{tmp_path}': its weights have no 'encoder.stages.1.layers.0.shortcut."
                            "convolution.weight'; expected a ResNetModel's tensors")


def test_a_small_stem_run_is_not_exported_as_resnet(tmp_path):
    from selfsup.export import ExportError, export
    from selfsup.objectives.build import build_objective

    cfg = load_config("simclr", ["model.backbone=resnet18", *SMALL, *NORM])  # small_stem: the default
    with pytest.raises(ExportError) as e:
        export(tmp_path / "run", cfg, build_objective(cfg), "hf", tmp_path / "hf")
    assert "ResNetModel needs model.small_stem=false (its stem is the 7×7 stride-2 convolution and max-pool)" in \
        str(e.value) and "\n" not in str(e.value)
