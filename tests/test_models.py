"""Models: SSCA shapes, the paper's Table 5 parameter counts, normalised logits, gradients, the pooled
baseline by hand, and the backbone's input handling and errors."""
from __future__ import annotations

import pytest
import torch

from cml_bench.config import ModelConfig
from cml_bench.models import (
    FeatureBackbone,
    MultiLabelNet,
    PretrainedWeightsError,
    SSCAHead,
    build_head,
    build_model,
    count_parameters,
)
from cml_bench.training import multilabel_loss

# resnet10t, level 3 (C = 256) without the stem max-pool: stride 8, so 64 px gives an 8x8 map.
SMALL = dict(backbone="resnet10t", feature_level=3, stem_pool=False)
CHANNELS = 256




def small_model(head: str = "ssca", num_labels: int = 5, seed: int = 0, **kw) -> MultiLabelNet:
    torch.manual_seed(seed)
    return build_model(ModelConfig(**SMALL, head=head, **kw), num_labels)


def images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("num_modules", [1, 2, 3])
@pytest.mark.parametrize("num_labels", [3, 17])
def test_ssca_shapes(num_modules, num_labels):
    model = small_model("ssca", num_labels, ssca_modules=num_modules)
    x = images(2)
    assert model.backbone(x).shape == (2, CHANNELS, 8, 8)
    per_module = model.forward_modules(x)
    assert per_module.shape == (num_modules, 2, num_labels)
    logits = model(x)
    assert logits.shape == (2, num_labels)
    torch.testing.assert_close(logits, per_module.mean(0))
    features, weights = model.label_features(x)
    assert features.shape == (2, num_labels, CHANNELS)
    assert weights.shape == (num_labels, CHANNELS)
    assert len(model.head.blocks) == num_modules


@pytest.mark.parametrize("head", ["pooled", "cos"])
def test_pooled_heads_shapes(head):
    model = small_model(head, 7)
    x = images(3)
    assert model.forward_modules(x).shape == (1, 3, 7)
    assert model(x).shape == (3, 7)
    features, weights = model.label_features(x)
    assert features.shape == (3, CHANNELS) and weights.shape == (7, CHANNELS)


def test_head_errors():
    with pytest.raises(ValueError, match="Unknown model.head 'sca'"):
        build_head(ModelConfig(head="sca"), 8, 3)
    with pytest.raises(ValueError, match="model.ssca_modules: expected an integer >= 1"):
        ModelConfig(head="ssca", ssca_modules=0)  # refused when the config is resolved
    with pytest.raises(ValueError, match="ssca_modules >= 1"):
        SSCAHead(8, 3, num_modules=0)


# ---------------------------------------------------------------------------- paper Table 5

@pytest.fixture(scope="module")
def resnet101_baseline() -> MultiLabelNet:
    # Parameter counts depend only on shapes; on the meta device no memory is allocated or
    # initialised, which makes a ResNet-101 with five SSCA heads take ~2 s instead of ~8 s.
    with torch.device("meta"):
        return build_model(ModelConfig(backbone="resnet101", head="pooled"), 80)


@pytest.mark.parametrize("head, modules, paper_millions", [
    ("pooled", 1, 42.7), ("ssca", 1, 59.6), ("ssca", 2, 72.4), ("ssca", 3, 85.1), ("ssca", 4, 97.9),
    ("ssca", 5, 110.7),
])
def test_table5_parameter_counts(resnet101_baseline, head, modules, paper_millions):
    backbone = resnet101_baseline.backbone
    assert backbone.channels == 2048
    if head == "pooled":
        total = count_parameters(resnet101_baseline)
    else:
        with torch.device("meta"):
            ssca = build_head(ModelConfig(backbone="resnet101", head=head, ssca_modules=modules), 2048, 80)
        total = count_parameters(backbone) + count_parameters(ssca)
    assert round(total / 1e6, 1) == paper_millions


@pytest.mark.parametrize("head, modules", [("pooled", 1), ("cos", 1), ("ssca", 1), ("ssca", 3)])
def test_model_count_is_backbone_plus_head(head, modules):
    # Justifies counting the ResNet-101 backbone once and its heads separately above.
    model = small_model(head, 11, ssca_modules=modules)
    head_alone = build_head(ModelConfig(**SMALL, head=head, ssca_modules=modules), CHANNELS, 11)
    assert count_parameters(model) == count_parameters(model.backbone) + count_parameters(head_alone)


# ---------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize("gamma", [30.0, 2.5])
@pytest.mark.parametrize("head", ["cos", "ssca"])
def test_normalised_logits_within_gamma(head, gamma):
    model = small_model(head, 9, gamma=gamma, ssca_modules=2)
    fmap = torch.randn(4, CHANNELS, 8, 8, generator=torch.Generator().manual_seed(1)) * 1e4
    fmap[0] *= 1e-4  # and a small-magnitude one
    per_module = model.head(fmap)
    full = model(torch.rand(3, 3, 64, 64) * 1e3 - 500)  # far outside the [0, 1] images expect
    for logits in (per_module, full):
        assert torch.isfinite(logits).all()
        assert logits.abs().max() <= gamma * (1 + 1e-5)
        assert logits.abs().max() > 0.01 * gamma  # not trivially zero


def test_cos_logit_reaches_gamma_when_feature_is_the_weight():
    model = small_model("cos", 4, gamma=7.0)
    w = model.head.classifier.weight.detach()
    fmap = (3.0 * w[2]).view(1, CHANNELS, 1, 1).expand(1, CHANNELS, 5, 5)
    torch.testing.assert_close(model.head(fmap)[0, 0, 2], torch.tensor(7.0))


# ---------------------------------------------------------------------------- SSCA internals

def test_gradients_reach_every_ssca_parameter():
    model = small_model("ssca", 6, ssca_modules=2)
    targets = (torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    loss = multilabel_loss(model.forward_modules(images(3)), targets)
    loss.backward()
    assert model.head.queries.grad is not None and model.head.queries.grad.abs().sum() > 0
    for name, param in model.head.named_parameters():
        assert param.grad is not None, f"no gradient reaches head.{name}"
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, f"zero gradient: head.{name}"


def test_ssca_attention_rows_sum_to_one():
    model = small_model("ssca", 5, ssca_modules=2)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 64, CHANNELS, generator=gen) * 50
    queries = torch.randn(2, 5, CHANNELS, generator=gen) * 50
    for block in model.head.blocks:
        attn, values = block.attention(queries, tokens)
        assert attn.shape == (2, 5, 64) and values.shape == (2, 64, CHANNELS)
        assert (attn >= 0).all()
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 5))
        queries, _ = block(queries, tokens)  # the next module's queries are this one's label features


# ---------------------------------------------------------------------------- pooled baseline

def test_pooled_head_is_gap_plus_linear():
    model = small_model("pooled", 6)
    fmap = torch.randn(3, CHANNELS, 5, 7)
    linear = model.head.classifier
    gap = fmap.sum((2, 3)) / (5 * 7)
    expected = torch.einsum("nc,mc->nm", gap, linear.weight) + linear.bias
    torch.testing.assert_close(model.head(fmap), expected.unsqueeze(0))
    features, weights = model.head.label_features(fmap)
    torch.testing.assert_close(features, gap)
    assert weights is linear.weight
    model.eval()
    x = images(2)
    with torch.no_grad():
        by_hand = model.backbone(x).mean((2, 3)) @ linear.weight.T + linear.bias
        torch.testing.assert_close(model(x), by_hand)


# ---------------------------------------------------------------------------- backbone

def test_backbone_uint8_equals_float_in_unit_range():
    backbone = FeatureBackbone("resnet10t", feature_level=3, stem_pool=False).eval()
    x = images(2, 48)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone(x.float() / 255.0))
    assert x.dtype == torch.uint8  # the caller's batch is left as it was


TINY_SWIN_SHAPE = {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 2}


@pytest.mark.parametrize("name, level, size, options", [
    ("resnet10t", 3, None, {}), ("resnet10t", -1, None, {}),
    ("swin_tiny_patch4_window7_224", -1, (64, 64), TINY_SWIN_SHAPE)])
def test_backbone_weights_are_those_of_a_probe_then_a_body_built_for_real(name, level, size, options):
    """The backbone's seeded initial weights, and the generator after it, are those of building the
    full model, then the body (what every seeded run started from)."""
    import timm

    torch.manual_seed(0)
    levels = len(timm.create_model(name, features_only=True, **options).feature_info)
    extra = {"img_size": size} if size else {}
    body = timm.create_model(name, features_only=True, out_indices=(level % levels,), **options, **extra)
    after = torch.get_rng_state()
    torch.manual_seed(0)
    backbone = FeatureBackbone(name, feature_level=level, image_size=size, options=options)
    assert torch.equal(torch.get_rng_state(), after)
    want, got = body.state_dict(), backbone.body.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("level", [5, -6, 99])
def test_backbone_feature_level_out_of_range(level):
    with pytest.raises(ValueError, match=rf"feature_level {level} is out of range .*resnet10t.* 5 levels"):
        FeatureBackbone("resnet10t", feature_level=level)


@pytest.mark.parametrize("level, channels", [(-1, 512), (0, 64), (4, 512)])
def test_backbone_feature_level_in_range(level, channels):
    assert FeatureBackbone("resnet10t", feature_level=level).channels == channels


def test_pretrained_with_missing_weights_file(tmp_path):
    missing = tmp_path / "nowhere" / "resnet10t.safetensors"
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        FeatureBackbone("resnet10t", pretrained=True, weights_path=str(missing))
    with pytest.raises(PretrainedWeightsError):
        build_model(ModelConfig(**SMALL, pretrained=True, weights_path=str(missing)), 3)


def test_pretrained_weights_from_a_local_file(tmp_path):
    """``pretrained: true`` + ``weights_path``: how a machine without network loads ImageNet weights."""
    import timm

    from cml_bench.models import FeatureBackbone

    source = timm.create_model("resnet10t", pretrained=False)
    torch.nn.init.constant_(source.conv1[0].weight, 0.5)
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    backbone = FeatureBackbone("resnet10t", pretrained=True, feature_level=3, stem_pool=False,
                               weights_path=str(path))
    assert torch.all(backbone.body.conv1[0].weight == 0.5)


# ---------------------------------------------------------------------------- paper-scale backbones

# Shapes only: on the meta device a Swin-B or ResNet-101 is built and run in about a second.
PAPER_BACKBONES = [
    # backbone, input, timm options, (C, H', W') of the last level
    ("resnet101", 448, {}, (2048, 14, 14)),
    ("resnet101", 576, {}, (2048, 18, 18)),
    ("swin_base_patch4_window7_224", 448, {"window_size": 7}, (1024, 14, 14)),
    ("swin_base_patch4_window7_224", 576, {"window_size": 9}, (1024, 18, 18)),
    ("swin_base_patch4_window7_224", 576, {"window_size": 12}, (1024, 18, 18)),  # 12 pads 36 and 18
]


@pytest.mark.parametrize("name, size, options, shape", PAPER_BACKBONES,
                         ids=[f"{b}-{s}-{o}" for b, s, o, _ in PAPER_BACKBONES])
def test_paper_backbones_feature_maps(name, size, options, shape):
    cfg = ModelConfig(backbone=name, image_size=size, backbone_options=options, head="ssca")
    with torch.device("meta"):
        model = build_model(cfg, 80)
        fmap = model.backbone(torch.empty(2, 3, size, size))
        logits = model(torch.empty(2, 3, size, size))
    assert tuple(fmap.shape) == (2, *shape)  # Swin's channels-last tokens come out as N x C x H x W
    assert logits.shape == (2, 80)
    assert model.backbone.channels == shape[0]
    assert model.head.query_embed[0].in_features == shape[0] == model.head.queries.shape[1]  # SSCA sized from C
    if name.startswith("swin"):
        assert model.backbone.fixed_input_size == (size, size)
        blocks = [m for m in model.backbone.body.modules() if type(m).__name__ == "SwinTransformerBlock"]
        assert {tuple(b.window_size) for b in blocks[:2]} == {(options["window_size"],) * 2}


def test_swin_b_parameters_do_not_depend_on_image_size():
    # Relative position tables depend on the window, not the image: Swin-B (87M with its classifier)
    counts = {}
    for size in (224, 448):
        with torch.device("meta"):
            counts[size] = count_parameters(FeatureBackbone("swin_base_patch4_window7_224", image_size=(size, size)))
    assert counts[224] == counts[448] and round(counts[448] / 1e6, 1) == 86.7


# A Swin small enough to run for real on a CPU in milliseconds: 4 stages of one block, C = 24..192.
TINY_SWIN_OPTIONS = {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 2}


def tiny_swin(image_size: int, num_labels: int = 3, **options) -> MultiLabelNet:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="swin_tiny_patch4_window7_224", backbone_options={**TINY_SWIN_OPTIONS, **options},
                      image_size=image_size, head="ssca")
    return build_model(cfg, num_labels)


def test_fixed_size_backbone_refuses_other_sizes_in_one_line():
    model = tiny_swin(64)
    assert model(images(1, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"^Backbone 'swin_tiny_patch4_window7_224' was built for 64x64 inputs "
                                         r"\(model.image_size\) and got 96x96: .*dynamic_img_size: true") as err:
        model(images(1, 96))
    assert "\n" not in str(err.value)
    vit = FeatureBackbone("vit_tiny_patch16_224", options={"depth": 3}, image_size=(32, 32))  # fixed position embeddings
    with pytest.raises(ValueError, match="built for 32x32 inputs"):
        vit(images(1, 48))


def test_dynamic_swin_takes_other_sizes():
    model = tiny_swin(64, dynamic_img_size=True)
    assert model.backbone.fixed_input_size is None
    assert model.backbone(images(1, 64)).shape == (1, 192, 2, 2)
    assert model.backbone(images(1, 96)).shape == (1, 192, 3, 3)  # window 2 does not divide 3: timm pads


def test_pretrained_swin_at_another_size_and_window_loads_through_timm(tmp_path):
    """ImageNet weights (224 px, window 7) into a model built at 64 px with window 2: timm resizes the
    relative position tables; every other weight arrives unchanged."""
    import timm

    arch = {k: v for k, v in TINY_SWIN_OPTIONS.items() if k != "window_size"}
    source = timm.create_model("swin_tiny_patch4_window7_224", **arch)
    path = tmp_path / "swin.pth"
    torch.save(source.state_dict(), path)
    backbone = FeatureBackbone("swin_tiny_patch4_window7_224", pretrained=True, weights_path=str(path),
                               image_size=(64, 64), options=TINY_SWIN_OPTIONS)
    body = backbone.body
    torch.testing.assert_close(body.patch_embed.proj.weight, source.patch_embed.proj.weight)
    block = body.layers_0.blocks[0]  # timm's feature wrapper flattens layers.0 to layers_0
    source_block = source.layers[0].blocks[0]
    torch.testing.assert_close(block.mlp.fc1.weight, source_block.mlp.fc1.weight)
    assert source_block.attn.relative_position_bias_table.shape[0] == 13 * 13
    assert block.attn.relative_position_bias_table.shape[0] == 3 * 3  # resized by timm for window 2
    assert backbone(images(1, 64)).shape == (1, 192, 2, 2)
