"""``ewc``: Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) in online mode.

Avalanche's ``EWCPlugin`` works unchanged with multi-hot targets: its Fisher pass calls the
strategy's criterion (our multi-label BCE) on the model's final logits. Online mode keeps one
penalty, the importances decayed by ``decay_factor`` and summed over tasks (Schwarz et al., 2018).
Cost: at the end of every task the plugin makes one extra forward/backward pass over the whole
task's training data (batch = train.batch_size) to estimate the Fisher information, which is
outside the one-pass protocol's budget but is how EWC is always run on these streams.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from cml_bench.strategy import StrategyContext, register_strategy

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import EWCPlugin


@dataclass(frozen=True)
class EWCOptions:
    """Attributes: ``ewc_lambda`` penalty weight; ``decay_factor`` of past importances (online mode)."""

    ewc_lambda: float = 100.0
    decay_factor: float = 0.9


@register_strategy("ewc", options=EWCOptions, reference="Kirkpatrick et al., PNAS 2017",
                   description="online EWC: quadratic penalty weighted by the Fisher information")
def build(options: EWCOptions, ctx: StrategyContext) -> list:
    return [EWCPlugin(ewc_lambda=options.ewc_lambda, mode="online", decay_factor=options.decay_factor)]
