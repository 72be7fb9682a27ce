"""``multitask``: the joint upper bound, training on the shuffled union of all tasks."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from cml_bench.strategy import StrategyContext, register_strategy

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import SupervisedPlugin


@dataclass(frozen=True)
class MultitaskOptions:
    """Options of ``multitask``.

    Attributes:
        epochs: passes over the union of all tasks; None = the benchmark's protocol
            (``BenchmarkMeta.joint_epochs``: 3 on ``synth-cocoseq``, where one pass trains its
            minority classes on fewer than 60 images each), else ``train.epochs``.
    """

    epochs: int | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"strategy.options.epochs must be >= 1, got {self.epochs}.")


class JointEpochs(SupervisedPlugin):
    """Sets the passes of the joint training before it starts."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def before_training_exp(self, strategy, **kwargs):
        strategy.train_epochs = self.epochs


@register_strategy("multitask", options=MultitaskOptions, joint=True,
                   description="joint training on the shuffled union of all tasks (upper bound)")
def build(options: MultitaskOptions, ctx: StrategyContext) -> list:
    epochs = options.epochs or ctx.meta.joint_epochs
    return [] if epochs is None else [JointEpochs(epochs)]
