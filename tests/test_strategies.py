"""Every registered strategy, with every head, runs on a tiny stream and reports sane metrics.

Parametrised over the registry: a new strategy module is tested the moment it exists.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest

from cml_bench.registry import HEADS, STRATEGIES
from cml_bench.runner import resolve_config, run

CASES = [(name, head) for name in STRATEGIES.names() for head in HEADS]


@pytest.mark.parametrize("name,head", CASES, ids=[f"{n}+{h}" for n, h in CASES])
def test_strategy_runs_with_head(name, head, tiny_layer, tmp_path):
    strategy = name if head == "pooled" else f"{name}+{head}"
    config = resolve_config(tiny_layer, {"strategy": {"name": strategy}})
    result = run(config, tmp_path, log=lambda *_: None)
    frame = pd.DataFrame(result.rows)
    final = frame[(frame.trained_through_task == 3) & (frame.eval_on == "seen") & (frame.group == "all")]
    values = dict(zip(final.metric, final.value))
    assert set(values) >= {"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"}
    assert all(0.0 <= values[m] <= 100.0 for m in ("mAP", "CF1", "OF1"))
    assert not math.isnan(values["mAP"])
    spec = STRATEGIES.get(name)
    trained = set(frame.trained_through_task)
    assert trained == ({3} if spec.joint else {0, 1, 2, 3})
    assert (result.path / "metrics.csv").is_file() and (result.path / "model.pt").is_file()


TINY_MLCIL = {"classes": 6, "increment": 2, "train_images": 40, "test_images": 30, "image_size": 32,
              "sprite_min": 5, "sprite_max": 8, "clutter": 1}


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_runs_on_the_mlcil_default(name, tmp_path):
    """Every strategy on a tiny synth-mlcil: several epochs per session, masked labels, avg_mAP."""
    config = resolve_config({"benchmark": {"name": "synth-mlcil", "options": TINY_MLCIL},
                             "strategy": {"name": name}, "train": {"epochs": 2, "batch_size": 8},
                             "eval": {"batch_size": 256}})
    assert config.train.epochs == 2 and config.eval.threshold == 0.8
    frame = pd.DataFrame(run(config, tmp_path, log=lambda *_: None).rows)
    seen = frame[(frame.eval_on == "seen") & (frame.group == "all")]
    final = dict(zip(seen[seen.trained_through_task == 2].metric, seen[seen.trained_through_task == 2].value))
    assert 0.0 <= final["mAP"] <= 100.0 and {"CF1", "OF1"} <= set(final)
    joint = STRATEGIES.get(name).joint
    assert set(seen.trained_through_task) == ({2} if joint else {0, 1, 2})
    assert math.isnan(final["avg_mAP"]) == joint
    if not joint:
        assert final["avg_mAP"] == pytest.approx(seen[seen.metric == "mAP"].value.mean())


def test_ewc_learns_importances_from_multi_hot_targets(tiny_layer):
    """Avalanche's EWCPlugin with our BCE criterion: non-zero Fisher, penalty in the next task."""
    import torch

    from cml_bench.models import build_model
    from cml_bench.runner import build_benchmark
    from cml_bench.strategy import StrategyContext
    from cml_bench.training import MultiLabelTemplate

    config = resolve_config(tiny_layer, {"strategy": {"name": "ewc"}})
    bench = build_benchmark(config)
    spec = STRATEGIES.get("ewc")
    (plugin,) = spec.build(spec.options(ewc_lambda=1000.0), StrategyContext(bench.meta, config.train, 0, "cpu"))
    model = build_model(config.model, 70)
    strategy = MultiLabelTemplate(model=model, cfg=config.train, device="cpu", plugins=[plugin], seed=0)
    strategy.train(bench.train_stream[0])
    importances = plugin.importances[0]
    total = sum(float(v.data.sum()) for v in importances.values())
    assert total > 0
    # EWC adds lambda * penalty to the loss in before_backward: zero at the first step of the next
    # task (weights equal the saved ones), then positive as the weights move away.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from avalanche.training.plugins import SupervisedPlugin

    losses: dict[str, list[float]] = {"before": [], "after": []}

    class Probe(SupervisedPlugin):
        def __init__(self, key: str):
            super().__init__()
            self.key = key

        def before_backward(self, strategy, **kwargs):
            losses[self.key].append(float(strategy.loss.detach()))

    strategy.plugins.insert(0, Probe("before"))
    strategy.plugins.append(Probe("after"))
    strategy.train(bench.train_stream[1])
    added = [a - b for a, b in zip(losses["after"], losses["before"])]
    assert len(added) > 2
    assert added[0] == pytest.approx(0.0, abs=1e-9)
    assert all(x > 0 for x in added[1:])


@pytest.mark.parametrize("options,passes", [({}, 3), ({"epochs": 1}, 1)])
def test_multitask_makes_the_benchmarks_joint_passes(tiny_layer, options, passes):
    """synth-cocoseq's joint reference makes JOINT_EPOCHS passes over the union; an option overrides it."""
    import warnings

    from benchmarks.synth_cocoseq import JOINT_EPOCHS
    from cml_bench.models import build_model
    from cml_bench.runner import build_benchmark
    from cml_bench.stream import joint_experience
    from cml_bench.strategy import StrategyContext
    from cml_bench.training import MultiLabelTemplate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from avalanche.training.plugins import SupervisedPlugin

    config = resolve_config(tiny_layer, {"strategy": {"name": "multitask", "options": options}})
    bench = build_benchmark(config)
    assert bench.meta.joint_epochs == JOINT_EPOCHS == 3
    spec = STRATEGIES.get("multitask")
    plugins = spec.build(spec.options(**options), StrategyContext(bench.meta, config.train, 0, "cpu"))
    epochs = []

    class Count(SupervisedPlugin):
        def after_training_epoch(self, strategy, **kwargs):
            epochs.append(strategy.clock.train_exp_epochs)

    strategy = MultiLabelTemplate(model=build_model(config.model, 70), cfg=config.train, device="cpu",
                                  plugins=list(plugins) + [Count()], seed=0)
    strategy.train(joint_experience(bench))
    assert len(epochs) == passes
