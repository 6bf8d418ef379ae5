"""Checkpoints under faults (issue 14): a diverging run keeps its last good checkpoint (item 5); a damaged
checkpoint is found by its checksums and the previous intact one is used (item 6); a full disk stops the run in one
line without leaving a temporary folder, and a killed save's temporary folder is removed on the next start
(item 11)."""

import errno
import json
import shutil

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from selfsup import config, rundir
from selfsup.config import ModelConfig, OptimConfig
from selfsup.models.gpt import GPT
from selfsup.objectives.clm import CausalLM
from selfsup.objectives.contract import Objective
from selfsup.train import checkpoint, optim, setup, trainer
from selfsup.train.trainer import TrainingError
from tests.test_train import Killed, cfg_for, crash_after_step, losses, quiet

RUN = ["train.max_steps=6", "train.log_every=1", "train.checkpoint_every=2", "train.keep_checkpoints=3"]


class _Faulty(torch.nn.Module, Objective):
    """Wraps an objective: its loss is NaN from forward call `nan_from` on; after step `poison_at` its weights are."""

    window_overlap = 1
    unit = "token"

    def __init__(self, inner, nan_from=None, poison_at=None):
        super().__init__()
        self.inner, self.model, self.nan_from, self.poison_at, self.calls = inner, inner.model, nan_from, poison_at, 0

    def forward(self, batch):
        out = self.inner(batch)
        self.calls += 1
        if self.nan_from is not None and self.calls >= self.nan_from:
            out.loss = out.loss * float("nan")
        return out

    def after_step(self, step):
        self.inner.after_step(step)
        if step == self.poison_at:  # an update that left a weight non-finite though its own loss was finite
            with torch.no_grad():
                next(self.inner.parameters()).fill_(float("nan"))

    def flops_per_token(self):
        return self.inner.flops_per_token()


def _faulty(monkeypatch, **kw):
    build = setup.build_objective
    monkeypatch.setattr(setup, "build_objective", lambda cfg, tok, images, **_: _Faulty(build(cfg, tok), **kw))


def _names(run_dir):
    return [p.name for p in checkpoint.checkpoints(run_dir)]


# item 5: divergence ------------------------------------------------------------------------------------------------

def test_a_diverging_run_keeps_its_last_good_checkpoint_and_names_it(corpus, tmp_path, monkeypatch):
    _faulty(monkeypatch, nan_from=4)  # steps 4, 5, 6 non-finite; checkpoints fall due at 2 and 4
    out = tmp_path / "nan"
    with pytest.raises(TrainingError) as e:
        trainer.train(cfg_for(corpus, out, "train.max_steps=20", "train.max_bad_steps=3", "train.checkpoint_every=2",
                              "train.keep_checkpoints=2"), quiet())
    assert _names(out) == ["step-00000002"]  # nothing written during the streak, so nothing good rotated away
    assert "not finite for 3 steps in a row (steps 4-6)" in str(e.value)
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step-00000002'}" in str(e.value)
    assert f"resume from it with `selfsup train {out}`" in str(e.value) and "\n" not in str(e.value)


def test_a_non_finite_state_is_never_checkpointed(corpus, tmp_path, monkeypatch):
    _faulty(monkeypatch, poison_at=3)  # step 3's loss is finite but leaves NaN weights; steps 4 and 5 are NaN
    out = tmp_path / "poisoned"
    with pytest.raises(TrainingError, match="not finite for 2 steps in a row"):
        trainer.train(cfg_for(corpus, out, "train.max_steps=20", "train.max_bad_steps=2", "train.checkpoint_every=1",
                              "train.keep_checkpoints=3"), quiet())
    assert _names(out) == ["step-00000001", "step-00000002"]
    assert all(v.isfinite().all() for v in load_file(out / "checkpoints" / "step-00000002" / "model.safetensors")
               .values() if v.is_floating_point())


def test_a_checkpoint_due_in_a_streak_is_written_at_its_first_finite_step(corpus, tmp_path, monkeypatch):
    build = setup.build_objective

    class _OneBadStep(_Faulty):
        def forward(self, batch):
            out = super().forward(batch)
            if self.calls == 4:  # step 4, when a checkpoint falls due
                out.loss = out.loss * float("nan")
            return out

    monkeypatch.setattr(setup, "build_objective", lambda cfg, tok, images, **_: _OneBadStep(build(cfg, tok)))
    out = tmp_path / "streak"
    summary = trainer.train(cfg_for(corpus, out, *RUN, "train.eval_every=1000"), quiet())
    assert summary["nan_skipped_steps"] == 1 and _names(out) == ["step-00000002", "step-00000005", "step-00000006"]


# item 6: damaged checkpoints ---------------------------------------------------------------------------------------

def _saved(tmp_path, steps=(1, 2, 3)):
    torch.manual_seed(0)
    model = GPT(ModelConfig(dim=32, depth=1, heads=2, context=8, vocab_size=300))
    opt = optim.build(model, OptimConfig(name="adamw"), torch.device("cpu"))
    model(torch.randint(0, 300, (2, 8))).sum().backward()
    opt.step()
    for step in steps:
        checkpoint.save(tmp_path, step, model, opt, {"data": {}}, keep=5)
    return model, opt


def _flip(path, name="model.safetensors"):
    """Flip the sign and top exponent bits of the first float of a norm weight: a byte the model surely uses."""
    data = bytearray(path.read_bytes()) if name is None else bytearray((path / name).read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    key = next(k for k in sorted(header) if "norm" in k and header[k]["dtype"] == "F32")
    data[8 + header_len + header[key]["data_offsets"][0] + 3] ^= 0xFF
    (path if name is None else path / name).write_bytes(bytes(data))


DAMAGE = {
    "a flipped byte": (_flip, "model.safetensors is not what was written: its sha256 differs"),
    "a truncated file": (lambda p: (p / "optim.safetensors").write_bytes((p / "optim.safetensors").read_bytes()[:99]),
                         "optim.safetensors has 99 bytes"),
    "an empty file": (lambda p: (p / "rng.safetensors").write_bytes(b""), "rng.safetensors has 0 bytes"),
    "a missing file": (lambda p: (p / "model.safetensors").unlink(), "model.safetensors is missing"),
    "state.json not JSON": (lambda p: (p / "state.json").write_text("{not json"), "state.json is not JSON"),
    "manifest.json not JSON": (lambda p: (p / "manifest.json").write_bytes(b"\xff"), "manifest.json is not JSON"),
    "no manifest": (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_is_named_and_the_previous_intact_one_used(tmp_path, damage):
    _saved(tmp_path)
    spoil, why = DAMAGE[damage]
    spoil(tmp_path / "checkpoints" / "step-00000003")
    said = []
    assert checkpoint.latest(tmp_path, said.append) == tmp_path / "checkpoints" / "step-00000002"
    assert len(said) == 1 and "step-00000003 is damaged" in said[0] and why in said[0], said
    assert "using step-00000002" in said[0]


def test_no_intact_checkpoint_is_one_line_naming_the_folder(tmp_path):
    _saved(tmp_path, steps=(1, 2))
    _flip(tmp_path / "checkpoints" / "step-00000002")
    (tmp_path / "checkpoints" / "step-00000001" / "state.json").write_text("")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.latest(tmp_path)
    assert str(e.value).startswith(f"no intact checkpoint in {tmp_path / 'checkpoints'}: ")
    assert "step-00000002" in str(e.value) and "step-00000001" in str(e.value) and "Move that folder" in str(e.value)


def test_a_checkpoint_of_an_older_version_without_checksums_still_loads(tmp_path):
    model, opt = _saved(tmp_path, steps=(1,))
    old = tmp_path / "checkpoints" / "step-00000001"
    (old / "manifest.json").unlink()
    state = json.loads((old / "state.json").read_text())
    del state["checksums"]
    (old / "state.json").write_text(json.dumps(state))
    said = []
    assert checkpoint.latest(tmp_path, said.append) == old and said == []
    assert checkpoint.load(old, model, opt)["step"] == 1


@pytest.fixture(scope="module")
def killed(corpus, tmp_path_factory):
    """A run killed after step 5 (checkpoints at steps 2 and 4), and the losses of the same run uninterrupted."""
    root = tmp_path_factory.mktemp("killed")
    full = trainer.train(cfg_for(corpus, root / "full", *RUN), quiet())
    assert full["steps"] == 6
    with pytest.MonkeyPatch.context() as mp:
        crash_after_step(mp, CausalLM, 5)
        with pytest.raises(Killed):
            trainer.train(cfg_for(corpus, root / "run", *RUN), quiet())
    assert _names(root / "run") == ["step-00000002", "step-00000004"]
    return root / "run", losses(root / "full")


def _copy(killed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(killed[0], run)
    return run


def test_a_flipped_byte_resumes_from_the_previous_checkpoint_with_the_uninterrupted_losses(killed, tmp_path, capsys):
    run = _copy(killed, tmp_path)
    _flip(run / "checkpoints" / "step-00000004")
    from rich.console import Console

    trainer.train(config.load(str(run)), Console(file=None, force_terminal=False, width=400))
    printed = capsys.readouterr().out
    assert (f"checkpoint {run / 'checkpoints' / 'step-00000004'} is damaged (model.safetensors is not what was "
            "written: its sha256 differs): using step-00000002, the newest intact checkpoint") in printed
    assert f"resuming from {run / 'checkpoints' / 'step-00000002'} (step 2)" in printed
    after = losses(run)
    assert sorted(after) == list(range(1, 7))
    for step, loss in killed[1].items():
        assert after[step] == pytest.approx(loss, abs=1e-6), step


def test_no_intact_checkpoint_stops_the_run_in_one_line(killed, tmp_path):
    run = _copy(killed, tmp_path)
    (run / "checkpoints" / "step-00000004" / "model.safetensors").unlink()
    (run / "checkpoints" / "step-00000002" / "state.json").write_text("{")
    with pytest.raises(TrainingError, match=f"^no intact checkpoint in {run / 'checkpoints'}: .*step-00000004 .*"
                                            "model.safetensors is missing.*step-00000002.*Move that folder aside"):
        trainer.train(config.load(str(run)), quiet())


def test_open_run_uses_the_newest_checkpoint_that_verifies(killed, tmp_path):
    run = _copy(killed, tmp_path)
    _flip(run / "checkpoints" / "step-00000004")
    _, objective, _ = rundir.open_run(run, torch.device("cpu"))
    expected = load_file(run / "checkpoints" / "step-00000002" / "model.safetensors")
    for key, value in objective.state_dict().items():
        if key in expected:
            assert torch.equal(value, expected[key]), key
    (run / "checkpoints" / "step-00000002" / "rng.safetensors").unlink()
    with pytest.raises(rundir.RunDirError, match="^no intact checkpoint in "):
        rundir.open_run(run, torch.device("cpu"))


# item 11: disk full while checkpointing ----------------------------------------------------------------------------

@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   SafetensorError("Error while serializing: I/O error: No space left on device "
                                                   "(os error 28)")], ids=["OSError", "SafetensorError"])
def test_a_full_disk_stops_in_one_line_removes_the_partial_folder_and_keeps_the_previous(corpus, tmp_path,
                                                                                          monkeypatch, error):
    real = checkpoint.save_file

    def full_at_step_4(tensors, path, *a, **kw):
        if "step-00000004" in str(path):
            raise error
        return real(tensors, path, *a, **kw)

    monkeypatch.setattr(checkpoint, "save_file", full_at_step_4)
    out = tmp_path / "full"
    with pytest.raises(TrainingError) as e:
        trainer.train(cfg_for(corpus, out, *RUN), quiet())
    line = str(e.value)
    assert line.startswith(f"could not write checkpoint {out / 'checkpoints' / 'step-00000004'} (")
    assert "No space left on device" in line and "\n" not in line
    assert "MB free (the size of the previous checkpoint)" in line
    assert f"the previous checkpoint {out / 'checkpoints' / 'step-00000002'} is intact" in line
    assert f"`selfsup train {out}`" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]  # no .tmp-* left
    assert checkpoint.verify(out / "checkpoints" / "step-00000002") is None


def test_a_killed_saves_temporary_folders_are_removed_on_the_next_start(corpus, tmp_path):
    root = tmp_path / "run" / "checkpoints"
    trainer.train(cfg_for(corpus, tmp_path / "run", "train.max_steps=1"), quiet())
    left = [root / ".tmp-step-00000004-4242", root / ".tmp-step-00000004-sharded" / "sharded"]
    others = [root / ".tmp-notes", root / "mine", root / ".tmp-step-4"]
    for folder in left + others:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"partial")
    trainer.train(cfg_for(corpus, tmp_path / "run", "train.max_steps=2"), quiet())
    assert sorted(p.name for p in root.iterdir()) == [".tmp-notes", ".tmp-step-4", "mine", "step-00000001",
                                                      "step-00000002"]
