"""The paper's training settings: head learning rate, plateau schedule, augmentations, and training at
one input size while evaluating at another."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch

from cml_bench.augment import (
    IMAGENET_MEAN,
    _affine,
    _blur,
    _erase,
    _multiscale_theta,
    _shift_flip_theta,
    augment_batch,
    resize_batch,
)
from cml_bench.config import ConfigError, ModelConfig, TrainConfig, image_hw
from cml_bench.evaluator import predict
from cml_bench.models import build_model
from cml_bench.runner import build_benchmark, resolve_config, run
from cml_bench.training import MultiLabelTemplate, make_optimizer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import SupervisedPlugin

SMALL = ModelConfig(backbone="resnet10t", feature_level=3, stem_pool=False, head="ssca")


def small_model(seed: int = 0, num_labels: int = 70):
    torch.manual_seed(seed)
    return build_model(SMALL, num_labels)


def images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def tiny_bench(tiny_layer):
    return build_benchmark(resolve_config(tiny_layer))


def state_of(model) -> list[torch.Tensor]:
    return [v.detach().clone() for v in model.state_dict().values()]


# ---------------------------------------------------------------------------- head learning rate

def test_head_lr_none_keeps_one_group_with_every_parameter():
    model = small_model()
    optimizer = make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.1))
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["params"] == list(model.parameters())  # same order as before head_lr


def test_head_lr_gives_backbone_and_head_groups_that_survive_training(tiny_bench):
    model = small_model()
    cfg = TrainConfig(optimizer="sgd", lr=5e-4, head_lr=5e-3, batch_size=16)
    strategy = MultiLabelTemplate(model=model, cfg=cfg, device="cpu")
    strategy.train(tiny_bench.train_stream[0])  # Avalanche re-registers the parameters before training
    backbone, head = strategy.optimizer.param_groups
    assert (backbone["lr"], head["lr"]) == (5e-4, 5e-3)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}


# ---------------------------------------------------------------------------- plateau schedule

class LearningRates(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.seen: list[float] = []

    def before_training_epoch(self, strategy, **kwargs):
        self.seen.append(strategy.optimizer.param_groups[0]["lr"])


def test_plateau_divides_lr_when_the_epoch_loss_stops_falling_and_resets_after_the_task(tiny_bench):
    # lr 1e-12 keeps the training loss flat, so every epoch after the first is "no improvement"
    cfg = TrainConfig(optimizer="sgd", lr=1e-12, epochs=5, batch_size=64, scheduler="plateau",
                      plateau_factor=0.1, plateau_patience=1)
    rates = LearningRates()
    strategy = MultiLabelTemplate(model=small_model(), cfg=cfg, device="cpu", plugins=[rates])
    strategy.train(tiny_bench.train_stream[0])
    # epoch 1 sets the best loss; epochs 2 and 3 do not improve: after 2 > patience bad epochs, x 0.1
    assert rates.seen == pytest.approx([1e-12, 1e-12, 1e-12, 1e-13, 1e-13], rel=1e-6)
    assert strategy.optimizer.param_groups[0]["lr"] == pytest.approx(1e-12)  # reset for the next task


def test_unknown_scheduler_and_augment_are_named():
    with pytest.raises(ValueError, match="Unknown train.scheduler 'cosine'. Available: none, plateau"):
        MultiLabelTemplate(model=small_model(), cfg=TrainConfig(scheduler="cosine"), device="cpu")
    with pytest.raises(ValueError, match="Unknown train.augment 'flip'. Available: none, multiscale, pedestrian"):
        MultiLabelTemplate(model=small_model(), cfg=TrainConfig(augment="flip"), device="cpu")


# ---------------------------------------------------------------------------- augmentations

@pytest.mark.parametrize("kind, size", [("multiscale", (40, 40)), ("pedestrian", (48, 36)), ("none", (40, 40))])
def test_augment_is_seeded_per_sample_and_sized(kind, size):
    x = images(6, 32, 32)
    out = augment_batch(x, kind, size, torch.Generator().manual_seed(1))
    again = augment_batch(x, kind, size, torch.Generator().manual_seed(1))
    other = augment_batch(x, kind, size, torch.Generator().manual_seed(2))
    assert out.shape == (6, 3, *size) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, again)
    if kind == "none":
        assert torch.equal(out, other) and torch.equal(out, resize_batch(x, size))
    else:
        assert not torch.equal(out, other)
        resized = resize_batch(x, size)
        changed = [not torch.allclose(out[k], resized[k]) for k in range(6)]
        assert sum(changed) >= 3  # samples get their own draws, not one draw per batch


def test_multiscale_crops_stay_inside_the_image_with_allowed_scales():
    theta = _multiscale_theta(200, (60, 80), torch.Generator().manual_seed(0))
    sx, sy = theta[:, 0, 0].abs(), theta[:, 1, 1]
    base = 60
    allowed_w = {int(base * s) / 80 for s in (1.0, 0.875, 0.75, 0.66, 0.5)}
    allowed_h = {int(base * s) / 60 for s in (1.0, 0.875, 0.75, 0.66, 0.5)}
    assert {round(float(v), 6) for v in sx} <= {round(v, 6) for v in allowed_w}
    assert {round(float(v), 6) for v in sy} <= {round(v, 6) for v in allowed_h}
    assert (theta[:, 0, 2].abs() + sx <= 1 + 1e-6).all() and (theta[:, 1, 2].abs() + sy <= 1 + 1e-6).all()
    assert 0.3 < (theta[:, 0, 0] < 0).float().mean() < 0.7  # flipped about half the time


def test_pad_and_crop_is_an_exact_integer_shift_with_zero_fill():
    x = torch.rand(30, 3, 16, 12)
    theta = _shift_flip_theta(30, (16, 12), torch.Generator().manual_seed(0))
    out = _affine(x, theta, (16, 12))
    assert 0.2 < (theta[:, 0, 0] < 0).float().mean() < 0.8
    for k in range(30):
        dy, dx = round(float(theta[k, 1, 2]) * 16 / 2), round(float(theta[k, 0, 2]) * 12 / 2)
        assert max(abs(dy), abs(dx)) <= 10
        flipped = bool(theta[k, 0, 0] < 0)
        expected = torch.zeros(3, 16, 12)
        for i in range(16):
            for j in range(12):  # output pixel (i, j) reads input (i + dy, j + dx), mirrored if flipped
                si, sj = i + dy, (12 - 1 - j if flipped else j) + dx
                if 0 <= si < 16 and 0 <= sj < 12:
                    expected[:, i, j] = x[k, :, si, sj]
        torch.testing.assert_close(out[k], expected, atol=1e-5, rtol=0)


def test_blur_and_erase():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(40, 3, 24, 20)
    blurred = _blur(x, gen)
    same = [torch.allclose(blurred[k], x[k], atol=1e-6) for k in range(40)]
    assert 8 < sum(same) < 32  # p = 0.5: the others are blurred (smoother: less variance)
    for k in range(40):
        if not same[k]:
            assert blurred[k].var() < x[k].var()
    torch.testing.assert_close(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.03, rtol=0)  # kernels sum to 1
    erased = _erase(x, gen)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    hit = 0
    for k in range(40):
        box = (erased[k] != x[k]).any(0)
        if box.any():
            hit += 1
            rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
            region = erased[k][:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert torch.equal(region, mean.expand_as(region))  # one rectangle of mean colour
            area = box.sum() / (24 * 20)
            assert 0.02 - 0.01 <= area <= 0.33 + 0.01
    assert 8 < hit < 32


def test_training_with_augmentation_is_deterministic_and_differs_from_plain(tiny_bench):
    def train(augment: str) -> list[torch.Tensor]:
        model = small_model()
        cfg = TrainConfig(augment=augment, batch_size=16)
        MultiLabelTemplate(model=model, cfg=cfg, device="cpu", seed=5, image_size=(40, 40)).train(
            tiny_bench.train_stream[0])
        return state_of(model)

    first, second, plain = train("multiscale"), train("multiscale"), train("none")
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, plain))


# ---------------------------------------------------------------------------- train / test resolution

def test_image_size_values():
    assert image_hw(448, "k") == (448, 448) and image_hw([256, 192], "k") == (256, 192) and image_hw(None, "k") is None
    with pytest.raises(ConfigError, match=r"eval.image_size: expected a positive integer or \[height, width\]"):
        image_hw([256, 0], "eval.image_size")


def test_batches_enter_the_model_at_the_training_size(tiny_bench):
    seen = []
    model = small_model()
    model.backbone.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    MultiLabelTemplate(model=model, cfg=TrainConfig(batch_size=64), device="cpu", image_size=(40, 48)).train(
        tiny_bench.train_stream[0])
    assert seen and set(seen) == {(40, 48)}


@pytest.mark.parametrize("head", ["pooled", "cos", "ssca"])
def test_predict_resizes_to_the_test_size(head, tiny_bench):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet10t", feature_level=3, stem_pool=False, head=head), 70).eval()
    dataset = tiny_bench.test_stream[0].dataset
    scores, _ = predict(model, dataset, 8, "cpu", image_size=(48, 48))
    x = torch.stack([dataset[i][0] for i in range(3)])
    with torch.no_grad():
        expected = torch.sigmoid(model(resize_batch(x, (48, 48))))
        stored = torch.sigmoid(model(x))
    torch.testing.assert_close(torch.from_numpy(scores[:3]), expected)
    assert not torch.allclose(expected, stored)  # the size matters, so the test above can fail


def test_train_at_one_size_evaluate_at_another(tiny_layer, tmp_path, monkeypatch):
    """A run trained at 40 px (images stored at 32) and evaluated at 56 px, SSCA head."""
    import cml_bench.runner as runner

    layer = {**tiny_layer, "strategy": {"name": "finetune+ssca"},
             "model": {"image_size": 40}, "eval": {**tiny_layer["eval"], "image_size": 56}}
    sizes = []
    build = runner.build_model

    def build_recording_input_sizes(*args, **kwargs):  # the real model, with a hook on its backbone
        model = build(*args, **kwargs)
        model.backbone.register_forward_pre_hook(lambda m, a: sizes.append((m.training, tuple(a[0].shape[-2:]))))
        return model

    monkeypatch.setattr(runner, "build_model", build_recording_input_sizes)
    result = run(resolve_config(layer), tmp_path, log=lambda *_: None)
    assert {size for training, size in sizes if training} == {(40, 40)}
    assert {size for training, size in sizes if not training} == {(56, 56)}
    frame = pd.DataFrame(result.rows)
    assert frame.query("metric == 'mAP' and eval_on == 'seen'").value.between(0, 100).all()


def test_fixed_size_backbone_with_another_test_size_fails_before_training(tiny_layer, tmp_path):
    options = {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 2}
    layer = {**tiny_layer, "model": {"backbone": "swin_tiny_patch4_window7_224", "feature_level": -1,
                                     "stem_pool": True, "backbone_options": options, "image_size": 64,
                                     "pretrained": False},
             "eval": {"image_size": 96}}
    with pytest.raises(ValueError, match="built for 64x64 inputs .* and got 96x96"):
        run(resolve_config(layer), tmp_path, log=lambda *_: None)
    assert not any(tmp_path.rglob("*.partial*")) and not any(tmp_path.rglob("metrics.csv"))
