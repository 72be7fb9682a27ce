"""The online replay protocol, observed through the real Avalanche template."""
from __future__ import annotations

import warnings

import torch

from cml_bench.buffers import ExStreamBuffer, PRSBuffer, ReservoirBuffer
from cml_bench.config import ModelConfig, TrainConfig
from cml_bench.models import build_model
from cml_bench.replay import OnlineReplayPlugin
from cml_bench.runner import build_benchmark, resolve_config
from cml_bench.training import MultiLabelTemplate, multilabel_loss

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import SupervisedPlugin


class Recorder(SupervisedPlugin):
    """Records, per step, the batch the optimiser sees and the buffer size around the step."""

    def __init__(self, replay: OnlineReplayPlugin):
        super().__init__()
        self.replay = replay
        self.steps = []

    def before_forward(self, strategy, **kwargs):
        self.steps.append({"x": strategy.mbatch[0].clone(), "y": strategy.mbatch[1].clone(),
                           "buffer_before": len(self.replay.buffer)})

    def after_training_iteration(self, strategy, **kwargs):
        self.steps[-1]["buffer_after"] = len(self.replay.buffer)


def _train_one_task(tiny_layer, capacity: int):
    config = resolve_config(tiny_layer)
    bench = build_benchmark(config)
    model = build_model(ModelConfig(backbone="resnet10t", feature_level=3, stem_pool=False), 70)
    replay = OnlineReplayPlugin(ReservoirBuffer(capacity, 70, seed=0), replay_batch_size=10)
    recorder = Recorder(replay)
    # the recorder runs after the replay plugin's before_training_iteration, so it sees the union
    strategy = MultiLabelTemplate(model=model, cfg=TrainConfig(batch_size=10), device="cpu",
                                  plugins=[replay, recorder], seed=0)
    strategy.train(bench.train_stream[0])
    return bench, replay, recorder


def test_batch_is_incoming_plus_min_buffer_and_10(tiny_layer):
    bench, replay, recorder = _train_one_task(tiny_layer, capacity=15)
    n = len(bench.train_stream[0].dataset)
    incoming = [min(10, n - 10 * i) for i in range(len(recorder.steps))]
    assert sum(incoming) == n
    for i, step in enumerate(recorder.steps):
        replayed = min(step["buffer_before"], 10)
        assert len(step["x"]) == incoming[i] + replayed
        # the buffer is updated only after the step, with the incoming samples
        assert step["buffer_after"] == min(15, step["buffer_before"] + incoming[i])
    assert recorder.steps[0]["buffer_before"] == 0  # replay starts within the first task
    assert len(recorder.steps[1]["x"]) == 20


def test_replayed_samples_are_earlier_incoming_samples(tiny_layer):
    _, replay, recorder = _train_one_task(tiny_layer, capacity=15)
    seen = []
    for i, step in enumerate(recorder.steps):
        k = min(step["buffer_before"], 10)
        n_in = len(step["x"]) - k
        if k:
            for image in step["x"][n_in:]:
                assert any(torch.equal(image, old) for old in seen)
        seen.extend(step["x"][:n_in])
    # the memory holds exactly what the buffer says: every stored row is a stream sample
    stored_y = replay.memory.targets[: len(replay.buffer)]
    assert torch.equal(stored_y > 0.5, torch.as_tensor(replay.buffer.slot_labels))


def test_replay_state_round_trip(tiny_layer):
    """Buffer decisions, RNG and the stored images survive a save / restore (for checkpoints)."""
    import copy

    _, replay, _ = _train_one_task(tiny_layer, capacity=15)
    state = copy.deepcopy(replay.state_dict())
    restored = OnlineReplayPlugin(ReservoirBuffer(15, 70, seed=123), replay_batch_size=10)
    restored.load_state_dict(state)
    assert torch.equal(restored.memory.images, replay.memory.images)
    assert (restored.buffer.sample(10) == replay.buffer.sample(10)).all()
    labels = torch.zeros(10, 70)
    labels[:, 3] = 1
    assert restored.buffer.offer_batch(labels.numpy()) == replay.buffer.offer_batch(labels.numpy())


def test_plugin_needs_keys_exactly_for_keyed_buffers():
    import pytest

    with pytest.raises(ValueError, match="keys="):
        OnlineReplayPlugin(ExStreamBuffer(5, 70, seed=0))
    with pytest.raises(ValueError, match="no keys"):
        OnlineReplayPlugin(PRSBuffer(5, 70, seed=0), keys=lambda m, x, y: x)


def test_keys_leave_the_model_as_it_was():
    """Keys are computed in eval mode without touching weights, BN statistics or .grad."""
    import copy

    from cml_bench.replay import model_keys
    from cml_bench.registry import STRATEGIES

    STRATEGIES.discover()
    from strategies.exstream import pooled_features
    from strategies.gss import head_gradients

    model = build_model(ModelConfig(backbone="resnet10t", feature_level=3, stem_pool=False, head="ssca"), 70)
    model.train()
    before = copy.deepcopy(model.state_dict())
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    y = torch.zeros(4, 70)
    y[:, 5] = 1
    grads = model_keys(head_gradients, model, x, y)
    feats = model_keys(pooled_features, model, x, y)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert grads.shape == (4, sum(p.numel() for p in model.head.parameters())) and feats.shape == (4, 256)
    # per-sample: the first row is the gradient of the first sample's loss alone
    model.eval()
    loss = multilabel_loss(model.head(model.backbone(x[:1])), y[:1])
    ref = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.head.parameters()))])
    assert torch.allclose(torch.as_tensor(grads[0], dtype=torch.float32), ref, atol=1e-6)


def test_keyed_replay_state_round_trip(tiny_layer):
    """A keyed buffer (GSS) in the real loop: memory matches the buffer; state survives a restore."""
    import copy

    from cml_bench.registry import STRATEGIES
    from cml_bench.strategy import StrategyContext

    config = resolve_config(tiny_layer)
    bench = build_benchmark(config)
    spec = STRATEGIES.get("gss")
    ctx = StrategyContext(bench.meta, config.train, 0, "cpu")
    (replay,) = spec.build(spec.options(buffer_size=15), ctx)
    model = build_model(ModelConfig(backbone="resnet10t", feature_level=3, stem_pool=False), 70)
    strategy = MultiLabelTemplate(model=model, cfg=TrainConfig(batch_size=10), device="cpu", plugins=[replay], seed=0)
    strategy.train(bench.train_stream[0])
    stored_y = replay.memory.targets[: len(replay.buffer)]
    assert torch.equal(stored_y > 0.5, torch.as_tensor(replay.buffer.slot_labels))
    assert ((replay.buffer.scores >= 0) & (replay.buffer.scores <= 2)).all()
    (restored,) = spec.build(spec.options(buffer_size=15), StrategyContext(bench.meta, config.train, 5, "cpu"))
    restored.load_state_dict(copy.deepcopy(replay.state_dict()))
    assert (restored.buffer.scores == replay.buffer.scores).all()
    assert (restored.buffer.sample(10) == replay.buffer.sample(10)).all()
