"""``prs``: online replay with Partitioning Reservoir Sampling (Kim, Jeong, Kim, ECCV 2020).

The memory is partitioned among classes towards target shares ``n_c^rho`` (rho < 0 favours rare
classes); the algorithm lives in ``cml_bench/buffers/prs.py``, the replay protocol in
``cml_bench/replay.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from cml_bench.buffers import PRSBuffer
from cml_bench.replay import ReplayOptions, replay_plugin
from cml_bench.strategy import StrategyContext, register_strategy


@dataclass(frozen=True)
class PRSOptions(ReplayOptions):
    """``buffer_size`` and ``rho`` (None: the benchmark's protocol values, COCOseq 2000
    and -0.03, NUS-WIDEseq 2000 and 0.02) and ``replay_batch_size``."""

    rho: float | None = None


@register_strategy("prs", options=PRSOptions, reference="Kim, Jeong, Kim, ECCV 2020",
                   description="online replay; memory partitioned among classes by PRS (favours rare classes)")
def build(options: PRSOptions, ctx: StrategyContext) -> list:
    rho = ctx.meta.memory_rho if options.rho is None else options.rho
    return [replay_plugin(PRSBuffer, options, ctx, rho=rho)]
