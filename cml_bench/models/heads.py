"""The head plugin API (``@register_head``) and the two pooled heads: plain linear (``pooled``) and
normalised classifier (``cos``).

Every head maps a feature map ``[N, C, H, W]`` to per-module logits ``[S, N, M]`` (S = 1 for pooled
heads); the final prediction is the mean over modules and the loss is summed over modules. A head is
one class, registered by name, which is then ``model.head`` and the strategy suffix (``prs+cos``)::

    @register_head("max")
    class MaxPooledHead(Head):  # global max pooling and a linear classifier
        def __init__(self, channels: int, num_labels: int):
            super().__init__()
            self.classifier = nn.Linear(channels, num_labels)

        def forward(self, fmap: torch.Tensor) -> torch.Tensor:
            return self.classifier(fmap.amax((2, 3))).unsqueeze(0)

``from_config`` builds it from the model section (override it to read ``model.gamma`` and the like);
``label_features`` is what ``python -m cml_bench angles`` measures, needed only there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cml_bench.registry import HEADS, decorator

if TYPE_CHECKING:
    from cml_bench.config import ModelConfig


class Head(nn.Module):
    """A classification head: ``forward(fmap [N, C, H, W]) -> logits [S, N, M]`` (S modules).

    ``label_features(fmap)`` -> (the features the classifier scores, ``[N, C]`` shared or
    ``[N, M, C]`` per label, and its weights ``[M, C]``) serves the angle diagnostics.
    """

    @classmethod
    def from_config(cls, cfg: ModelConfig, channels: int, num_labels: int) -> Head:
        """The head for a ``channels``-channel feature map and ``num_labels`` labels; a head with
        settings of its own reads them from ``cfg`` (the model section)."""
        return cls(channels, num_labels)


@dataclass(frozen=True)
class HeadSpec:
    """A registered head.

    Attributes:
        name: registry name: ``model.head`` and the suffix of a strategy name (``prs+ssca``).
        build: the :class:`Head` subclass (its docstring says what it is);
            ``build.from_config(cfg, channels, num_labels)`` makes one.
    """

    name: str
    build: type[Head]

    def __post_init__(self) -> None:
        if not (isinstance(self.build, type) and issubclass(self.build, Head)):
            raise TypeError(f"@register_head('{self.name}') decorates {self.build!r}: expected a subclass of "
                            f"cml_bench.models.Head (its from_config builds the head from the model config).")


register_head = decorator(HEADS, HeadSpec)
"""``@register_head("name")`` on a :class:`Head` subclass."""


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


@register_head("pooled")
class PooledHead(Head):
    """Global average pooling and a linear classifier: the baseline every paper compares with."""

    def __init__(self, channels: int, num_labels: int):
        super().__init__()
        self.classifier = nn.Linear(channels, num_labels)

    def label_features(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared pooled feature ``[N, C]`` and the classifier weights ``[M, C]``."""
        return fmap.mean((2, 3)), self.classifier.weight

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.classifier(fmap.mean((2, 3))).unsqueeze(0)


@register_head("cos")
class CosineHead(Head):
    """Global average pooling and a normalised classifier with scale gamma (the ``+cos`` control).

    It has SSCA's classifier without its attention, so comparing the two separates what the
    spatial attention contributes from what the normalised classifier contributes.
    """

    def __init__(self, channels: int, num_labels: int, gamma: float = 30.0):
        super().__init__()
        self.classifier = NormalizedClassifier(channels, num_labels, gamma)

    @classmethod
    def from_config(cls, cfg: ModelConfig, channels: int, num_labels: int) -> CosineHead:
        return cls(channels, num_labels, cfg.gamma)

    def label_features(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fmap.mean((2, 3)), self.classifier.weight

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.classifier(fmap.mean((2, 3))).unsqueeze(0)
