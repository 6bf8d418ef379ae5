"""The objective contract (objectives/contract.py): every recipe's objective names `Objective` among its bases, and
what the data layer reads from the classes before the objective exists (objectives/build.py `data_needs`) is what
the built objective says of itself."""

from __future__ import annotations

import pytest

from selfsup import config
from selfsup.data.read.tokenizer import train_bpe
from selfsup.objectives.build import build_objective, data_needs, objective_class
from selfsup.objectives.contract import Objective
from tests.test_vision import NORM, TINY_VISION

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = ["model.dim=32", "model.depth=1", "model.heads=2", "model.context=16", "model.vocab_size=300",
        "text.dim=32", "text.depth=1", "text.heads=2", "text.vocab_size=300", "align.embed_dim=32"]
AUDIO = ["audio.mean=-4.0", "audio.std=3.0", "audio.sample_rate=8000", "audio.n_fft=200", "audio.hop=80",
         "audio.n_mels=32", "hubert.clusters=4"]
# paper-scale recipes whose shape ties keys the tiny settings change: grouped-query heads, an unprojected tower
TIED_KEYS = {"llama-1b": ["model.kv_heads=1"], "siglip-b16": ["align.embed_dim=32"]}


@pytest.fixture(scope="module")
def tok():
    return train_bpe(["the quick brown fox jumps over the lazy dog"] * 20, 300)


@pytest.mark.parametrize("recipe", sorted(config.recipe_files()))
def test_every_recipe_builds_an_objective_that_keeps_the_contract(recipe, tok):
    cfg = config.load(recipe, [*TINY_VISION, *NORM, *TEXT, *AUDIO, "views.local_crops=0", *TIED_KEYS.get(recipe, [])])
    objective = build_objective(cfg, tok)
    assert isinstance(objective, Objective) and Objective in type(objective).__mro__
    for part in cfg.parts:
        assert Objective in objective_class(part).__mro__
    needs = data_needs(cfg)
    assert needs.window_overlap == objective.window_overlap
    assert needs.validates == objective.validates
    assert objective.unit in ("token", "image", "pair", "clip")
    assert objective.model is not None
    # the hooks exist on every objective, a no-op where it has nothing to do
    objective.before_step(1)
    objective.after_step(1)
    # what it re-initialised are its own parameters: the optimizer's state is keyed by them
    own = {id(p) for p in objective.parameters()}
    for step in (1, cfg.deepcluster.recluster_every):
        assert all(id(p) in own for p in objective.reinitialised(step))
