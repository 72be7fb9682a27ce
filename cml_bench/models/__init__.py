"""Models: a timm feature-map backbone plus a registered head (built in: pooled, cos, ssca)."""
from __future__ import annotations

import torch
from torch import nn

from cml_bench.config import ModelConfig, image_hw
from cml_bench.models.backbone import FeatureBackbone, PretrainedWeightsError
from cml_bench.models.heads import CosineHead, Head, HeadSpec, NormalizedClassifier, PooledHead, register_head
from cml_bench.models.ssca import SSCAHead
from cml_bench.registry import HEADS

__all__ = ["MultiLabelNet", "build_model", "build_head", "FeatureBackbone", "PretrainedWeightsError", "Head",
           "HeadSpec", "register_head", "PooledHead", "CosineHead", "SSCAHead", "NormalizedClassifier",
           "count_parameters"]


class MultiLabelNet(nn.Module):
    """Backbone + head. ``forward`` gives final logits ``[N, M]``; ``forward_modules`` ``[S, N, M]``."""

    def __init__(self, backbone: FeatureBackbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward_modules(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_modules(x).mean(0)

    def label_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features the classifier sees (``[N, C]`` shared, or ``[N, M, C]`` per label) and weights ``[M, C]``."""
        return self.head.label_features(self.backbone(x))


def build_head(cfg: ModelConfig, channels: int, num_labels: int) -> Head:
    """The registered head ``cfg.head`` for a ``channels``-channel feature map and ``num_labels`` labels."""
    if cfg.head not in HEADS:
        raise ValueError(f"Unknown model.head '{cfg.head}'. Available: {', '.join(HEADS)}.")
    return HEADS.get(cfg.head).build.from_config(cfg, channels, num_labels)


def build_model(cfg: ModelConfig, num_labels: int) -> MultiLabelNet:
    """Build backbone and head from the model section of the config."""
    backbone = FeatureBackbone(cfg.backbone, cfg.pretrained, cfg.feature_level, cfg.stem_pool,
                               cfg.weights_path, image_hw(cfg.image_size, "model.image_size"),
                               cfg.backbone_options, cfg.weights)
    return MultiLabelNet(backbone, build_head(cfg, backbone.channels, num_labels))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
