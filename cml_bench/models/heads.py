"""The two pooled heads: plain linear (``pooled``) and normalised classifier (``cos``).

Every head maps a feature map ``[N, C, H, W]`` to per-module logits ``[S, N, M]`` (S = 1 for pooled
heads); the final prediction is the mean over modules and the loss is summed over modules.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormalizedClassifier(nn.Module):
    """``gamma * cos(feature, w_j)``: L2-normalised weights and features, so logits lie in [-gamma, gamma].

    Accepts one shared feature per image ``[N, C]`` (logits for every label from the same vector)
    or one feature per label ``[N, M, C]`` (label j is scored from its own feature).
    """

    def __init__(self, dim: int, num_labels: int, gamma: float = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_labels, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.gamma = gamma

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.weight, dim=-1)
        f = F.normalize(features, dim=-1)
        if f.dim() == 2:
            return self.gamma * f @ w.t()
        return self.gamma * (f * w).sum(-1)


class PooledHead(nn.Module):
    """Global average pooling and a linear classifier: the baseline every paper compares with."""

    def __init__(self, channels: int, num_labels: int):
        super().__init__()
        self.classifier = nn.Linear(channels, num_labels)

    def label_features(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared pooled feature ``[N, C]`` and the classifier weights ``[M, C]``."""
        return fmap.mean((2, 3)), self.classifier.weight

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.classifier(fmap.mean((2, 3))).unsqueeze(0)


class CosineHead(nn.Module):
    """Global average pooling and a normalised classifier with scale gamma (the ``+cos`` control).

    It has SSCA's classifier without its attention, so comparing the two separates what the
    spatial attention contributes from what the normalised classifier contributes.
    """

    def __init__(self, channels: int, num_labels: int, gamma: float = 30.0):
        super().__init__()
        self.classifier = NormalizedClassifier(channels, num_labels, gamma)

    def label_features(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fmap.mean((2, 3)), self.classifier.weight

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.classifier(fmap.mean((2, 3))).unsqueeze(0)
