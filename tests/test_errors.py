"""The catalogue of bad input: what a new user types wrong, and what they get back.

Every case goes through ``cml_bench.cli.main`` as the command line would and must end in exit code 2
with one line on stderr that names the key or file at fault (no traceback), before anything is
written: no run folder, no hidden ``.partial-*`` under ``--out``. Cases that need a fresh process
(what the current folder holds) run in a subprocess.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cml_bench.cli import main
from cml_bench.config import ConfigError, build_dataclass
from cml_bench.registry import STRATEGIES
from cml_bench.replay import ReplayOptions
from cml_bench.store import StorePart, write_store

REPLAY = sorted(n for n in STRATEGIES.names() if issubclass(STRATEGIES.get(n).options, ReplayOptions))


def _store(path: Path) -> Path:
    """A complete 12-image pa100k store (train / val / test), written without any image file."""
    parts = [StorePart(s, 0, [f"{s}{i}" for i in range(4)], [f"{s}{i}.jpg" for i in range(4)],
                       np.eye(4, 26, dtype=np.uint8)) for s in ("train", "val", "test")]
    write_store(path, parts, [f"a{i}" for i in range(26)], builder="pa100k", builder_version=1, size=(16, 12),
                reader=lambda p, s: np.zeros((3, 16, 12), np.uint8))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, cache_dir) -> dict[str, str]:
    """The damaged files and folders the cases point at, made once."""
    from conftest import TINY_BENCHMARK

    root = tmp_path_factory.mktemp("world")
    tiny = {"benchmark": {"name": "synth-cocoseq", "options": {**TINY_BENCHMARK, "cache_dir": str(cache_dir)}},
            "eval": {"batch_size": 256}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    cut_images = _store(root / "cut_images")
    (cut_images / "images.npy").write_bytes((cut_images / "images.npy").read_bytes()[:500])
    cut_index = _store(root / "cut_index")
    (cut_index / "index.json").write_text((cut_index / "index.json").read_text()[:50])
    no_labels = _store(root / "no_labels")
    (no_labels / "labels.npy").unlink()
    (root / "pa" / "data").mkdir(parents=True)
    (root / "pa" / "annotation.mat").write_bytes(b"MATLAB 5.0 MAT-file")  # cut after the first bytes
    from test_pedestrian import make_pa100k

    make_pa100k(root / "pa_good")
    (root / "a_folder").mkdir()
    (root / "a_file").write_text("not a folder")

    from cml_bench.config import dump_yaml
    from cml_bench.models import build_model
    from cml_bench.runner import build_benchmark, resolve_config

    # run folders as `run` leaves them (config.yaml, model.pt), each model.pt damaged in its own way
    config = resolve_config(tiny, {"strategy": {"name": "finetune"}})
    weights = build_model(config.model, build_benchmark(config).meta.num_classes).state_dict()
    for name, damage in {"cut_model": lambda p: p.write_bytes(p.read_bytes()[:1000]),
                         "text_model": lambda p: p.write_text("hello"),
                         "other_model": lambda p: torch.save({"head.other.weight": torch.zeros(2)}, p)}.items():
        (root / name).mkdir()
        dump_yaml(config, root / name / "config.yaml")
        torch.save(weights, root / name / "model.pt")
        damage(root / name / "model.pt")
    return {"tiny": str(root / "tiny.yaml"), "cut_images": str(cut_images), "cut_index": str(cut_index),
            "no_labels": str(no_labels), "pa": str(root / "pa"), "pa_good": str(root / "pa_good"),
            "a_folder": str(root / "a_folder"),
            "a_file": str(root / "a_file"), **{k: str(root / k) for k in ("cut_model", "text_model", "other_model")}}


RUN = ["run", "--config", "{tiny}", "--out", "{out}"]
PA = ["run", "--out", "{out}", "--benchmark", "pa100k", "--set", "model.pretrained=false", "--set"]

CASES = {  # id: (argv, what the one line must name); each one failed differently on the old code
    **{f"buffer_size=0 ({name})": ([*RUN, "--strategy", name, "--set", "strategy.options.buffer_size=0"],
                                   "strategy.options.buffer_size") for name in REPLAY},
    "buffer_size<0": ([*RUN, "--strategy", "prs", "--set", "strategy.options.buffer_size=-5"],
                      "strategy.options.buffer_size"),
    "replay_batch_size=0": ([*RUN, "--strategy", "prs", "--set", "strategy.options.replay_batch_size=0"],
                            "strategy.options.replay_batch_size"),
    "unknown timm backbone": ([*RUN, "--set", "model.backbone=resnet1010"], "Did you mean 'resnet101'"),
    "backbone option timm refuses": ([*RUN, "--set", "model.backbone_options.foo=1"], "model.backbone_options"),
    "--set value not YAML": ([*RUN, "--set", "train.lr=[1,"], "--set train.lr="),
    "--set into a value": ([*RUN, "--set", "train=1", "--set", "train.lr=0.1"], "--set train.lr"),
    "lr inf": ([*RUN, "--set", "train.lr=inf"], "infinite and NaN"),
    "lr nan": ([*RUN, "--set", "train.lr=.nan"], "train.lr: expected a finite number"),
    "lr 0": ([*RUN, "--set", "train.lr=0"], "train.lr"),
    "lr < 0": ([*RUN, "--set", "train.lr=-1e-3"], "train.lr"),
    "head_lr 0": ([*RUN, "--set", "train.head_lr=0"], "train.head_lr"),
    "batch_size 0": ([*RUN, "--set", "train.batch_size=0"], "train.batch_size"),
    "epochs 0": ([*RUN, "--set", "train.epochs=0"], "train.epochs"),
    "grad clip 0": ([*RUN, "--set", "train.grad_clip_value=0"], "train.grad_clip_value"),
    "workers < 0": ([*RUN, "--set", "train.num_workers=-1"], "train.num_workers"),
    "weight decay < 0": ([*RUN, "--set", "train.weight_decay=-1"], "train.weight_decay"),
    "momentum < 0": ([*RUN, "--set", "train.optimizer=sgd", "--set", "train.momentum=-1"], "train.momentum"),
    "plateau factor 2": ([*RUN, "--set", "train.scheduler=plateau", "--set", "train.plateau_factor=2"],
                         "train.plateau_factor"),
    "eval batch_size 0": ([*RUN, "--set", "eval.batch_size=0"], "eval.batch_size"),
    "threshold 0": ([*RUN, "--set", "eval.threshold=0"], "eval.threshold"),
    "threshold 1.5": ([*RUN, "--set", "eval.threshold=1.5"], "eval.threshold"),
    "gamma 0": ([*RUN, "--set", "model.gamma=0"], "model.gamma"),
    "ssca_dim 0": ([*RUN, "--strategy", "finetune+ssca", "--set", "model.ssca_dim=0"], "model.ssca_dim"),
    "seed < 0": ([*RUN, "--seed", "-1"], "seed: expected"),
    "--seeds 0": ([*RUN, "--seeds", "0"], "--seeds"),
    "--seeds < 0": ([*RUN, "--seeds", "-2"], "--seeds"),
    "benchmark noise < 0": ([*RUN, "--set", "benchmark.options.noise=-1"], "benchmark.options"),
    "benchmark cache_dir empty": ([*RUN, "--set", "benchmark.options.cache_dir=''"], "benchmark.options.cache_dir"),
    "--config empty": (["run", "--config", "", "--out", "{out}"], "Config ''"),
    "--config a folder": (["run", "--config", "{a_folder}", "--out", "{out}"], "is a folder"),
    "sweep --gpus-per-run < 0": (["sweep", "--config", "{tiny}", "--out", "{out}", "--gpus-per-run", "-1"],
                                 "--gpus-per-run"),
    "sweep --max-retries < 0": (["sweep", "--config", "{tiny}", "--out", "{out}", "--executor", "ray",
                                 "--address", "127.0.0.1:1", "--max-retries", "-1"], "--max-retries"),
    "store images.npy cut": ([*PA, "benchmark.options.root={cut_images}"], "images.npy is truncated"),
    "store index.json cut": ([*PA, "benchmark.options.root={cut_index}"], "index.json is not valid JSON"),
    "store labels.npy missing": ([*PA, "benchmark.options.root={no_labels}"], "labels.npy is missing"),
    "data prepare --out a file": (["data", "prepare", "pa100k", "--root", "{pa_good}", "--out", "{a_file}"],
                                   "is a file"),
    "annotation.mat cut": (["data", "inspect", "pa100k", "--root", "{pa}"], "annotation.mat' is not a readable"),
    "angles: model.pt cut": (["angles", "{cut_model}"], "model.pt' is not a readable model file"),
    "angles: model.pt not torch": (["angles", "{text_model}"], "model.pt' is not a readable model file"),
    "angles: model.pt of another model": (["angles", "{other_model}"], "does not fit the model"),
    "leaderboard on a file": (["leaderboard", "{a_file}"], "is not a folder"),
    "leaderboard with no workers": (["leaderboard", "{out}", "--workers", "0"], "--workers must be >= 1, got 0"),
    "profile unknown backbone": (["profile", "--image-size", "64", "--set", "model.backbone=resnet1010"],
                                 "model.backbone"),
    "profile --num-labels 0": (["profile", "--image-size", "64", "--num-labels", "0"], "--num-labels"),
    "bench-loop --repeats 0": (["bench-loop", "--repeats", "0"], "--repeats"),
    "bench-loop --batch-size 0": (["bench-loop", "--batch-size", "0"], "train.batch_size"),
    "--plugins not a folder": (["--plugins", "{a_file}", "list"], "--plugins"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_creates_nothing(case, world, tmp_path, capsys):
    argv, names = CASES[case]
    out = tmp_path / "results"
    code = main([a.format(out=out, **world) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert names in err, err
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


@pytest.mark.parametrize("name", REPLAY)
def test_replay_buffer_size_none_is_the_default_and_zero_is_refused(name):
    options = STRATEGIES.get(name).options
    assert build_dataclass(options, {}).buffer_size is None
    assert build_dataclass(options, {"buffer_size": 7}).buffer_size == 7
    with pytest.raises(ConfigError, match="strategy.options.buffer_size: expected an integer >= 1"):
        build_dataclass(options, {"buffer_size": 0})


def test_a_strategies_folder_in_the_current_directory_is_never_imported(tmp_path):
    """``python -m`` puts the current folder first on sys.path: a local ``strategies/`` package must
    neither run nor hide the installed strategies, an empty ``benchmarks/`` must not hide the benchmarks."""
    (tmp_path / "strategies").mkdir()
    marker = tmp_path / "MARKER"
    (tmp_path / "strategies" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "strategies" / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "benchmarks").mkdir()
    proc = subprocess.run([sys.executable, "-m", "cml_bench", "list"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert "prs " in proc.stdout and "synth-cocoseq" in proc.stdout and "failed to import" not in proc.stdout


def test_plugins_folder_given_after_the_command(tmp_path, capsys, monkeypatch):
    from cml_bench import registry

    (tmp_path / "mine.py").write_text(
        "from dataclasses import dataclass\n"
        "from cml_bench.strategy import StrategyContext, register_strategy\n\n\n"
        "@dataclass(frozen=True)\nclass Options:\n    pass\n\n\n"
        "@register_strategy('mine', options=Options, description='a strategy from --plugins')\n"
        "def build(options: Options, ctx: StrategyContext) -> list:\n    return []\n")
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    try:
        assert main(["list", "--plugins", str(tmp_path)]) == 0
        assert "a strategy from --plugins" in capsys.readouterr().out
        assert os.environ[registry.PLUGINS_ENV] == str(tmp_path.resolve())  # sweep workers inherit it
    finally:
        STRATEGIES._entries.pop("mine", None)
        sys.modules.pop("cml_bench_plugin_mine", None)
        registry._PLUGIN_FILES.pop((tmp_path / "mine.py").resolve(), None)
