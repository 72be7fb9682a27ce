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
    the shared embedding of the P positions, then per module theta (M queries), phi (P positions),
    the out-projection (M label features), and the two attention products (M x P x C each)."""
    p, c, m = positions, channels, labels
    return p * c * c + modules * (m * c * c + p * c * c + m * c * c + 2 * m * p * c)


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
    # the backbone's convolutions, by hand from the real model's layers at this input
    macs = []
    hooks = [m.register_forward_hook(lambda mod, _, out: macs.append(
        out.shape[1:].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]))
        for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.backbone(torch.zeros(1, 3, 64, 48))
    for hook in hooks:
        hook.remove()
    assert backbone.macs == sum(macs)


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
        cells = [c.strip() for c in lines[cost.component].split("|")[2:5]]
        assert cells == [f"{cost.params / 1e6:.2f}", f"{cost.flops / 1e9:.2f}", f"{cost.macs / 1e9:.2f}"]
    assert "GMACs (= GFLOPs / 2)" in out and "FlopCounterMode" in out


def test_profile_needs_a_size(capsys):
    assert main(["profile", "--set", "model.backbone=resnet10t"]) == 2
    assert "pass --image-size" in capsys.readouterr().err


@pytest.mark.parametrize("modules, paper_params, paper_gmacs", [(0, 42.7, 31.4), (1, 59.6, 33.2), (3, 85.1, 36.2)])
def test_resnet101_at_448_against_table5(modules, paper_params, paper_gmacs):
    """Parameters match Table 5 to 0.1M; the backbone's multiply-adds are within 1% of the paper's S = 0
    model and the head's are our formula (the README explains the head's gap to the paper)."""
    cfg = ModelConfig(backbone="resnet101", head="ssca" if modules else "pooled", ssca_modules=max(modules, 1))
    backbone, head, total = profile_model(cfg, (448, 448), num_labels=80)
    assert round(total.params / 1e6, 1) == paper_params
    assert backbone.macs / 1e9 == pytest.approx(31.20, abs=0.01)
    if modules:
        assert head.macs == ssca_head_macs(14 * 14, 2048, 80, modules)
    else:
        assert total.macs / 1e9 == pytest.approx(paper_gmacs, rel=0.01)
