"""The objective contract: what the trainer, evaluation and export may rely on, and nothing more.

An objective is an `nn.Module` that owns its heads (and teacher, queue, prototypes or codebook) around a backbone
and maps a batch (data/batch.py) to a `LossOutput` (objectives/output.py): a loss *summed* over `count` terms, so the
trainer can divide by the count of the whole accumulated step. Every objective class names `Objective` among its
bases, so the defaults below are its defaults and a type checker holds it to the rest:

    class SimCLR(nn.Module, Objective):
        unit = "image"
        def forward(self, batch: ImageBatch) -> LossOutput: ...

What an objective needs from the data before it exists (text windows one token longer, the training rows to fit
on, whether it can stream) is read from its class, not its instance (`objectives/build.py` `data_needs`), so the data
can be made first and the objective built from it in one pass.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from torch import nn

from selfsup.objectives.output import LossOutput


@runtime_checkable
class Objective(Protocol):
    unit: str  # what throughput and MFU count: "token", "image", "pair" or "clip"
    model: nn.Module  # the backbone (media tower for alignment runs): what eval, embed and export use

    window_overlap: int = 0  # text: tokens a training window holds beyond model.context (CLM's shift: 1)
    validates: bool = True  # False: no held-out loss (DeepCluster's pseudo-labels exist for training rows only)
    token_nll: bool = False  # the loss is a mean negative log-likelihood per predicted token: exp(loss) is a perplexity
    fits_on_data: ClassVar[bool] = False  # built from the training rows (codebook, clusters, k-means units)
    streams: ClassVar[bool] = True  # can train from streamed shards (False: it holds every training row in memory)
    continues: ClassVar[bool] = True  # can go on pretraining on new data (False: heads tied to its training rows)

    def forward(self, batch) -> LossOutput: ...

    def flops_per_token(self) -> float | None:
        """Text: the model's FLOPs per token (PaLM's formula); None: the trainer counts them with FlopCounterMode."""
        return None

    def before_step(self, step: int) -> None:
        """After the backward, before the optimizer step `step`: gradients an objective holds back (DINO's and
        SwAV's last layer or prototypes early on)."""

    def after_step(self, step: int) -> None:
        """After optimizer step `step`: EMA teachers, centres, queues, logit-scale clamps, re-clustering."""

    def reinitialised(self, step: int) -> list[nn.Parameter]:
        """The parameters after_step(step) re-initialised (DeepCluster's classifier after a re-clustering), whose
        optimizer state the trainer restarts with them. A function of `step` alone, so a resumed run restarts the
        same state at the same steps."""
        return []
