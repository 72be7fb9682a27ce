"""``python -m cml_bench profile``: parameters and FLOPs per component, checked against hand counts."""
from __future__ import annotations

import pytest
import torch

from cml_bench.cli import main
from cml_bench.config import ModelConfig
from cml_bench.models import build_model, count_parameters
from cml_bench.profile import profile_model

SMALL = dict(backbone="resnet10t", feature_level=3, stem_pool=False)


def ssca_head_macs(positions: int, channels: int, labels: int, modules: int) -> int:
    """Multiply-adds of the SSCA head's matrix products for one image (see cml_bench/models/ssca.py):
    the shared embedding of the M queries, then per module theta (M queries), phi (P positions),
    the out-projection (M label features), and the two attention products (M x P x C each)."""
    p, c, m = positions, channels, labels
    return m * c * c + modules * (m * c * c + p * c * c + m * c * c + 2 * m * p * c)


def ssca_head_module_macs(positions: int, channels: int, labels: int, modules: int) -> int:
    """What a module-hook counter sees of the SSCA head: its ``nn.Linear`` layers (the same as above
    without the attention products) and 1 per element of each ``LayerNorm`` (M or P rows of C)."""
    p, c, m = positions, channels, labels
    return m * c * c + m * c + modules * (2 * m * c * c + p * c * c + 2 * m * c + p * c)


@pytest.mark.parametrize("head, modules", [("pooled", 1), ("cos", 1), ("ssca", 1), ("ssca", 3)])
def test_profile_of_a_small_model_matches_hand_counts(head, modules):
    cfg = ModelConfig(**SMALL, head=head, ssca_modules=modules)
    backbone, head_cost, total = profile_model(cfg, (64, 48), num_labels=7)
    torch.manual_seed(0)
    model = build_model(cfg, 7)
    assert backbone.params == count_parameters(model.backbone)
    assert head_cost.params == count_parameters(model.head)
    assert total.params == count_parameters(model)
    assert total.flops == backbone.flops + head_cost.flops and total.macs == total.flops // 2
    positions = (64 // 8) * (48 // 8)  # stride 8 at level 3 without the stem pool
    # pooled / cos: one [C] x [C, M] product; SSCA's per-label cosines are elementwise (not counted)
    expected = {"pooled": 256 * 7, "cos": 256 * 7, "ssca": ssca_head_macs(positions, 256, 7, modules)}[head]
    assert head_cost.macs == expected
    # module count: the pooled head's nn.Linear (+ bias); the cosine classifier is functional, invisible
    expected = {"pooled": 256 * 7 + 7, "cos": 0, "ssca": ssca_head_module_macs(positions, 256, 7, modules)}[head]
    assert head_cost.module_macs == expected
    assert total.module_macs == backbone.module_macs + head_cost.module_macs
    # the backbone's convolutions, by hand from the real model's layers at this input; the module count
    # adds 2 per batch-norm element (normalise, affine), 1 per ReLU output and per pooling input element
    # (resnet10t's downsampling paths average-pool)
    macs, elements = [], {torch.nn.BatchNorm2d: [], torch.nn.ReLU: [], torch.nn.AvgPool2d: []}
    hooks = [m.register_forward_hook(lambda mod, _, out: macs.append(
        out.shape[1:].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]))
        for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(lambda mod, inp, _: elements[type(mod)].append(inp[0].numel()))
              for m in model.backbone.modules() if type(m) in elements]
    with torch.no_grad():
        model.backbone(torch.zeros(1, 3, 64, 48))
    for hook in hooks:
        hook.remove()
    assert backbone.macs == sum(macs)
    assert all(elements.values())  # (no max-pool: stem_pool=False)
    assert backbone.module_macs == sum(macs) + 2 * sum(elements[torch.nn.BatchNorm2d]) + sum(
        elements[torch.nn.ReLU]) + sum(elements[torch.nn.AvgPool2d])


def test_profile_command_prints_the_table(capsys):
    code = main(["profile", "--set", "model.backbone=resnet10t", "--set", "model.feature_level=3",
                 "--set", "model.stem_pool=false", "--strategy", "prs+ssca", "--image-size", "64x48",
                 "--num-labels", "7"])
    out = capsys.readouterr().out
    assert code == 0
    assert "resnet10t + ssca head (S = 1), 7 labels, 64x48 input, one image" in out
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(lines) >= {"component", "backbone", "head", "total"}
    costs = profile_model(ModelConfig(**SMALL, head="ssca"), (64, 48), 7)
    for cost in costs:
        cells = [c.strip() for c in lines[cost.component].split("|")[2:6]]
        assert cells == [f"{cost.params / 1e6:.2f}", f"{cost.flops / 1e9:.2f}", f"{cost.macs / 1e9:.2f}",
                         f"{cost.module_macs / 1e9:.2f}"]
    assert "GMACs (= GFLOPs / 2)" in out and "module count" in out and "FlopCounterMode" in out


def test_profile_needs_a_size(capsys):
    assert main(["profile", "--set", "model.backbone=resnet10t"]) == 2
    assert "pass --image-size" in capsys.readouterr().err


# DLFL Table 5 (ResNet-101, M = 80, 448 px, S = 0..5) and Table 4 (S = 1 at 576 px): params (M), "FLOPs" (G)
PAPER_COMPLEXITY = [(0, 448, 42.7, 31.4), (1, 448, 59.6, 33.2), (2, 448, 72.4, 34.7), (3, 448, 85.1, 36.2),
                    (4, 448, 97.9, 37.7), (5, 448, 110.7, 39.2), (1, 576, 59.6, 54.3)]


@pytest.mark.parametrize("modules, size, paper_params, paper_gmacs", PAPER_COMPLEXITY)
def test_resnet101_against_tables_4_and_5(modules, size, paper_params, paper_gmacs):
    """Parameters match the paper to 0.1M and the module count reproduces its "FLOPs" to 0.1G (all
    seven figures); our own count is the conv-only backbone plus the head's products by formula."""
    cfg = ModelConfig(backbone="resnet101", head="ssca" if modules else "pooled", ssca_modules=max(modules, 1))
    backbone, head, total = profile_model(cfg, (size, size), num_labels=80)
    assert round(total.params / 1e6, 1) == paper_params
    assert total.module_macs / 1e9 == pytest.approx(paper_gmacs, abs=0.1)
    if size == 448:
        assert backbone.macs / 1e9 == pytest.approx(31.20, abs=0.01)
    positions = (size // 32) ** 2
    if modules:
        assert head.macs == ssca_head_macs(positions, 2048, 80, modules)
        assert head.module_macs == ssca_head_module_macs(positions, 2048, 80, modules)


def test_ssca_head_at_448_costs_1_9_gmacs():
    """The shared projection embeds the M = 80 queries, not the P = 196 positions: the head's own count
    at S = 1 is 1.89G (it was 2.38G with the feature map embedded), the paper's 1.8G plus the products."""
    _, head, _ = profile_model(ModelConfig(backbone="resnet101", head="ssca"), (448, 448), num_labels=80)
    assert head.macs / 1e9 == pytest.approx(1.89, abs=0.01)
