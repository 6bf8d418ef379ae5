"""model.init: a Hugging Face HubertModel starts an audio-mask run (HuBERT's masked prediction) with its own hidden
states, on the raw waveform, padded batches included; the run trains and exports back to transformers with the
hidden states of the trained run; a run trained from scratch with the waveform options exports too; what our
encoder cannot hold is refused in one line."""

import json

import numpy as np
import pytest
import torch

from selfsup.config import ConfigError
from selfsup.data.builtin.tones import write_tones
from selfsup.train.continual import load_config
from tests.test_cli import invoke
from tests.test_model_card import card, snippet

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layer_norm_eps=1e-5)
KINDS = {"base": dict(feat_extract_norm="group", do_stable_layer_norm=False),  # post-norm, GroupNorm on conv 0
         "large": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)}  # pre-norm, LayerNorm
STATS = ["audio.mean=0", "audio.std=1"]  # measured on the data in a run; unused by the waveform view
SMALL = ["train.batch_size=4", "train.max_steps=2", "train.eval_every=2", "train.eval_batches=1",
         "train.log_every=1", "sched.warmup_steps=1", "data.workers=0", "hubert.clusters=4",
         "hubert.kmeans_frames=200", "hubert.proj_dim=16", "hubert.mask_length=4"]
WAVEFORM = ["audio.input=waveform", "audio.positions=conv", "audio.conv_dim=[32,32,32,32,32,32,32]",
            "audio.conv_positions=16", "audio.conv_position_groups=4", "model.dim=32", "model.depth=2",
            "model.heads=2", "model.mlp=gelu", "model.norm=layernorm", "model.bias=all", "model.norm_position=post"]


def hubert_folder(root, **changes):
    """A tiny random HubertModel saved by transformers itself."""
    torch.manual_seed(0)
    model = transformers.HubertModel(transformers.HubertConfig(**(TINY | changes))).eval()
    model.save_pretrained(root)
    return root, model


@pytest.fixture(scope="module", params=list(KINDS))
def hubert(request, tmp_path_factory):
    return hubert_folder(tmp_path_factory.mktemp(f"hubert-{request.param}"), **KINDS[request.param])


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    write_tones(root, per_class_train=2, per_class_test=1, sample_rate=16000)
    return root / "train"


def waves():
    """Two clips (B, S) of half a second, the second 0.3 s of audio then zeros, and their attention mask."""
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([8000, 4800])
    x[1, 4800:] = 0
    return x, lengths, (torch.arange(8000)[None] < lengths[:, None]).long()


def hidden(objective, x, lengths):
    """Our encoder's last hidden states (B, T, D) and real-token mask (B, T)."""
    model = objective.model
    with torch.no_grad():
        h = model.embed(x)
        real = model.token_mask(lengths, h.shape[1])
        return model.encode(h, real), real


def test_config_and_hidden_states_equal_transformers(hubert, tones):
    from selfsup.models.hf.init import load_init
    from selfsup.objectives.build import build_objective

    folder, hf = hubert
    cfg = load_config("audio-mask", [f"model.init={folder}", f"data.path={tones}", *STATS])
    m, a = cfg.model, cfg.audio
    assert (m.dim, m.depth, m.heads, m.mlp_hidden, m.bias, m.norm, m.mlp) == (32, 2, 2, 48, "all", "layernorm", "gelu")
    assert (a.input, a.positions, a.conv_dim, a.conv_positions, a.conv_position_groups) == (
        "waveform", "conv", [32] * 7, 16, 4)
    assert m.norm_position == ("pre" if hf.config.do_stable_layer_norm else "post")
    objective = build_objective(cfg).eval()
    load_init(cfg, objective)
    assert torch.equal(objective.mask_embed, hf.masked_spec_embed)
    x, lengths, mask = waves()
    ours, real = hidden(objective, x, None)
    with torch.no_grad():
        assert torch.allclose(ours, hf(x).last_hidden_state, atol=1e-4)
        ours, real = hidden(objective, x, lengths)
        theirs = hf(x, attention_mask=mask).last_hidden_state
        assert real.sum(1).tolist() == [24, 14]  # HubertModel's feature-vector mask: (S − 400) // 320 + 1 tokens
        assert torch.allclose(ours[real], theirs[real], atol=1e-4)
        if hf.config.feat_extract_norm == "layer":  # no norm across time: the padded clip is the clip alone
            alone = hf(x[1:, :4800]).last_hidden_state[0]
            assert torch.allclose(ours[1, :14], alone, atol=1e-4)


def test_train_from_the_model_and_export_back(tones, tmp_path):
    """Large's layout (pre-norm, LayerNorm and biases in the convolutions); Base's exports from scratch below."""
    from selfsup.rundir import open_run
    from selfsup.views.media import AudioView

    folder, hf = hubert_folder(tmp_path / "large", **KINDS["large"])
    out = tmp_path / "run"
    text = invoke("train", "audio-mask", f"model.init={folder}", f"data.path={tones}", f"out_dir={out}", *SMALL,
                  "optim.lr=1e-9")  # two steps that barely move: the run still is the model it started from
    assert "model.init:" in text and "input: waveform" in (out / "config.yaml").read_text()
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == "HubertModel"
    _, objective, _ = open_run(out, torch.device("cpu"))
    x, lengths, mask = waves()
    ours, real = hidden(objective, x, lengths)
    with torch.no_grad():
        assert torch.allclose(back(x, attention_mask=mask).last_hidden_state[real], ours[real], atol=1e-4)
        assert torch.allclose(hf(x, attention_mask=mask).last_hidden_state[real], ours[real], atol=1e-4)
    # its feature extractor gives the input our view gives
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "hf")
    clips = [x[0].numpy(), x[1, :4800].numpy()]
    got = extractor(clips, sampling_rate=16000, padding=True, return_tensors="pt")
    view, _ = AudioView(0.0, 1.0, waveform=True)(x[:, None], lengths)
    assert torch.equal(got["attention_mask"], mask) and torch.allclose(got["input_values"], view, atol=1e-5)


def test_a_waveform_run_from_scratch_exports_to_hubert(tones, tmp_path):
    from selfsup.rundir import open_run

    out = tmp_path / "run"
    invoke("train", "audio-mask", f"data.path={tones}", f"out_dir={out}", *SMALL, *WAVEFORM)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and 0 < r["masked_share"] < 1 for r in metrics if "loss" in r)
    invoke("export", out, "--format", "hf", "--out", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["do_stable_layer_norm"] is False and config["feat_extract_norm"] == "group"
    back = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    _, objective, _ = open_run(out, torch.device("cpu"))
    x, lengths, mask = waves()
    ours, real = hidden(objective, x, lengths)
    with torch.no_grad():
        assert torch.allclose(back(x, attention_mask=mask).last_hidden_state[real], ours[real], atol=1e-4)
    scope = {}
    exec(snippet(card(tmp_path / "hf")[1], tmp_path / "hf"), scope)  # the model card's usage code
    clips = [torch.from_numpy(c).float() for c in scope["clips"]]  # what `selfsup embed` makes of the same clips
    x = torch.stack([clips[0], torch.nn.functional.pad(clips[1], (0, len(clips[0]) - len(clips[1])))])[:, None]
    lengths = torch.tensor([len(c) for c in clips])
    with torch.no_grad():
        embeddings = objective.model(*objective.view.eval()(x, lengths))
    assert torch.allclose(scope["embeddings"], embeddings, atol=1e-4)


@pytest.mark.parametrize("changes, says", [
    ({"feat_extract_activation": "relu"}, "feat_extract_activation 'relu' (our feature encoder's is gelu)"),
    ({"conv_pos_batch_norm": True}, "conv_pos_batch_norm true (our position convolution has weight norm)"),
    ({"hidden_act": "relu"}, "hidden_act 'relu' (ours: gelu, gelu_new, gelu_pytorch_tanh, quick_gelu)"),
])
def test_what_our_encoder_cannot_hold_is_refused(tones, tmp_path, changes, says):
    folder, _ = hubert_folder(tmp_path, **changes)
    with pytest.raises(ConfigError) as e:
        load_config("audio-mask", [f"model.init={folder}", f"data.path={tones}"])
    assert str(e.value) == f"model.init '{folder}': {says} is not supported yet"


def test_other_runs_are_refused(tones, tmp_path):
    from selfsup.export import ExportError, _hf_model

    folder, _ = hubert_folder(tmp_path)
    with pytest.raises(ConfigError, match="is a HubertModel, which starts objective hubert; this run has "
                                          "objective=mlm"):
        load_config("bert-mlm", [f"model.init={folder}"])
    with pytest.raises(ConfigError, match=r"audio.conv_position_groups=5 must divide model.dim \(32\)"):
        load_config("audio-mask", [*WAVEFORM, "audio.conv_position_groups=5"])
    with pytest.raises(ConfigError, match="audio.hop=300 must divide the waveform encoder's 320 samples per token"):
        load_config("audio-mask", [*WAVEFORM, "audio.hop=300"])
    cfg = load_config("audio-mask", [f"data.path={tones}", *STATS])  # the recipe: log-mel and RoPE
    with pytest.raises(ExportError, match="HubertModel needs objective hubert with audio.input=waveform, "
                                          "audio.positions=conv"):
        _hf_model(tmp_path, cfg, None)


def test_weight_norm_saved_before_the_parametrization_is_read(tones, tmp_path):
    from safetensors.torch import load_file, save_file

    from selfsup.models.hf.init import load_init
    from selfsup.objectives.build import build_objective

    folder, hf = hubert_folder(tmp_path)
    old = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                              "weight_v"): v
           for k, v in load_file(folder / "model.safetensors").items()}
    assert "encoder.pos_conv_embed.conv.weight_g" in old
    save_file(old, folder / "model.safetensors", metadata={"format": "pt"})
    cfg = load_config("audio-mask", [f"model.init={folder}", f"data.path={tones}", *STATS])
    objective = build_objective(cfg).eval()
    load_init(cfg, objective)
    x, _, _ = waves()
    with torch.no_grad():
        assert torch.allclose(hidden(objective, x, None)[0], hf(x).last_hidden_state, atol=1e-4)


def test_waveform_targets_are_the_cached_log_mel():
    """audio-mask on the waveform clusters the log-mel frames data/read/audio.log_mel would have cached."""
    from selfsup.data.read.audio import log_mel
    from selfsup.objectives.hubert import LogMel

    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(2)) * 0.1
    ours = LogMel(16000, 64, 400, 160)(x)
    assert ours.shape == (2, 64, 51)
    for i in range(2):
        assert torch.allclose(ours[i], torch.from_numpy(log_mel(x[i].numpy(), 16000, 64, 400, 160)), atol=1e-3)
