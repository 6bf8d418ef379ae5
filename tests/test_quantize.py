"""Quantized exports: int8 linear layers and bf16 weights open like a run (eval, embed) and embed nearly as the
float model does; bad options are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from selfsup.rundir import open_run
from tests.conftest import TINY
from tests.test_cli import invoke
from tests.test_vision import run_main


@pytest.fixture(scope="module")
def mlm(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant") / "run"
    invoke("train", "bert-mlm", f"data.path={corpus}", f"out_dir={out}", *TINY, "model.dim=64", "train.max_steps=8")
    return out


def test_int8_export_quantizes_the_trunk_linear_layers_and_embeds_like_the_float_model(mlm, corpus, tmp_path):
    invoke("export", mlm, "--format", "safetensors", "--quantize", "int8", "--out", tmp_path / "int8")
    state = load_file(tmp_path / "int8" / "model.safetensors")
    int8 = [k for k in state if k.endswith(".weight_int8")]
    assert int8 and all(state[k].dtype == torch.int8 for k in int8)
    assert all(k.startswith("model.blocks.") for k in int8)  # the trunk's linear layers; embeddings stay float
    w = state[int8[0]].float() * state[int8[0].replace("_int8", "_scale")][:, None]
    float_w = load_file(mlm / "model.safetensors")[int8[0].replace("_int8", "")]
    assert (w - float_w).abs().max() <= float_w.abs().amax(dim=1).max() / 127 / 2 + 1e-7  # half a step at most
    assert json.loads((tmp_path / "int8" / "quantize.json").read_text())["layers"] == len(int8)
    _, objective, _ = open_run(tmp_path / "int8", torch.device("cpu"))
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert sum(isinstance(m, DynamicLinear) for m in objective.model.modules()) == len(int8)

    texts = corpus / "a.txt"
    invoke("embed", mlm, texts, "--out", tmp_path / "float.npy")
    invoke("embed", tmp_path / "int8", texts, "--out", tmp_path / "int8.npy")
    a, b = np.load(tmp_path / "float.npy"), np.load(tmp_path / "int8.npy")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == b.shape and cos.min() > 0.95


def test_bf16_export_halves_the_file_and_reads_back(mlm, tmp_path):
    invoke("export", mlm, "--format", "safetensors", "--quantize", "bf16", "--out", tmp_path / "bf16")
    state = load_file(tmp_path / "bf16" / "model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in state.values() if v.is_floating_point())
    size = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert size < 0.55 * (mlm / "model.safetensors").stat().st_size
    _, quantized, _ = open_run(tmp_path / "bf16", torch.device("cpu"))
    _, original, _ = open_run(mlm, torch.device("cpu"))
    for (name, p), q in zip(original.named_parameters(), quantized.parameters()):
        torch.testing.assert_close(q, p.bfloat16().float(), rtol=0, atol=0, msg=name)


def test_quantize_needs_safetensors_and_a_known_mode(mlm, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "export", mlm, "--format", "safetensors", "--quantize", "int4",
                            "--out", tmp_path / "x")
    assert code == 2 and "expected int8 or bf16" in err and len(err.strip().splitlines()) == 1
