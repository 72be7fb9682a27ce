"""``multitask``: the joint upper bound, one pass over the shuffled union of all tasks."""
from __future__ import annotations

from dataclasses import dataclass

from cml_bench.strategy import StrategyContext, register_strategy


@dataclass(frozen=True)
class MultitaskOptions:
    """Multitask has no options of its own; ``train.epochs`` sets the passes over the union."""


@register_strategy("multitask", options=MultitaskOptions, joint=True,
                   description="joint training on the shuffled union of all tasks (upper bound)")
def build(options: MultitaskOptions, ctx: StrategyContext) -> list:
    return []
