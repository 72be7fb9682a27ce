"""The strategy plugin API: ``@register_strategy`` and what a strategy's build function receives.

A strategy is one module in ``strategies/`` (or a third-party module behind the
``cml_bench.strategies`` entry-point group)::

    @dataclass(frozen=True)
    class Options:
        ewc_lambda: float = 100.0

    @register_strategy("ewc", options=Options, description="...", reference="...")
    def build(options: Options, ctx: StrategyContext) -> list[SupervisedPlugin]:
        return [EWCPlugin(options.ewc_lambda, mode="online", decay_factor=0.9)]

The head (``+ssca``, ``+cos``) is not the strategy's business: the runner composes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from cml_bench.config import TrainConfig
from cml_bench.registry import STRATEGIES, decorator
from cml_bench.stream import BenchmarkMeta


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may know when it builds its plugins."""

    meta: BenchmarkMeta
    train: TrainConfig
    seed: int
    device: torch.device


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy.

    Attributes:
        name: registry name.
        build: ``build(options, ctx) -> list of Avalanche plugins``.
        options: frozen dataclass of the strategy's own options (``strategy.options`` in YAML).
        description: one line for ``list`` and the README's table.
        reference: the paper it comes from.
        joint: train once on the shuffled union of all tasks (the multitask upper bound) instead
            of task by task.
    """

    name: str
    build: Callable[[Any, StrategyContext], list]
    options: type
    description: str = ""
    reference: str = ""
    joint: bool = False


register_strategy = decorator(STRATEGIES, StrategySpec)
