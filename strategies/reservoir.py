"""``reservoir``: online replay with classic reservoir sampling (CRS, Vitter 1985; Chaudhry et al. 2019)."""
from __future__ import annotations

from dataclasses import dataclass

from cml_bench.buffers import make_buffer
from cml_bench.replay import OnlineReplayPlugin
from cml_bench.strategy import StrategyContext, register_strategy


@dataclass(frozen=True)
class ReservoirOptions:
    """Attributes: ``buffer_size`` (None: the benchmark's, 2000 on COCOseq) and ``replay_batch_size``."""

    buffer_size: int | None = None
    replay_batch_size: int = 10


@register_strategy("reservoir", options=ReservoirOptions, reference="Chaudhry et al., 2019 (CRS)",
                   description="online replay; memory kept by reservoir sampling (uniform over the stream)")
def build(options: ReservoirOptions, ctx: StrategyContext) -> list:
    size = options.buffer_size or ctx.meta.default_buffer_size
    buffer = make_buffer("reservoir", size, ctx.meta.num_classes, seed=ctx.seed)
    return [OnlineReplayPlugin(buffer, options.replay_batch_size)]
