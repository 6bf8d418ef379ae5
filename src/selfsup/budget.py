"""Step-count settings of the momentum and clustering objectives (BYOL, DINO, MoCo v2/v3, SwAV, DeepCluster) fitted
to the run's length, where neither the command line nor a YAML file sets them.

A recipe's values are its paper's, for runs of thousands of steps: a teacher at momentum 0.996 forgets half of
what it holds in 173 steps, so over a 300-step run it barely leaves its random init, and a last layer frozen for
100 steps is a third of the run. Each setting here is a share of train.max_steps instead, and the configured value
where the run is long enough for it (every recipe, of recipes/ and recipes/scale/, keeps its values at its own
train.max_steps):

    ssl.momentum                    the teacher's half-life 0.5 ** (1 / momentum) steps is HALF_LIFE of the run
    dino.teacher_temp_warmup_steps  30% of the run (the paper's 30 of 100 epochs)
    dino.freeze_last_layer_steps    5% of the run
    swav.freeze_prototypes_steps    5% of the run
    deepcluster.recluster_every     10% of the run (at least one step)

Pure functions of numbers: config.py applies them and records each as 'key=value (why)' in `fitted`.
"""

from __future__ import annotations

import math

HALF_LIFE = 0.1  # share of the run in which the teacher's memory of its weights halves


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
    enough = math.ceil(configured / part)
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
    ("dino.freeze_last_layer_steps", ("dino",), lambda v, steps: share(v, steps, 0.05, "the last layer frozen for")),
    ("swav.freeze_prototypes_steps", ("swav",), lambda v, steps: share(v, steps, 0.05, "the prototypes frozen for")),
    ("deepcluster.recluster_every", ("deepcluster",),
     lambda v, steps: share(v, steps, 0.1, "a re-clustering every", least=1)),
)
