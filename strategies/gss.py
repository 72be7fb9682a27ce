"""``gss``: online replay with Gradient-based Sample Selection, greedy variant (Aljundi, Lin,
Goujaud, Bengio, NeurIPS 2019).

The buffer (``cml_bench/buffers/gss.py``) keeps samples whose loss gradients are least similar to
those of the samples already kept. The gradient of a sample here is that of its multi-label loss
with respect to the head's parameters, the backbone's feature map held fixed (computed per sample
with ``torch.func``, the model in eval mode, after the optimiser step). The paper takes gradients
with respect to all parameters; head-only gradients (the classifier's, and SSCA's attention for
``+ssca``) keep the cost at one extra backbone pass over the incoming batch and the n compared
stored samples per step, instead of 2 x 10 single-sample backward passes through the backbone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call, grad, vmap

from cml_bench.buffers import GSSBuffer
from cml_bench.replay import ReplayOptions, replay_plugin
from cml_bench.strategy import StrategyContext, register_strategy
from cml_bench.training import multilabel_loss


def head_gradients(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float [N, P]: per-sample gradients of the multi-label loss w.r.t. the head's P parameters."""
    with torch.no_grad():
        fmap = model.backbone(images)
    head = model.head
    params = {name: p.detach() for name, p in head.named_parameters()}
    buffers = dict(head.named_buffers())

    def loss(p, f, t):
        return multilabel_loss(functional_call(head, (p, buffers), (f.unsqueeze(0),)), t.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, fmap, targets.float())
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


@dataclass(frozen=True)
class GSSOptions(ReplayOptions):
    """``n_compare``: stored samples each incoming batch is compared with (the paper's n); with
    ``buffer_size`` (None: the benchmark's) and ``replay_batch_size`` from ``ReplayOptions``."""

    n_compare: int = 10


@register_strategy("gss", options=GSSOptions, reference="Aljundi et al., NeurIPS 2019 (GSS-Greedy)",
                   description="online replay; memory keeps samples with diverse loss gradients (GSS-Greedy)")
def build(options: GSSOptions, ctx: StrategyContext) -> list:
    return [replay_plugin(GSSBuffer, options, ctx, keys=head_gradients, n_compare=options.n_compare)]
