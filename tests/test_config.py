import pytest

from selfsup import config
from selfsup.config import ConfigError


def test_recipe_with_overrides_coerces_types():
    cfg = config.load("gpt-clm", ["train.max_steps=7", "optim.lr=3e-4", "train.compile=true", "out_dir=x"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 3e-4 and cfg.train.compile is True
    assert cfg.recipe == "gpt-clm" and cfg.out_dir == "x"


def test_default_out_dir_names_the_recipe():
    assert config.load("gpt-clm").out_dir == "runs/gpt-clm"


def test_issue_keys_exist():
    keys = set(config.all_keys())
    for k in ["data.path", "out_dir", "seed", "train.max_steps", "train.batch_size", "train.grad_accum",
              "train.checkpoint_every", "optim.name", "optim.lr", "optim.weight_decay", "sched.name",
              "sched.warmup_steps", "model.dim", "model.depth", "model.heads", "model.context", "model.vocab_size",
              "train.precision", "train.compile"]:
        assert k in keys


def test_typo_names_the_closest_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_step' \(did you mean 'train.max_steps'\?\)"):
        config.load("gpt-clm", ["train.max_step=10"])


def test_bad_value_names_key_given_and_expected():
    with pytest.raises(ConfigError) as e:
        config.load("gpt-clm", ["train.max_steps=abc"])
    msg = str(e.value)
    assert "train.max_steps" in msg and "'abc'" in msg and "integer" in msg and "\n" not in msg


def test_bad_choice_lists_the_choices():
    with pytest.raises(ConfigError, match=r"optim.name.*'sgd'.*adamw.*lamb.*lars"):
        config.load("gpt-clm", ["optim.name=sgd"])


def test_out_of_range_value():
    with pytest.raises(ConfigError, match=r"train.batch_size.*0.*greater than 0"):
        config.load("gpt-clm", ["train.batch_size=0"])


def test_heads_must_divide_dim():
    with pytest.raises(ConfigError, match="model.heads"):
        config.load("gpt-clm", ["model.dim=100", "model.heads=3"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        config.load("gpt-clm", ["train.max_steps"])


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="did you mean 'gpt-clm'"):
        config.load("gpt-clmm")


def test_yaml_file_and_unknown_key_in_file(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("objective: clm\ntrain:\n  max_steps: 5\n")
    assert config.load(str(good)).train.max_steps == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batchsize: 5\n")
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        config.load(str(bad))


def test_dump_round_trips(tmp_path):
    cfg = config.load("gpt-clm", ["seed=3"])
    (tmp_path / "config.yaml").write_text(config.dump(cfg))
    again = config.load(str(tmp_path), [])
    assert again.model_dump() == cfg.model_copy(update={"out_dir": str(tmp_path)}).model_dump()
