"""``lwf``: Learning without Forgetting (Li and Hoiem, ECCV 2016) for multi-label outputs.

The frozen model of the previous task (``cml_bench/teacher.py``) gives soft targets for the old
classes on every training batch; the loss adds ``lambda_`` times the binary cross-entropy between the
model's old-class outputs and the teacher's sigmoid scores, both at temperature ``temperature``
(the multi-label form: one sigmoid per class in place of LwF's softmax over classes). The current
classes are trained on their labels as usual; nothing is stored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cml_bench.strategy import StrategyContext, register_strategy
from cml_bench.teacher import TeacherPlugin


class LwFPlugin(TeacherPlugin):
    """Adds the old-class distillation term to the loss before the backward pass."""

    def __init__(self, meta, lambda_: float, temperature: float):
        super().__init__(meta)
        self.lambda_ = lambda_
        self.temperature = temperature

    def before_backward(self, strategy, **kwargs):
        found = self.old_logits(strategy)
        if found is None:
            return
        teacher, old = found
        out = strategy.mb_output
        logits = out.mean(0) if out.dim() == 3 else out  # SSCA: [S, N, M] -> the final logits
        t = self.temperature
        soft = torch.sigmoid(teacher / t)
        strategy.loss += self.lambda_ * F.binary_cross_entropy_with_logits(logits[:, old] / t, soft)


@dataclass(frozen=True)
class LwFOptions:
    """Attributes: ``lambda_`` weight of the distillation term; ``temperature`` of both sigmoids."""

    lambda_: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.lambda_ < 0 or self.temperature <= 0:
            raise ValueError(f"strategy.options: lambda_ must be >= 0 and temperature > 0, got "
                             f"{self.lambda_} and {self.temperature}.")


@register_strategy("lwf", options=LwFOptions, reference="Li and Hoiem, ECCV 2016 (multi-label form)",
                   description="distils the previous task's old-class sigmoid outputs (no memory)")
def build(options: LwFOptions, ctx: StrategyContext) -> list:
    return [LwFPlugin(ctx.meta, options.lambda_, options.temperature)]
