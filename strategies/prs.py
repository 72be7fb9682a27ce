"""``prs``: online replay with Partitioning Reservoir Sampling (Kim, Jeong, Kim, ECCV 2020).

The memory is partitioned among classes towards target shares ``n_c^rho`` (rho < 0 favours rare
classes); the algorithm lives in ``cml_bench/buffers/prs.py``, the replay protocol in
``cml_bench/replay.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from cml_bench.buffers import make_buffer
from cml_bench.replay import OnlineReplayPlugin
from cml_bench.strategy import StrategyContext, register_strategy


@dataclass(frozen=True)
class PRSOptions:
    """Attributes: ``buffer_size`` and ``rho`` (None: the benchmark's protocol values, COCOseq 2000
    and -0.03, NUS-WIDEseq 2000 and 0.02) and ``replay_batch_size``."""

    buffer_size: int | None = None
    rho: float | None = None
    replay_batch_size: int = 10


@register_strategy("prs", options=PRSOptions, reference="Kim, Jeong, Kim, ECCV 2020",
                   description="online replay; memory partitioned among classes by PRS (favours rare classes)")
def build(options: PRSOptions, ctx: StrategyContext) -> list:
    size = options.buffer_size or ctx.meta.default_buffer_size
    rho = ctx.meta.prs_rho if options.rho is None else options.rho
    buffer = make_buffer("prs", size, ctx.meta.num_classes, seed=ctx.seed, rho=rho)
    return [OnlineReplayPlugin(buffer, options.replay_batch_size)]
