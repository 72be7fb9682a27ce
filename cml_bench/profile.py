"""Parameters and FLOPs of a model config at an input size, per component (``python -m cml_bench profile``).

The model is built on PyTorch's ``meta`` device (shapes only: no memory, no initialisation, no
weights, so ``pretrained`` is ignored) and one image ``[1, 3, H, W]`` goes through it, counted two ways:

* **FLOPs / MACs** (our count): ``torch.utils.flop_counter.FlopCounterMode`` counts every matrix
  product and convolution the forward pass runs (``mm``, ``bmm``, ``addmm``, ``conv``, attention
  products, ...) at 2 FLOPs per multiply-add; normalisation, activation, softmax and pooling are not
  counted. MACs = FLOPs / 2.
* **Module count** (the papers' counters): forward hooks on the leaf ``nn.Module`` s, with the rules
  of the module-hook counters papers use (ptflops' module table; thop's differs only in small
  per-element terms): convolution and ``nn.Linear`` multiply-adds (a bias adds one per output
  element of a convolution, ``out_features`` once for a linear layer, as ptflops books it); 1 per
  element for a norm layer (2 for ``BatchNorm`` / ``GroupNorm`` / ``InstanceNorm`` with ``affine``;
  ``LayerNorm`` has no ``affine`` attribute, so 1), an activation module or a pooling module's
  input. Whatever runs as a function rather than a module is invisible to such a counter:
  attention products (``einsum`` / ``bmm``), softmax, residual additions, normalised classifiers.

Why both: DLFL's Tables 4 and 5 are a module count. ResNet-101 at 448 px (our conv-only 31.20G)
reaches the paper's S = 0 figure, 31.4G, with batch norm (2 per element: +0.13G) and ReLU (+0.06G)
counted (31.39G), and the paper's SSCA figures are ``31.4 + M C^2 + S (2 M C^2 + P C^2)``: linear
layers only (C = 2048, M = 80, P = 196 positions; 576 px: P = 324), without the ``2 M P C`` of the
two attention products per module. The module count reproduces all seven figures to 0.05G
(tests/test_profile.py); our own count is the compute actually done.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cml_bench.config import ModelConfig
from cml_bench.models import build_model, count_parameters

COUNTING_NOTE = (
    "GFLOPs / GMACs: torch.utils.flop_counter.FlopCounterMode on the meta device (every matrix product and\n"
    "convolution, attention products included; 2 FLOPs per multiply-add; norms, activations, softmax and\n"
    "pooling not counted). Module count: multiply-adds as module-hook counters (ptflops, thop) give them:\n"
    "conv / linear layers, norm, activation and pooling modules, nothing done functionally (attention\n"
    "products, softmax, residual additions). Papers' \"FLOPs\" (DLFL Tables 4-5) are such module counts."
)

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU)
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
          nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def module_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """Multiply-adds a module-hook counter books for one call of a leaf ``module`` (0 if it knows none)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output.numel() * (per_output + (module.bias is not None))
    if isinstance(module, nn.Linear):
        return inputs[0].numel() * module.out_features + (module.out_features if module.bias is not None else 0)
    if isinstance(module, _NORMS):
        return inputs[0].numel() * (2 if getattr(module, "affine", False) else 1)
    if isinstance(module, _ACTIVATIONS):
        return output.numel()
    if isinstance(module, _POOLS):
        return inputs[0].numel()
    return 0


@dataclass(frozen=True)
class Cost:
    """One component's parameters, FLOPs (our count) and module-count multiply-adds for one image."""

    component: str
    params: int
    flops: int
    module_macs: int = 0

    @property
    def macs(self) -> int:
        return self.flops // 2


def _count(module: nn.Module, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int, int]:
    """Output of ``run()`` with its FlopCounterMode FLOPs and the module count of ``module``'s leaves."""
    booked = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: booked.append(module_macs(mod, inp, out)))
             for m in module.modules() if next(m.children(), None) is None]
    try:
        with FlopCounterMode(display=False) as counter:
            out = run()
    finally:
        for hook in hooks:
            hook.remove()
    return out, counter.get_total_flops(), sum(booked)


def profile_model(cfg: ModelConfig, image_size: tuple[int, int], num_labels: int) -> list[Cost]:
    """Costs of the backbone, the head and the whole model for one ``image_size`` image."""
    cfg = dataclasses.replace(cfg, pretrained=False, image_size=list(image_size))
    with torch.device("meta"):
        model = build_model(cfg, num_labels)
    x = torch.empty(1, 3, *image_size, device="meta")
    fmap, flops, booked = _count(model.backbone, lambda: model.backbone(x))
    backbone = Cost("backbone", count_parameters(model.backbone), flops, booked)
    _, flops, booked = _count(model.head, lambda: model.head(fmap))
    head = Cost("head", count_parameters(model.head), flops, booked)
    return [backbone, head, Cost("total", backbone.params + head.params, backbone.flops + head.flops,
                                 backbone.module_macs + head.module_macs)]


def describe(cfg: ModelConfig, image_size: tuple[int, int], num_labels: int) -> str:
    head = f"ssca head (S = {cfg.ssca_modules})" if cfg.head == "ssca" else f"{cfg.head} head"
    return f"{cfg.backbone} + {head}, {num_labels} labels, {image_size[0]}x{image_size[1]} input, one image"


def format_table(costs: list[Cost]) -> str:
    """A Markdown table: params (M), GFLOPs, GMACs (= GFLOPs / 2) and module-count GMACs per component."""
    lines = ["| component | params (M) | GFLOPs | GMACs (= GFLOPs / 2) | GMACs, module count (papers) |",
             "|---|---:|---:|---:|---:|"]
    for c in costs:
        lines.append(f"| {c.component} | {c.params / 1e6:.2f} | {c.flops / 1e9:.2f} | {c.macs / 1e9:.2f} "
                     f"| {c.module_macs / 1e9:.2f} |")
    return "\n".join(lines)
