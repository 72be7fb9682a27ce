"""Parameters and FLOPs of a model config at an input size, per component (``python -m cml_bench profile``).

The model is built on PyTorch's ``meta`` device (shapes only: no memory, no initialisation, no
weights, so ``pretrained`` is ignored) and one image ``[1, 3, H, W]`` goes through it under
``torch.utils.flop_counter.FlopCounterMode``. That counter counts the matrix products and
convolutions (``mm``, ``bmm``, ``addmm``, ``conv``, attention, ...) at 2 FLOPs per multiply-add;
normalisation, activation, softmax and pooling are not counted. MACs = FLOPs / 2 is the unit most
papers (DLFL Tables 4-5 included) call "FLOPs".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from cml_bench.config import ModelConfig
from cml_bench.models import build_model, count_parameters


@dataclass(frozen=True)
class Cost:
    """One component's parameters and FLOPs for one image."""

    component: str
    params: int
    flops: int

    @property
    def macs(self) -> int:
        return self.flops // 2


def profile_model(cfg: ModelConfig, image_size: tuple[int, int], num_labels: int) -> list[Cost]:
    """Costs of the backbone, the head and the whole model for one ``image_size`` image."""
    cfg = dataclasses.replace(cfg, pretrained=False, image_size=list(image_size))
    with torch.device("meta"):
        model = build_model(cfg, num_labels)
    x = torch.empty(1, 3, *image_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        fmap = model.backbone(x)
    backbone = Cost("backbone", count_parameters(model.backbone), counter.get_total_flops())
    with FlopCounterMode(display=False) as counter:
        model.head(fmap)
    head = Cost("head", count_parameters(model.head), counter.get_total_flops())
    return [backbone, head, Cost("total", backbone.params + head.params, backbone.flops + head.flops)]


def describe(cfg: ModelConfig, image_size: tuple[int, int], num_labels: int) -> str:
    head = f"ssca head (S = {cfg.ssca_modules})" if cfg.head == "ssca" else f"{cfg.head} head"
    return f"{cfg.backbone} + {head}, {num_labels} labels, {image_size[0]}x{image_size[1]} input, one image"


def format_table(costs: list[Cost]) -> str:
    """A Markdown table: params (M), GFLOPs and GMACs (= GFLOPs / 2) per component."""
    lines = ["| component | params (M) | GFLOPs | GMACs (= GFLOPs / 2) |", "|---|---:|---:|---:|"]
    for c in costs:
        lines.append(f"| {c.component} | {c.params / 1e6:.2f} | {c.flops / 1e9:.2f} | {c.macs / 1e9:.2f} |")
    return "\n".join(lines)
