"""selfsup plan answers for every paper-scale recipe on every device of the table (the small recipes:
tests/test_plan.py, whose helper this is)."""

from __future__ import annotations

import pytest

from selfsup import config
from tests.test_plan import answers_on_every_device

pytestmark = pytest.mark.usefixtures("one_thread")


def test_plan_answers_for_every_paper_scale_recipe_and_device():
    for name, path in sorted(config.recipe_files().items()):
        if config.paper_scale(path):
            answers_on_every_device(name)
