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
