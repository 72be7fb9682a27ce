"""``train.precision`` (fp32 | bf16 autocast) and ``train.channels_last``, in training and evaluation."""
from __future__ import annotations

import pytest
import torch

from cml_bench.config import ConfigError, ModelConfig, TrainConfig
from cml_bench.evaluator import predict
from cml_bench.models import build_model
from cml_bench.runner import build_benchmark, resolve_config, run
from cml_bench.training import MultiLabelTemplate

MODEL = ModelConfig(backbone="resnet10t", feature_level=3, stem_pool=False, head="ssca")


def _trained(tiny_layer, **train) -> tuple[torch.nn.Module, MultiLabelTemplate, object]:
    """A model trained on the tiny stream's first task with ``train`` settings (same seed each time)."""
    bench = build_benchmark(resolve_config(tiny_layer))
    torch.manual_seed(0)
    model = build_model(MODEL, bench.meta.num_classes)
    strategy = MultiLabelTemplate(model=model, cfg=TrainConfig(**train), device="cpu", seed=0)
    strategy.train(bench.train_stream[0])
    return model, strategy, bench


def test_fp32_is_the_plain_forward(tiny_layer):
    model, strategy, bench = _trained(tiny_layer)
    x = torch.stack([bench.test_stream[0].dataset[i][0] for i in range(4)])
    strategy.mb_output = None
    strategy.mbatch = [x, None, None]
    strategy.model.eval()
    with torch.no_grad():
        assert torch.equal(strategy.forward(), model.forward_modules(x))  # no autocast, no copy


def test_bf16_trains_and_evaluates_under_autocast(tiny_layer):
    fp32, _, bench = _trained(tiny_layer)
    bf16, strategy, _ = _trained(tiny_layer, precision="bf16")
    test = bench.test_stream[0].dataset
    x = torch.stack([test[i][0] for i in range(4)])
    strategy.mbatch = [x, None, None]
    with torch.no_grad():
        assert strategy.forward().dtype == torch.float32  # logits (hence the loss) stay fp32
    # the weights differ after a task: the forward passes really ran in bf16
    assert not all(torch.equal(a, b) for a, b in zip(fp32.state_dict().values(), bf16.state_dict().values()))
    scores32, targets = predict(bf16, test, 64, "cpu")
    scores16, targets16 = predict(bf16, test, 64, "cpu", precision="bf16")
    assert scores16.dtype == scores32.dtype and (targets16 == targets).all()
    assert 0 < abs(scores16 - scores32).max() < 0.05  # bf16 rounding, not a different model


def test_channels_last_model_gives_the_same_predictions_to_rounding(tiny_layer):
    model, _, bench = _trained(tiny_layer, channels_last=True)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    test = bench.test_stream[0].dataset
    scores_cl, _ = predict(model, test, 64, "cpu", channels_last=True)
    scores, _ = predict(model, test, 64, "cpu")
    assert abs(scores_cl - scores).max() < 1e-4


def test_unknown_precision_is_a_one_line_error(tiny_layer, tmp_path):
    config = resolve_config(tiny_layer, {"strategy": {"name": "finetune"}, "train": {"precision": "fp16"}})
    with pytest.raises(ValueError, match=r"^Unknown train.precision 'fp16'. Available: fp32, bf16.$"):
        run(config, tmp_path, log=lambda *_: None)
    with pytest.raises(ConfigError, match="train.channels_last: expected true or false"):
        resolve_config(tiny_layer, {"train": {"channels_last": "yes"}})
