"""Step-count settings of the momentum and clustering objectives (BYOL, DINO, MoCo v2/v3, SwAV, DeepCluster) fitted
to the run's length, where neither the command line nor a YAML file sets them.

A recipe's values are its paper's, for runs of thousands of steps. Each setting here is at most a share of
train.max_steps, so a run too short for the configured value gets one of its own length, and every run at least
as long as its recipe (recipes/ and recipes/scale/, at their own train.max_steps) keeps the configured value:

    ssl.momentum                    a teacher half-life, log 0.5 / log momentum steps, of at most HALF_LIFE of the run
                                    (0.996 from 346 steps, 0.99 from 138)
    dino.teacher_temp_warmup_steps  at most 30% of the run (the paper's 30 of 100 epochs)
    dino.freeze_last_layer_steps    at most a third of the run
    swav.freeze_prototypes_steps    at most a third of the run
    deepcluster.recluster_every     at most two thirds of the run (one re-clustering after the first clustering)

The shares are measured (BENCHMARKS.md, "Momentum and clustering defaults"): on the digits at 300 steps, tighter
ones cost kNN accuracy. A teacher half-life of 10% of the run (momentum 0.977) took DINO from 65.8% to 60.7% and
MoCo v3 from 57.5% to 32.4%; DINO's last layer frozen for 5% of the run instead of the recipe's 100 steps took it
to 50.6% (a near-uniform teacher); SwAV's prototypes frozen for 5%, from 58.0% to 28.5%; DeepCluster re-clustered
every 10%, from 65.2% to 51.0%. So a 300-step run keeps the recipes' values (momentum 0.9954 for 0.996), and
shorter runs are kept from a teacher that never leaves its init or a layer frozen throughout.

Pure functions of numbers: config.py applies them and records each as 'key=value (why)' in `fitted`.
"""

from __future__ import annotations

import math

HALF_LIFE = 0.5  # the longest teacher half-life, as a share of the run


def momentum(configured: float, steps: int) -> tuple[float, str] | None:
    """The EMA momentum whose half-life is HALF_LIFE of `steps`, at most `configured`, and why; None where
    there is no half-life to fit (momentum 0 copies the student, 1 freezes the teacher)."""
    if not 0 < configured < 1:
        return None
    enough = math.ceil(math.log(0.5) / math.log(configured) / HALF_LIFE)  # steps at which `configured` fits
    if steps >= enough:
        return configured, (f"as configured: runs of {enough:,}+ steps keep it, shorter ones get a teacher half-life "
                            f"of {HALF_LIFE:.0%} of the run")
    fitted = min(round(0.5 ** (1 / (HALF_LIFE * steps)), 4), configured)
    return fitted, f"teacher half-life {HALF_LIFE:.0%} of {steps:,} steps; {configured:g} from {enough:,} steps"


def share(configured: int, steps: int, part: float, what: str, least: int = 0) -> tuple[int, str] | None:
    """`part` of `steps` (at least `least`), at most `configured`, and why; None where `configured` is 0 (off)."""
    if configured == 0:
        return None
    enough = math.ceil(round(configured / part, 6))  # 100 / (1 / 3) is 300, not 300.00000000000006
    if steps >= enough:
        return configured, (f"as configured: runs of {enough:,}+ steps keep it, shorter ones get {what} {part:.0%} "
                            "of the run")
    fitted = max(least, round(part * steps))
    return fitted, f"{what} {part:.0%} of {steps:,} steps; {configured:,} from {enough:,} steps"


# key, the objectives that read it, its value for a run of `steps` (configured value, steps -> value and why)
RULES = (
    ("ssl.momentum", ("byol", "dino", "mocov2", "mocov3"), momentum),
    ("dino.teacher_temp_warmup_steps", ("dino",),
     lambda v, steps: share(v, steps, 0.3, "a teacher temperature warm-up of")),
    ("dino.freeze_last_layer_steps", ("dino",), lambda v, steps: share(v, steps, 1 / 3, "the last layer frozen for")),
    ("swav.freeze_prototypes_steps", ("swav",), lambda v, steps: share(v, steps, 1 / 3, "the prototypes frozen for")),
    ("deepcluster.recluster_every", ("deepcluster",),
     lambda v, steps: share(v, steps, 2 / 3, "a re-clustering every", least=1)),
)
