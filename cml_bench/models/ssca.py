"""The Semantic Spatial Cross-Attention (SSCA) head of DLFL (paper section 3.3, PROTOCOL.md).

For a backbone feature map F (C x H x W) and M labels:

    A   = softmax_over_HW( theta(Q)^T phi(F) / sqrt(C) )      (eq. 13)
    F^s = A phi(F)^T                                          (eq. 14)
    Q^s := F^{s-1},  s = 1..S,  Q^0 learnable (Kaiming init)  (eq. 15)

Each module scores label j from its own label feature with a normalised classifier,
``gamma * cos(F^s_j, w^s_j)``; the prediction is the mean of the modules' logits and the loss is the
sum of the modules' BCE losses (eq. 16).

Layer structure (the paper names theta and phi but not every layer). The choice below is the one
we found that reproduces all of Table 5's parameter counts (ResNet-101, C = 2048, M = 80: baseline
42.7M; S = 1..5: 59.6M / 72.4M / 85.1M / 97.9M / 110.7M) to 0.1M:

* every projection is ``Linear(no bias)`` followed by ``LayerNorm`` (C^2 + 2C parameters when
  dim = C). LayerNorm rather than BatchNorm (same count) because the online protocol trains on
  batches of 10-20 images, where batch statistics are noisy and shift between tasks;
* shared by all modules: the queries Q^0 (M x C) and one input embedding of those queries,
  computed once per forward pass (it does not depend on the image);
* per module: theta (queries), phi (feature map: keys and values), an output projection of the
  label features (a cross-attention layer's out-projection), and the M x C normalised classifier.

This gives 42.50M (backbone) + (MC + P) + S (3P + MC) with P = C^2 + 2C: 59.62M, 72.38M, 85.14M,
97.90M, 110.66M. The obvious alternative, biased linears without norms, gives 110.6M for S = 5.

Why the shared embedding acts on the M label queries and not on the P feature-map positions: both
have the same parameter count, so Table 5's parameters cannot tell them apart, but the FLOPs can.
The paper's seven FLOPs figures (Table 5, S = 0..5 at 448 px; Table 4 at 576 px) are all
reproduced by ``backbone + M C^2 + S (2 M C^2 + P C^2)`` multiply-adds (P = 196 or 324 positions),
i.e. a one-off projection of the M = 80 queries; projecting the P positions would add
``(P - M) C^2`` (0.5G at 448 px) that the paper does not have. ``python -m cml_bench profile``
prints that count in its "module count" column (cml_bench/profile.py).

``dim`` (``model.ssca_dim``, default C): the queries live in C, like the feature map; the shared
embedding and phi map C to ``dim``, theta and the out-projection act in ``dim``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from cml_bench.models.heads import Head, NormalizedClassifier, register_head

if TYPE_CHECKING:
    from cml_bench.config import ModelConfig


def projection(dim_in: int, dim_out: int) -> nn.Sequential:
    """``Linear(no bias) + LayerNorm``: the projection used throughout the SSCA head."""
    return nn.Sequential(nn.Linear(dim_in, dim_out, bias=False), nn.LayerNorm(dim_out))


class SSCAModule(nn.Module):
    """One cross-attention step from label queries to spatial positions, plus its classifier."""

    def __init__(self, dim: int, num_labels: int, gamma: float, channels: int | None = None):
        super().__init__()
        self.theta = projection(dim, dim)
        self.phi = projection(channels or dim, dim)  # the feature map's C channels to the head's dim
        self.out = projection(dim, dim)
        self.classifier = NormalizedClassifier(dim, num_labels, gamma)
        self.scale = 1.0 / math.sqrt(dim)

    def attention(self, queries: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention maps ``[N, M, HW]`` (softmax over positions) and ``phi(F)`` ``[N, HW, dim]``."""
        keys = self.phi(tokens)
        logits = torch.einsum("nmc,npc->nmp", self.theta(queries), keys) * self.scale
        return logits.softmax(dim=-1), keys

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label features ``[N, M, C]`` and logits ``[N, M]`` from queries ``[N, M, C]``, tokens ``[N, HW, C]``."""
        attn, values = self.attention(queries, tokens)
        features = self.out(torch.bmm(attn, values))
        return features, self.classifier(features)


@register_head("ssca")
class SSCAHead(Head):
    """S cascaded SSCA modules; ``forward`` returns per-module logits ``[S, N, M]``."""

    def __init__(self, channels: int, num_labels: int, num_modules: int = 1, gamma: float = 30.0,
                 dim: int | None = None):
        super().__init__()
        if num_modules < 1:
            raise ValueError(f"Expected model.ssca_modules >= 1, got {num_modules}.")
        dim = channels if dim is None else dim
        self.queries = nn.Parameter(torch.empty(num_labels, channels))
        nn.init.kaiming_normal_(self.queries)
        self.query_embed = projection(channels, dim)  # shared by the modules; see the module docstring
        self.blocks = nn.ModuleList(SSCAModule(dim, num_labels, gamma, channels) for _ in range(num_modules))

    @classmethod
    def from_config(cls, cfg: ModelConfig, channels: int, num_labels: int) -> SSCAHead:
        return cls(channels, num_labels, cfg.ssca_modules, cfg.gamma, cfg.ssca_dim)

    def _run(self, fmap: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        tokens = fmap.flatten(2).transpose(1, 2)  # [N, P, C]; each module's phi projects them
        # once per pass, not per image: the embedded queries are the same for every image
        queries = self.query_embed(self.queries).unsqueeze(0).expand(fmap.shape[0], -1, -1)
        features, logits = [], []
        for block in self.blocks:
            queries, block_logits = block(queries, tokens)
            features.append(queries)
            logits.append(block_logits)
        return features, logits

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return torch.stack(self._run(fmap)[1])

    def label_features(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last module's label features ``[N, M, C]`` and its classifier weights ``[M, C]``."""
        features, _ = self._run(fmap)
        return features[-1], self.blocks[-1].classifier.weight
