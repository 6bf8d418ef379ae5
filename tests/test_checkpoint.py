import json

import torch
from safetensors.torch import load_file

from selfsup.config import ModelConfig, OptimConfig
from selfsup.models.gpt import GPT
from selfsup.train import checkpoint, optim


def _trained(name):
    torch.manual_seed(0)
    model = GPT(ModelConfig(dim=32, depth=1, heads=2, context=8, vocab_size=300))
    opt = optim.build(model, OptimConfig(name=name), torch.device("cpu"))
    for _ in range(2):
        model(torch.randint(0, 300, (2, 8))).sum().backward()
        opt.step()
    return model, opt


def test_round_trip_restores_model_optimizer_and_rng(tmp_path):
    for name in ("adamw", "lamb", "lars"):
        model, opt = _trained(name)
        torch.manual_seed(123)
        path = checkpoint.save(tmp_path / name, 2, model, opt, {"data": {"epoch": 0, "index": 7}}, keep=2)
        expected_draw = torch.rand(3)
        model2, opt2 = _trained(name)
        with torch.no_grad():
            for p in model2.parameters():
                p.add_(1.0)
        state = checkpoint.load(path, model2, opt2)
        assert state["step"] == 2 and state["data"] == {"epoch": 0, "index": 7}
        for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
            assert torch.equal(a, b)
        sd, sd2 = opt.state_dict(), opt2.state_dict()
        for i in sd["state"]:
            for k, v in sd["state"][i].items():
                assert torch.equal(v, sd2["state"][i][k])
        assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved


def test_only_safetensors_and_json_are_written(tmp_path):
    model, opt = _trained("adamw")
    path = checkpoint.save(tmp_path, 5, model, opt, {}, keep=1)
    assert sorted(f.name for f in path.iterdir()) == ["manifest.json", "model.safetensors", "optim.safetensors",
                                                      "rng.safetensors", "state.json"]
    json.loads((path / "state.json").read_text())
    assert sorted(json.loads((path / "manifest.json").read_text())["files"]) == [
        "model.safetensors", "optim.safetensors", "rng.safetensors", "state.json"]  # every other file, checksummed
    assert load_file(path / "optim.safetensors")  # plain tensors, nothing to unpickle


def test_keeps_the_latest_and_ignores_unfinished(tmp_path):
    model, opt = _trained("adamw")
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, model, opt, {}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000003"]
    (tmp_path / "checkpoints" / ".tmp-step-00000004-99").mkdir()  # a save killed half-way
    (tmp_path / "checkpoints" / "step-00000009").mkdir()  # no state.json: never completed
    assert checkpoint.latest(tmp_path).name == "step-00000003"
