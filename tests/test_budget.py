"""Step-count settings of the momentum and clustering recipes fitted to train.max_steps where the user left them
(budget.py): the fitted values of a short run, the recipes' own values at their own length and on long runs, the
user's values untouched, and a resumed run that keeps what was fitted when it started."""

from __future__ import annotations

import pytest
import yaml

from selfsup import budget, config
from tests.test_cli import invoke
from tests.test_vision import TINY_VISION, digits_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

FITTED_KEYS = [key for key, _, _ in budget.RULES]


def value(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def test_a_short_run_gets_a_teacher_half_life_of_half_of_it_and_shares_of_its_steps():
    for recipe in ("byol", "dino", "mocov2", "mocov3"):
        cfg = config.load(recipe, ["train.max_steps=100"])
        assert cfg.ssl.momentum == 0.9862 and 0.9862 ** 50 == pytest.approx(0.5, abs=2e-3)  # half-life 50 steps
        assert cfg.fitted[0] == "ssl.momentum=0.9862 (teacher half-life 50% of 100 steps; " + (
            "0.996 from 346 steps)" if recipe in ("byol", "dino") else "0.99 from 138 steps)")
    assert config.load("dino", ["train.max_steps=300"]).ssl.momentum == 0.9954  # 0.996's half-life is 173 steps
    dino = config.load("dino", ["train.max_steps=100"])
    assert (dino.dino.teacher_temp_warmup_steps, dino.dino.freeze_last_layer_steps) == (30, 33)  # 30%, a third
    assert dino.fitted[2] == ("dino.freeze_last_layer_steps=33 (the last layer frozen for 33% of 100 steps; 100 from "
                              "300 steps)")
    assert config.load("swav", ["train.max_steps=100"]).swav.freeze_prototypes_steps == 33
    assert config.load("deepcluster", ["train.max_steps=100"]).deepcluster.recluster_every == 67
    assert config.load("deepcluster", ["train.max_steps=1"]).deepcluster.recluster_every == 1  # never every 0
    simclr = config.load("simclr", ["train.max_steps=100"])
    assert simclr.fitted == [] and simclr.ssl.momentum == config.SSLConfig().momentum  # reads none of them


def test_300_steps_keep_the_frozen_steps_and_re_clustering_of_the_recipes():
    """What the digits measured: at 300 steps shorter frozen phases and more re-clusterings lose kNN accuracy."""
    for recipe, key in (("dino", "dino.freeze_last_layer_steps"), ("swav", "swav.freeze_prototypes_steps"),
                        ("deepcluster", "deepcluster.recluster_every")):
        cfg = config.load(recipe, ["train.max_steps=300"])
        assert value(cfg, key) == value(config.load(recipe), key) and f"{key}=" in cfg.fitted[-1]


@pytest.mark.parametrize("recipe", sorted(config.recipe_files()))
def test_every_recipe_keeps_its_own_values_at_its_own_length_and_beyond(recipe):
    shipped = config.validate(config.load_yaml(config.recipe_files()[recipe]))
    for steps in (shipped.train.max_steps, 10 * shipped.train.max_steps):
        cfg = config.load(recipe, [f"train.max_steps={steps}"])
        for key in FITTED_KEYS:
            assert value(cfg, key) == value(shipped, key), (key, steps)
        assert all("as configured: runs of" in line for line in cfg.fitted)


def test_a_value_the_user_sets_is_never_fitted(tmp_path):
    cfg = config.load("dino", ["train.max_steps=100", "ssl.momentum=0.996", "dino.freeze_last_layer_steps=100"])
    assert (cfg.ssl.momentum, cfg.dino.freeze_last_layer_steps, cfg.dino.teacher_temp_warmup_steps) == (0.996, 100, 30)
    assert [line.partition("=")[0] for line in cfg.fitted] == ["dino.teacher_temp_warmup_steps"]
    # a YAML file's keys are the user's too; what it leaves out takes the defaults, fitted
    own = tmp_path / "mine.yaml"
    own.write_text(yaml.safe_dump({"objective": "byol", "train": {"max_steps": 100}}))
    cfg = config.load(str(own))
    assert cfg.ssl.momentum == 0.9862 and cfg.fitted[0].startswith("ssl.momentum=0.9862 (")
    own.write_text(yaml.safe_dump({"objective": "byol", "train": {"max_steps": 100}, "ssl": {"momentum": 0.99}}))
    assert (config.load(str(own)).ssl.momentum, config.load(str(own)).fitted) == (0.99, [])


def test_a_resumed_run_keeps_what_was_fitted_to_its_length(digits_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    args = [f"data.path={digits_dir / 'train'}", f"out_dir={out}", *TINY_VISION, "train.checkpoint_every=10",
            "train.eval_every=100"]
    printed = invoke("train", "dino", *args, "train.max_steps=20")
    assert "fitted to the run's length: ssl.momentum=0.933 (teacher half-life 50% of 20 steps" in printed
    started = config.validate(config.load_yaml(out / "config.yaml"))
    assert started.ssl.momentum == 0.933 and started.dino.freeze_last_layer_steps == 7  # the recipe's 100: 20 / 3
    for again in (["train", "dino", *args, "train.max_steps=25"], ["train", str(out), "train.max_steps=30"]):
        printed = invoke(*again)  # the same command with more steps, then the run directory alone
        assert "resuming from" in printed and "ssl.momentum=0.933 (teacher half-life 50% of 20 steps" in printed
        resumed = config.validate(config.load_yaml(out / "config.yaml"))
        assert resumed.fitted == started.fitted
        for key in FITTED_KEYS:
            assert value(resumed, key) == value(started, key), key
    assert resumed.train.max_steps == 30
