"""The command line: help, list, one-line errors, and the end-to-end run workflow."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from cml_bench.cli import main
from cml_bench.results import CSV_COLUMNS


def test_help_explains_the_platform(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "run" in out and "list" in out and "+ssca" in out


def test_list_shows_strategies_heads_benchmarks(capsys):
    assert main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    for name in ("finetune", "ewc", "reservoir", "prs", "multitask", "synth-cocoseq", "ssca", "cos"):
        assert name in out
    assert "ewc_lambda = 100.0" in out


@pytest.mark.parametrize("argv,message", [
    (["run", "--strategy", "prs_reservior"], "Unknown strategy 'prs_reservior'"),
    (["run", "--benchmark", "cocoseqq"], "Unknown benchmark 'cocoseqq'"),
    (["run", "--strategy", "prs+sca"], "Unknown head suffix"),
    (["run", "--set", "train.lrr=1"], "Unknown config key 'train.lrr'"),
    (["run", "--set", "oops"], "--set expects KEY=VALUE"),
    (["run", "--config", "/nonexistent.yaml"], "does not exist"),
    (["run", "--device", "cuda:7" if not __import__("torch").cuda.is_available() else "nope"], "evice"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_run_end_to_end_writes_results(tiny_layer, tmp_path):
    """The README's main workflow at tiny scale, in a subprocess like a user would run it."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_layer))
    cmd = [sys.executable, "-m", "cml_bench", "run", "--strategy", "prs+ssca", "--config", str(config),
           "--out", str(tmp_path / "results"), "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    assert "| overall |" in proc.stdout and "| minority |" in proc.stdout
    runs = list((tmp_path / "results" / "synth-cocoseq" / "prs+ssca").glob("seed1-*"))
    assert len(runs) == 1
    frame = pd.read_csv(runs[0] / "metrics.csv")
    assert list(frame.columns) == CSV_COLUMNS
    assert set(frame.eval_on) >= {"task0", "task3", "seen"}
    assert set(frame.group) == {"all", "majority", "moderate", "minority"}
    assert frame.value.between(-100, 100).all()
    resolved = yaml.safe_load((runs[0] / "config.yaml").read_text())
    assert resolved["model"]["head"] == "ssca" and resolved["seed"] == 1
    manifest = yaml.safe_load((runs[0] / "manifest.json").read_text())
    assert manifest["seed"] == 1 and manifest["wall_time_s"] > 0 and "torch" in manifest["versions"]
    # the same command again skips the finished run; --rerun makes a second folder, never overwriting
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "already done with this config, skipped" in proc.stdout
    assert len(list((tmp_path / "results" / "synth-cocoseq" / "prs+ssca").glob("seed1-*"))) == 1
    proc = subprocess.run(cmd + ["--rerun"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0
    assert len(list((tmp_path / "results" / "synth-cocoseq" / "prs+ssca").glob("seed1-*"))) == 2


def test_angles_command_on_a_finished_run(tiny_layer, tmp_path, capsys):
    from cml_bench.runner import resolve_config, run

    config = resolve_config(tiny_layer, {"strategy": {"name": "finetune+ssca"}})
    result = run(config, tmp_path, log=lambda *_: None)
    assert main(["angles", str(result.path), "--max-samples", "20"]) == 0
    assert "median angle: positives" in capsys.readouterr().out
    frame = pd.read_csv(result.path / "angles.csv")
    assert len(frame) == 20 * 70 and frame.angle_deg.between(0, 180).all()
    assert (result.path / "angles.png").stat().st_size > 10_000
    assert (result.path / "angles_summary.csv").is_file()


def test_angles_command_rejects_a_non_run_folder(tmp_path, capsys):
    assert main(["angles", str(tmp_path)]) == 2
    assert "is not a finished run folder: config.yaml is missing" in capsys.readouterr().err


def test_seeds_and_strategy_lists_skip_finished_runs(tiny_layer, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_layer))
    argv = ["run", "--config", str(config), "--out", str(tmp_path), "--strategy", "finetune,finetune+cos",
            "--seeds", "2"]
    assert main(argv) == 0
    runs = sorted(p.parent.name + "/" + p.name.split("-")[0] for p in tmp_path.glob("synth-cocoseq/*/seed*"))
    assert runs == ["finetune+cos/seed0", "finetune+cos/seed1", "finetune/seed0", "finetune/seed1"]
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already done with this config, skipped") == 4
    assert len(list(tmp_path.glob("synth-cocoseq/*/seed*"))) == 4


def test_same_seed_gives_identical_metrics(tiny_layer, tmp_path):
    from cml_bench.runner import resolve_config, run

    config = resolve_config(tiny_layer, {"strategy": {"name": "prs+ssca"}, "seed": 4})
    first = run(config, tmp_path / "a", log=lambda *_: None)
    second = run(config, tmp_path / "b", log=lambda *_: None)
    assert first.rows == second.rows
    other = run(resolve_config(tiny_layer, {"strategy": {"name": "prs+ssca"}, "seed": 5}), tmp_path / "c",
                log=lambda *_: None)
    assert [r["value"] for r in other.rows] != [r["value"] for r in first.rows]


def test_bench_loop_prints_both_throughputs_and_ratio(tiny_layer, capsys):
    options = tiny_layer["benchmark"]["options"]
    sets = [f"--set=benchmark.options.{k}={v}" for k, v in options.items()]
    assert main(["bench-loop", "--repeats", "1", *sets]) == 0
    out = capsys.readouterr().out
    assert "cml_bench loop:" in out and "bare PyTorch loop:" in out and "ratio cml_bench / bare:" in out


@pytest.mark.parametrize("train", [{}, {"precision": "bf16", "channels_last": True}])
def test_bench_loops_bare_loop_does_the_platforms_work(tiny_layer, train):
    """The bare loop is a fair baseline only if it computes what the template computes: same data
    order, precision and memory layout give the same weights after one task."""
    import torch

    from cml_bench.loop_bench import bare_loop
    from cml_bench.models import build_model
    from cml_bench.runner import build_benchmark, resolve_config, seed_everything
    from cml_bench.training import MultiLabelTemplate

    config = resolve_config(tiny_layer, {"strategy": {"name": "finetune"}, "train": train})
    benchmark = build_benchmark(config)
    experience = benchmark.train_stream[0]
    trained = []
    for loop in ("template", "bare"):
        seed_everything(config.seed)
        model = build_model(config.model, benchmark.meta.num_classes)
        if loop == "template":
            MultiLabelTemplate(model=model, cfg=config.train, device=torch.device("cpu"),
                               seed=config.seed).train(experience)
        else:
            bare_loop(model, experience.dataset, config, config.seed)
        trained.append(model.state_dict())
    assert trained[0].keys() == trained[1].keys()
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
