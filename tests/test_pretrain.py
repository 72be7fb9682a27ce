"""The embedded default's pretrained backbone: a source disjoint from the benchmark, deterministic
pretraining, the shipped weights (hash, loading, safe format), the manifest entry, from scratch."""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.synth_cocoseq import CLASS_NAMES, CLUTTER_SPRITES, sprite_grids
from benchmarks.synth_pretrain import (MIN_DISTANCE, RESERVED_DATA_SEEDS, SynthPretrainOptions, generate,
                                       min_distance, reserved_grids, source_grids)
from cml_bench.config import ModelConfig
from cml_bench.models import PretrainedWeightsError, build_model
from cml_bench.models.backbone import SHIPPED_WEIGHTS, file_sha256, load_backbone_weights
from cml_bench.pretrain import pretrain, resolve_pretrain
from cml_bench.registry import BENCHMARKS
from cml_bench.runner import resolve_config, run

SHIPPED = SHIPPED_WEIGHTS / "synth-resnet10t.safetensors"
TINY_SOURCE = {"num_classes": 12, "train_images": 60, "val_images": 24, "image_size": 32}


# ---------------------------------------------------------------------------- the source

def test_source_sprites_are_far_from_every_benchmark_sprite():
    grids = source_grids(SynthPretrainOptions())
    assert len(grids) == SynthPretrainOptions().num_classes + CLUTTER_SPRITES
    assert len({g.tobytes() for g in grids}) == len(grids)
    # every source sprite (classes and its clutter) against the benchmark's classes *and* clutter,
    # for the default data_seed and every validation / variant seed below 100
    assert {0, 1, 2, 3} <= set(RESERVED_DATA_SEEDS)
    reserved = reserved_grids()
    assert len(reserved) == len(RESERVED_DATA_SEEDS) * (len(CLASS_NAMES) + CLUTTER_SPRITES)
    assert min_distance(grids, reserved).min() >= MIN_DISTANCE >= 4
    # the benchmark's own sprites are what the default draws: the first 70 are its classes
    default = sprite_grids(0)
    assert min_distance(default[:5], reserved).max() == 0


def test_mlcil_default_sprites_are_far_from_the_source_and_it_loads_the_weights():
    """synth-mlcil starts from the same pretrained backbone, so its sprites must avoid the source too."""
    from benchmarks.synth_mlcil import SynthMLCILOptions, painter_for

    source = source_grids(SynthPretrainOptions())
    for seed in (0, 1, 2):
        _, painter = painter_for(SynthMLCILOptions(data_seed=seed))
        assert len(painter.grids) == SynthMLCILOptions().classes + CLUTTER_SPRITES
        assert min_distance(source, painter.grids.reshape(-1, 16)).min() >= MIN_DISTANCE
    config = resolve_config({"benchmark": {"name": "synth-mlcil"}})
    assert config.model.pretrained and config.model.weights == "synth-resnet10t"


def test_source_without_the_rejection_would_come_near():
    """The bound is not vacuous: unconstrained draws do land within MIN_DISTANCE of benchmark sprites."""
    from benchmarks.synth_cocoseq import draw_grids

    free = draw_grids(np.random.default_rng(7), 4000)
    assert min_distance(free, reserved_grids()).min() < MIN_DISTANCE


def test_source_is_deterministic_multilabel_and_sized():
    options = SynthPretrainOptions(**TINY_SOURCE)
    a, b = generate(options), generate(options)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["train_x"].shape == (60, 3, 32, 32) and a["train_x"].dtype == np.uint8
    per_image = a["train_y"].sum(1)
    assert per_image.min() >= 1 and per_image.max() <= 3
    assert a["val_y"].shape == (24, 12)


# ---------------------------------------------------------------------------- pretraining

def tiny_pretrain(tmp_path: Path, name: str):
    config = resolve_pretrain({"source": TINY_SOURCE, "epochs": 1, "batch_size": 20, "warmup_steps": 1})
    return pretrain(config, tmp_path / f"{name}.safetensors", log=lambda _: None, command="test")


def test_pretrain_is_deterministic_and_records_its_hash(tmp_path):
    first, second = tiny_pretrain(tmp_path, "a"), tiny_pretrain(tmp_path, "b")
    assert first.sha256 == second.sha256 == file_sha256(first.path)
    record = json.loads(first.path.with_suffix(".json").read_text())
    assert record["sha256"] == first.sha256 and record["threads"] == 1
    assert record["config"]["source"]["num_classes"] == 12 and len(record["history"]) == 1
    # loads into the benchmark's backbone by path
    model = build_model(ModelConfig(backbone="resnet10t", feature_level=3, stem_pool=False, pretrained=True,
                                    weights=str(first.path)), 5)
    assert model.backbone.weights_info == {"name": str(first.path), "file": "a.safetensors", "sha256": first.sha256}


def test_pretrain_model_is_the_default_backbone():
    model = BENCHMARKS.get("synth-cocoseq").defaults["model"]
    config = resolve_pretrain()
    assert (config.model.backbone, config.model.feature_level, config.model.stem_pool) == \
        (model["backbone"], model["feature_level"], model["stem_pool"])
    assert config.source["image_size"] == resolve_config({}).benchmark.options["image_size"]


# ---------------------------------------------------------------------------- shipped weights

def test_shipped_weights_match_their_record_and_the_documented_command():
    record = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert file_sha256(SHIPPED) == record["sha256"]
    assert SHIPPED.stat().st_size <= 5e6
    # `python -m cml_bench pretrain` with no --set resolves to the recorded config
    assert record["config"] == dataclasses.asdict(resolve_pretrain())
    assert record["command"].startswith("python -m cml_bench pretrain --out ")
    state, meta = load_backbone_weights(SHIPPED)
    assert meta["backbone"] == "resnet10t" and meta["feature_level"] == 3
    assert all(v.dtype != torch.float16 for v in state.values())


def test_shipped_weights_are_package_data():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    package_data = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"weights/*.safetensors"' in package_data and '"weights/*.json"' in package_data


def test_default_loads_the_shipped_weights_and_pretrained_false_does_not():
    default = resolve_config({})
    assert default.model.pretrained and default.model.weights == "synth-resnet10t"
    model = build_model(default.model, 70)
    state, _ = load_backbone_weights(SHIPPED)
    torch.testing.assert_close(model.backbone.body.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert model.backbone.weights_info["sha256"] == file_sha256(SHIPPED)
    scratch = build_model(resolve_config({"model": {"pretrained": False}}).model, 70)
    assert scratch.backbone.weights_info is None
    assert not torch.equal(scratch.backbone.body.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_manifest_records_the_weights(tiny_layer, tmp_path):
    config = resolve_config(tiny_layer, {"strategy": {"name": "finetune"}})
    result = run(config, tmp_path, log=lambda _: None)
    weights = json.loads((result.path / "manifest.json").read_text())["weights"]
    assert weights == {"name": "synth-resnet10t", "file": SHIPPED.name, "sha256": file_sha256(SHIPPED)}
    scratch = run(resolve_config(tiny_layer, {"model": {"pretrained": False}}), tmp_path, log=lambda _: None)
    assert json.loads((scratch.path / "manifest.json").read_text())["weights"] is None


# ---------------------------------------------------------------------------- errors

def test_weights_for_another_backbone_are_refused_in_one_line():
    with pytest.raises(PretrainedWeightsError, match="holds resnet10t feature level 3, but the model is resnet10t feature level 2"):
        build_model(ModelConfig(backbone="resnet10t", feature_level=2, stem_pool=False, pretrained=True,
                                weights="synth-resnet10t"), 5)
    with pytest.raises(PretrainedWeightsError, match="neither a shipped name"):
        build_model(ModelConfig(backbone="resnet10t", pretrained=True, weights="no-such-weights"), 5)


def test_a_planted_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(pickle.dumps(Planted()))
    with pytest.raises(PretrainedWeightsError, match="not a readable cml_bench weights file"):
        build_model(ModelConfig(backbone="resnet10t", feature_level=3, stem_pool=False, pretrained=True,
                                weights=str(bad)), 5)
    assert not marker.exists()
