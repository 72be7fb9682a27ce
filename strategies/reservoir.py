"""``reservoir``: online replay with classic reservoir sampling (CRS, Vitter 1985; Chaudhry et al. 2019)."""
from __future__ import annotations

from dataclasses import dataclass

from cml_bench.buffers import ReservoirBuffer
from cml_bench.replay import ReplayOptions, replay_plugin
from cml_bench.strategy import StrategyContext, register_strategy


@dataclass(frozen=True)
class ReservoirOptions(ReplayOptions):
    """``buffer_size`` (None: the benchmark's, 2000 on COCOseq) and ``replay_batch_size``."""


@register_strategy("reservoir", options=ReservoirOptions, reference="Chaudhry et al., 2019 (CRS)",
                   description="online replay; memory kept by reservoir sampling (uniform over the stream)")
def build(options: ReservoirOptions, ctx: StrategyContext) -> list:
    return [replay_plugin(ReservoirBuffer, options, ctx)]
