"""``exstream``: online replay with ExStream (Hayes, Cahill, Kanan, ICRA 2019).

Per-class buffers that merge their two closest points when full (``cml_bench/buffers/exstream.py``,
with the multi-label and image-replay adaptations). A point's position is the backbone's globally
average-pooled feature map of the image when it arrived (the model in eval mode, after the
optimiser step); the buffer keeps the images.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cml_bench.buffers import ExStreamBuffer
from cml_bench.replay import ReplayOptions, replay_plugin
from cml_bench.strategy import StrategyContext, register_strategy


def pooled_features(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float [N, C]: the backbone's feature map averaged over positions."""
    with torch.no_grad():
        return model.backbone(images).mean((2, 3))


@dataclass(frozen=True)
class ExStreamOptions(ReplayOptions):
    """``buffer_size`` (None: the benchmark's, shared by all class buffers) and ``replay_batch_size``."""


@register_strategy("exstream", options=ExStreamOptions, reference="Hayes et al., ICRA 2019",
                   description="online replay; per-class buffers merge their two closest points when full")
def build(options: ExStreamOptions, ctx: StrategyContext) -> list:
    return [replay_plugin(ExStreamBuffer, options, ctx, keys=pooled_features)]
