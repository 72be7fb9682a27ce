"""``ocdm``: online replay with Optimizing Class Distribution in Memory (Liang and Li, arXiv
2209.11469, 2022).

Each mini-batch competes with the memory: the buffer drops, greedily, the samples whose removal
brings the memory's label distribution closest (KL) to the target n_c^rho
(``cml_bench/buffers/ocdm.py``). Labels only, like PRS; by default the same target as PRS.
"""
from __future__ import annotations

from dataclasses import dataclass

from cml_bench.buffers import OCDMBuffer
from cml_bench.replay import ReplayOptions, replay_plugin
from cml_bench.strategy import StrategyContext, register_strategy


@dataclass(frozen=True)
class OCDMOptions(ReplayOptions):
    """``buffer_size`` and ``rho`` (None: the benchmark's protocol values, those of PRS; rho = 0 makes
    the target uniform over the seen classes) and ``replay_batch_size``."""

    rho: float | None = None


@register_strategy("ocdm", options=OCDMOptions, reference="Liang and Li, arXiv 2209.11469 (2022)",
                   description="online replay; greedy memory update towards a target label distribution (KL)")
def build(options: OCDMOptions, ctx: StrategyContext) -> list:
    rho = ctx.meta.memory_rho if options.rho is None else options.rho
    return [replay_plugin(OCDMBuffer, options, ctx, rho=rho)]
