"""``pseudo-label``: old-class pseudo-labels from the previous task's model (the label-absence baseline).

In a class-incremental multi-label session an image is labelled only with the session's classes,
even where it shows old ones (label absence); training then teaches the model that those old
classes are absent. Pseudo-labelling restores them: on every training batch the frozen model of the
previous task (``cml_bench/teacher.py``) scores the old classes, and each old class whose score is
above ``threshold`` becomes a positive target for that image. This is KRT's dynamic pseudo-label
(DPL) module without its attention (Dong et al., ICCV 2023; threshold 0.8 as in KRT's configs,
``thre: 0.8``). Targets of the current classes are the ground truth; old classes below the threshold
stay negative; replayed rows (with a replay strategy's memory) are pseudo-labelled the same way,
while the memory itself keeps the targets a sample arrived with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cml_bench.strategy import StrategyContext, register_strategy
from cml_bench.teacher import TeacherPlugin


class PseudoLabelPlugin(TeacherPlugin):
    """Adds the teacher's confident old-class predictions to the batch targets before the loss."""

    def __init__(self, meta, threshold: float):
        super().__init__(meta)
        self.threshold = threshold

    def after_forward(self, strategy, **kwargs):
        found = self.old_logits(strategy)
        if found is None:
            return
        logits, old = found
        targets = strategy.mbatch[1].clone()
        confident = (torch.sigmoid(logits) > self.threshold).to(targets.dtype)
        targets[:, old] = torch.maximum(targets[:, old], confident)
        strategy.mbatch[1] = targets


@dataclass(frozen=True)
class PseudoLabelOptions:
    """Attributes: ``threshold``: an old class whose teacher score (sigmoid) is above it becomes a
    positive target."""

    threshold: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"strategy.options.threshold must be in [0, 1), got {self.threshold}.")


@register_strategy("pseudo-label", options=PseudoLabelOptions,
                   reference="KRT's DPL without attention (Dong et al., ICCV 2023)",
                   description="old-class targets from the previous task's model where its score > threshold")
def build(options: PseudoLabelOptions, ctx: StrategyContext) -> list:
    return [PseudoLabelPlugin(ctx.meta, options.threshold)]
