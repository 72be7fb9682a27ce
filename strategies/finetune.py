"""``finetune``: plain sequential training, the lower bound every continual strategy must beat."""
from __future__ import annotations

from dataclasses import dataclass

from cml_bench.strategy import StrategyContext, register_strategy


@dataclass(frozen=True)
class FinetuneOptions:
    """Finetune has no options of its own."""


@register_strategy("finetune", options=FinetuneOptions,
                   description="sequential training on each task, no memory (lower bound)")
def build(options: FinetuneOptions, ctx: StrategyContext) -> list:
    return []
