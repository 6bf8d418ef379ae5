"""Issue 14, guards: a config number that is not one (true, .inf, nan, a negative rate), a device the machine
lacks, a tokenizer or quantize.json that is not one, and an export or embedding written over a run, each refused
in one line before anything is written."""

from __future__ import annotations

import pytest

from selfsup import config
from selfsup.config import ConfigError, RunConfig

# ------------------------------------------------------------------------------------------- config numbers


def _annotation(key: str):
    section, _, leaf = key.rpartition(".")
    owner = RunConfig.model_fields[section].annotation if section else RunConfig
    return owner.model_fields[leaf].annotation


def _mentions(annotation, kind: type) -> bool:
    from typing import get_args, get_origin

    return kind in (annotation, get_origin(annotation)) or any(_mentions(a, kind) for a in get_args(annotation))


def _length(key: str) -> int:
    """How many values the key holds: 0 for a scalar; its default's length, or one for a list without a default."""
    section, _, leaf = key.rpartition(".")
    default = RunConfig().model_dump()[section][leaf] if section else RunConfig().model_dump()[leaf]
    return len(default) if isinstance(default, (tuple, list)) else int(_mentions(_annotation(key), list))


def _one_line_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        config.load("gpt-clm", list(overrides))
    assert "\n" not in str(e.value)
    return str(e.value)


def _numeric(annotation) -> bool:
    from typing import get_args

    return annotation in (int, float) or type(annotation) in (int, float) or any(map(_numeric, get_args(annotation)))


NUMBER_KEYS = [k for k in config.all_keys() if _numeric(_annotation(k))]
FLOAT_KEYS = [k for k in NUMBER_KEYS if _mentions(_annotation(k), float)]


def test_every_number_key_is_found():
    assert len(NUMBER_KEYS) > 80 and "train.max_steps" in NUMBER_KEYS and "image.channels" in NUMBER_KEYS
    assert "optim.betas" in FLOAT_KEYS and "image.std" in FLOAT_KEYS and "train.compile" not in NUMBER_KEYS


@pytest.mark.parametrize("key", NUMBER_KEYS)
def test_a_number_key_refuses_true_and_false(key):
    n = _length(key)
    for value in ("true", "false") + (("[true, 0.5]",) if n else ()):
        msg = _one_line_error(f"{key}={value}")
        assert f"config key '{key}" in msg and "expected a number, not true or false" in msg, msg


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_a_float_key_refuses_inf_and_nan(key):
    n = _length(key)
    for value in (".inf", "-.inf", ".nan"):
        given = f"[{', '.join([value] * n)}]" if n else value
        msg = _one_line_error(f"{key}={given}")
        assert f"config key '{key}" in msg and ("finite" in msg or "greater" in msg or "less" in msg), msg


def test_lr_inf_nan_and_negative_are_refused_naming_the_key():
    assert _one_line_error("optim.lr=.inf") == ("config key 'optim.lr': got inf; expected a finite number")
    assert "optim.lr" in _one_line_error("optim.lr=.nan")
    assert _one_line_error("optim.lr=-0.001") == ("config key 'optim.lr': got -0.001; expected greater than 0")


def test_max_steps_true_is_not_one_step():
    assert _one_line_error("train.max_steps=true") == ("config key 'train.max_steps': got True; expected a number, "
                                                       "not true or false")
    assert "train.max_steps" in _one_line_error("train.max_steps=2.5")


@pytest.mark.parametrize("override, key", [
    ("optim.betas=[0.9, 1.5]", "optim.betas[1]"), ("optim.betas=[-0.1, 0.9]", "optim.betas[0]"),
    ("views.blur_p=[0.5, 2]", "views.blur_p[1]"), ("views.crop_scale=[0, 1]", "views.crop_scale[0]"),
    ("views.jitter=[0.4, 0.4, 0.4, 0.9]", "views.jitter[3]"), ("views.jitter=[-1, 0.4, 0.4, 0.1]", "views.jitter[0]"),
    ("image.std=[0.2, 0, 0.2]", "image.std[1]"), ("audio.std=0", "audio.std"),
])
def test_out_of_range_floats_in_tuples_and_lists_name_their_place(override, key):
    assert f"config key '{key}'" in _one_line_error(override)


def test_numbers_still_parse_from_overrides_and_yaml(tmp_path):
    cfg = config.load("gpt-clm", ["train.max_steps=100", "optim.lr=3e-4", "optim.betas=[0.9, 0.99]", "seed=7",
                                  "image.channels=1", "image.mean=[0.5]", "image.std=[0.25]", "train.compile=true"])
    assert (cfg.train.max_steps, cfg.optim.lr, cfg.optim.betas, cfg.seed) == (100, 3e-4, (0.9, 0.99), 7)
    assert cfg.image.std == [0.25] and cfg.train.compile is True
    (tmp_path / "config.yaml").write_text(config.dump(cfg))
    assert config.load(str(tmp_path)).optim.betas == (0.9, 0.99)


def test_a_hybrid_term_weight_of_true_is_refused():
    msg = _one_line_error("objective=hybrid", "hybrid.terms=[{objective: mlm, weight: true}, {objective: simcse}]")
    assert "hybrid.terms[0].weight" in msg and "not true or false" in msg
    msg = _one_line_error("objective=hybrid", "hybrid.terms=[{objective: mlm, overrides: {mlm.p: .inf}}, "
                          "{objective: simcse}]")
    assert "hybrid.terms[0]" in msg and "mlm.p" in msg and "finite" in msg


# ------------------------------------------------------------------------------------ devices, files of a run


def _main(monkeypatch, capsys, *args) -> tuple[int, str]:
    """`selfsup ARGS` through the real entry point: (exit code, stderr)."""
    import sys

    from selfsup.cli import main

    monkeypatch.setattr(sys, "argv", ["selfsup", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def _one_line(code: int, err: str) -> str:
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    """A text run directory as training leaves it (config.yaml, tokenizer.json, model.safetensors, a checkpoint
    folder), made without training: a tiny GPT at its initial weights."""
    from safetensors.torch import save_model

    from selfsup.data.read.tokenizer import train_bpe
    from selfsup.objectives.build import build_objective
    from tests.conftest import TINY

    run = tmp_path_factory.mktemp("made") / "run"
    run.mkdir()
    cfg = config.load("gpt-clm", [*TINY, f"out_dir={run}"])
    tok = train_bpe([f"a line of text number {i} about runs and exports" for i in range(200)], 512)
    tok.save(str(run / "tokenizer.json"))
    (run / "config.yaml").write_text(config.dump(cfg))
    save_model(build_objective(cfg, tok), str(run / "model.safetensors"))
    (run / "checkpoints").mkdir()
    return run


def _copy(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run")


def _contents(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("device, gpus, expected", [
    ("banana", 0, "train.device 'banana': expected auto, cpu, cuda, cuda:N or mps (this machine has: auto, cpu)"),
    ("cuda", 0, "train.device 'cuda': this machine has no CUDA device; expected one of auto, cpu"),
    ("cuda:7", 0, "train.device 'cuda:7': this machine has no CUDA device; expected one of auto, cpu"),
    ("cuda:7", 2, "train.device 'cuda:7': this machine has 2 CUDA devices; expected one of auto, cpu, cuda, cuda:0 "
                  "to cuda:1"),
    ("mps", 0, "train.device 'mps': this machine has no MPS device; expected one of auto, cpu"),
])
def test_a_device_the_machine_lacks_is_one_line_saying_what_it_has(device, gpus, expected, monkeypatch):
    import torch

    from selfsup.dist import resolve_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        resolve_device(device)
    assert str(e.value) == expected
    if gpus:
        assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_train_on_a_missing_device_stops_in_one_line_before_the_run_directory(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("banana", "cuda:7"):
        out = tmp_path / device
        err = _one_line(*_main(monkeypatch, capsys, "train", "gpt-clm", f"out_dir={out}", f"train.device={device}"))
        assert f"train.device '{device}'" in err and not out.exists()


def test_eval_device_option_is_named(made_run, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    err = _one_line(*_main(monkeypatch, capsys, "eval", made_run, "--data", tmp_path, "--device", "cuda:1"))
    assert "--device 'cuda:1': this machine has no CUDA device" in err


@pytest.mark.parametrize("text", ["not json at all", '{"version": "1.0"}', "[1, 2]"])
def test_a_data_tokenizer_that_is_not_one_is_one_line_naming_the_key(text, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "tok.json"
    bad.write_text(text)
    (tmp_path / "c.txt").write_text("some text\n" * 20)
    err = _one_line(*_main(monkeypatch, capsys, "train", "gpt-clm", f"data.path={tmp_path / 'c.txt'}",
                           f"out_dir={tmp_path / 'run'}", f"data.tokenizer={bad}"))
    assert f"data.tokenizer '{bad}' could not be read" in err and "expected a tokenizer.json" in err
    err = _one_line(*_main(monkeypatch, capsys, "train", "gpt-clm", f"data.path={tmp_path / 'c.txt'}",
                           f"out_dir={tmp_path / 'run'}", f"data.tokenizer={tmp_path / 'missing.json'}"))
    assert "data.tokenizer" in err and "missing.json" in err


@pytest.mark.parametrize("command", [["eval", "--data", "X"], ["export", "--out", "OUT"], ["embed", "X", "--out", "E"]])
def test_a_run_whose_tokenizer_is_not_one_is_one_line(command, made_run, tmp_path, monkeypatch, capsys):
    run = _copy(made_run, tmp_path)
    (run / "tokenizer.json").write_text('{"model": "garbage"')
    (tmp_path / "x.txt").write_text("text\n")
    args = [{"X": tmp_path / "x.txt", "OUT": tmp_path / "out", "E": tmp_path / "e.npy"}.get(a, a) for a in command]
    err = _one_line(*_main(monkeypatch, capsys, command[0], run, *args[1:]))
    assert f"'{run / 'tokenizer.json'}' could not be read" in err and "expected a tokenizer.json" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "e.npy").exists()


@pytest.mark.parametrize("marker", ["not json", "[1]", '{"mode": "int4", "layers": 3}', '{"layers": 3}'])
def test_a_quantize_json_that_is_not_ours_is_one_line(marker, made_run, tmp_path, monkeypatch, capsys):
    run = _copy(made_run, tmp_path)
    (run / "quantize.json").write_text(marker)
    (tmp_path / "x.txt").write_text("text\n")
    err = _one_line(*_main(monkeypatch, capsys, "eval", run, "--data", tmp_path / "x.txt"))
    assert f"'{run / 'quantize.json'}' is not a quantized export's marker" in err and '"mode": "int8"' in err


# ------------------------------------------------------------------------------------------------ exports


@pytest.mark.parametrize("where", ["RUN", "RUN/sub", "RUN/..", "LINK"])
def test_export_never_writes_over_into_or_around_the_run_even_with_force(where, made_run, tmp_path, monkeypatch,
                                                                         capsys):
    run = _copy(made_run, tmp_path)
    (tmp_path / "link").symlink_to(run)
    before = _contents(tmp_path)
    out = {"RUN": run, "RUN/sub": run / "sub", "RUN/..": tmp_path, "LINK": tmp_path / "link"}[where]
    for fmt in ("hf", "safetensors"):
        for force in ([], ["--force"]):
            err = _one_line(*_main(monkeypatch, capsys, "export", run, "--format", fmt, "--out", out, *force))
            assert f"--out '{out}'" in err and "run directory" in err and "expected a folder outside it" in err
    assert _contents(tmp_path) == before and not (run / "sub").exists()


def test_export_into_a_folder_that_holds_files_needs_force_and_then_replaces_them(made_run, tmp_path, monkeypatch,
                                                                                  capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    err = _one_line(*_main(monkeypatch, capsys, "export", made_run, "--out", out))
    assert err == (f"error: --out '{out}' is not empty; expected a new or empty folder, or --force to replace what it "
                   "holds")
    assert _contents(out) == {"notes.txt": b"my notes"}
    assert _main_ok(monkeypatch, "export", made_run, "--out", out, "--force")
    assert sorted(_contents(out)) == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                                      "tokenizer.json", "tokenizer_config.json"]
    (tmp_path / "file").write_text("x")
    assert "is a file" in _one_line(*_main(monkeypatch, capsys, "export", made_run, "--out", tmp_path / "file"))


def _main_ok(monkeypatch, *args) -> bool:
    from typer.testing import CliRunner

    from selfsup.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return True


def test_export_into_an_empty_folder_and_a_new_nested_one(made_run, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert _main_ok(monkeypatch, "export", made_run, "--format", "safetensors", "--out", tmp_path / "empty")
    assert sorted(_contents(tmp_path / "empty")) == ["README.md", "config.yaml", "model.safetensors",
                                                          "tokenizer.json"]
    assert _main_ok(monkeypatch, "export", made_run, "--format", "safetensors", "--quantize", "int8", "--out",
                    tmp_path / "a" / "b")
    assert "quantize.json" in _contents(tmp_path / "a" / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "empty"]  # no temporary folder left beside


@pytest.mark.parametrize("exists", ["new", "empty", "forced"])
def test_a_failed_export_leaves_nothing_and_keeps_what_was_there(exists, made_run, tmp_path, monkeypatch):
    import torch

    from selfsup import export as export_mod
    from selfsup.rundir import open_run

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "save_file", broken)
    out = tmp_path / "parent" / "out"
    if exists != "new":
        out.mkdir(parents=True)
    if exists == "forced":
        (out / "old.txt").write_text("kept until the export is whole")
    before = _contents(tmp_path)
    cfg, objective, _ = open_run(made_run, torch.device("cpu"))
    with pytest.raises(OSError, match="disk full"):
        export_mod.export(made_run, cfg, objective, "hf", out, force=exists == "forced")
    assert _contents(tmp_path) == before
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == (
        [] if exists == "new" else ["parent", "parent/out"] + (["parent/out/old.txt"] if exists == "forced" else []))


# ------------------------------------------------------------------------------- other outputs over a run


@pytest.mark.parametrize("option, name", [("--out", "config.yaml.npy"), ("--jsonl", "config.yaml"),
                                          ("--jsonl", "tokenizer.json"), ("--out", "checkpoints/e.npy"),
                                          ("--jsonl", "model.safetensors")])
def test_embed_never_writes_over_a_run_file(option, name, made_run, tmp_path, monkeypatch, capsys):
    run = _copy(made_run, tmp_path)
    (tmp_path / "x.txt").write_text("a text\nanother text\n")
    if name == "config.yaml.npy":  # np.save adds .npy: the file it writes is config.yaml.npy, not a run file
        assert _main_ok(monkeypatch, "embed", run, tmp_path / "x.txt", "--out", run / "config.yaml")
        assert (run / "config.yaml.npy").is_file()
        return
    before = _contents(run)
    args = ["--out", tmp_path / "e.npy", "--jsonl", run / name] if option == "--jsonl" else ["--out", run / name]
    err = _one_line(*_main(monkeypatch, capsys, "embed", run, tmp_path / "x.txt", *args))
    assert f"{option} '{run / name}' would write" in err and "which selfsup reads in the run directory" in err
    assert _contents(run) == before and not (tmp_path / "e.npy").exists()


def test_embed_jsonl_over_its_input_is_refused(made_run, tmp_path, monkeypatch, capsys):
    data = tmp_path / "x.jsonl"
    data.write_text('{"text": "a text"}\n')
    err = _one_line(*_main(monkeypatch, capsys, "embed", made_run, data, "--out", tmp_path / "e.npy", "--jsonl", data))
    assert f"--jsonl '{data}' is the input" in err and data.read_text() == '{"text": "a text"}\n'


def test_docstrings_out_over_a_run_file_is_refused(made_run, tmp_path, monkeypatch, capsys):
    run = _copy(made_run, tmp_path)
    before = _contents(run)
    err = _one_line(*_main(monkeypatch, capsys, "data", "docstrings", "json", "--out", run / "config.yaml"))
    assert "--out" in err and "config.yaml" in err and _contents(run) == before
