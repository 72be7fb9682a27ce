"""The paper's settings shipped as package data: found by name, valid, and buildable.

Each config is resolved on top of its own benchmark's defaults (coco2014, voc2007, nuswide, pa100k,
rap_zs, peta_zs): the settings the paper states must survive that merge."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from cml_bench.cli import main
from cml_bench.config import SHIPPED_CONFIGS, ConfigError, load_config, shipped_configs
from cml_bench.models import build_model
from cml_bench.results import find_finished
from cml_bench.runner import resolve_config
from cml_bench.training import MultiLabelTemplate

GENERIC = ["coco2014-resnet101-448", "coco2014-resnet101-576", "coco2014-swinb-448", "coco2014-swinb-576",
           "voc2007-resnet101-448", "nuswide-resnet101-448"]
PEDESTRIAN = ["pa100k-resnet50", "rap_zs-resnet50", "peta_zs-resnet50"]


def test_every_paper_setting_is_shipped_and_packaged():
    assert shipped_configs() == sorted(GENERIC + PEDESTRIAN)
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["cml_bench"]
    assert all(any(p.match(f"*/{pattern}") for pattern in patterns) for p in SHIPPED_CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("name", GENERIC + PEDESTRIAN)
def test_shipped_config_resolves_and_builds(name):
    layer = load_config(name)
    config = resolve_config(layer)
    assert config.benchmark.name == layer["benchmark"]["name"] and name.startswith(config.benchmark.name)
    model_cfg = dataclasses.replace(config.model, pretrained=False)  # no weights download in tests
    with torch.device("meta"):
        model = build_model(model_cfg, 80)
        strategy = MultiLabelTemplate(model=model, cfg=config.train, device="cpu")
    train = config.train
    assert config.model.head == "ssca" and config.model.pretrained and train.optimizer == "sgd"
    assert train.weight_decay == 1e-4 and train.momentum == 0.9
    groups = strategy.optimizer.param_groups
    if name in GENERIC:
        size = int(name.rsplit("-", 1)[1])
        assert config.model.image_size == size and config.model.ssca_modules == 1
        assert (train.batch_size, train.epochs, train.augment, train.scheduler) == (32, 20, "multiscale", "none")
        assert [g["lr"] for g in groups] == [5e-4, 5e-3]
        assert model.backbone.channels == (1024 if "swin" in name else 2048)
        if "swin" in name:  # the window divides every stage's map: 448 / 4 / 7, 576 / 4 / 9 ... / 8
            window = config.model.backbone_options["window_size"]
            assert all((size // r) % window == 0 for r in (4, 8, 16, 32))
    else:
        assert config.model.backbone == "resnet50" and config.model.image_size == [256, 192]
        assert config.model.ssca_modules == 3
        assert (train.batch_size, train.epochs, train.augment) == (64, 30, "pedestrian")
        assert (train.scheduler, train.plateau_factor, train.plateau_patience) == ("plateau", 0.1, 4)
        assert [g["lr"] for g in groups] == [0.01]


def test_config_by_path_still_works_and_unknown_name_lists_shipped(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 0.5}}))
    assert load_config(path) == {"train": {"lr": 0.5}} == load_config(str(path))
    with pytest.raises(ConfigError, match=r"Config 'coco-resnet' is neither a file nor a shipped config name; "
                                          r"shipped configs: coco2014-resnet101-448, .*, voc2007-resnet101-448\."):
        load_config("coco-resnet")
    with pytest.raises(ConfigError, match=r"Config file '.*coco2014-resnet101-448.yaml' does not exist"):
        load_config(tmp_path / "coco2014-resnet101-448.yaml")  # a path is never looked up by name


def test_cli_finds_shipped_config_by_name(capsys):
    assert main(["profile", "--config", "pa100k-resnet50", "--num-labels", "26"]) == 0
    assert "resnet50 + ssca head (S = 3), 26 labels, 256x192 input" in capsys.readouterr().out
    assert main(["run", "--config", "no-such-config"]) == 2
    assert "shipped configs: coco2014-resnet101-448" in capsys.readouterr().err


def test_runs_written_before_new_config_keys_are_still_found(tiny_layer, tmp_path):
    """A finished run whose config.yaml predates keys added since (with their defaults) is the same config."""
    config = resolve_config(tiny_layer)
    run_dir = tmp_path / "synth-cocoseq" / "finetune" / "seed0-20260101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("x\n")
    old = config.to_dict()
    for section, key in (("model", "image_size"), ("model", "backbone_options"), ("train", "precision"),
                         ("train", "augment"), ("eval", "image_size")):
        del old[section][key]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    assert find_finished(tmp_path, config, "finetune") == run_dir
    config.train.augment = "multiscale"  # a run that differs in a new key is not the same run
    assert find_finished(tmp_path, config, "finetune") is None
