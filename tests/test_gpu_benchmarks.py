"""The two GPU scripts (stream throughput, campaign packing) run end to end, on the CPU at tiny scale.

They are meant for a GPU machine, where device time is scarce: these tests make sure a prepared
command does not die there on something a CPU could have caught. Figures are not checked (speed
targets are read from the scripts' output, never asserted in tests).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--scale", "0.005", "--size", "32", "--set", "model.backbone=resnet10t",
        "--set", "model.feature_level=3", "--set", "model.stem_pool=false", "--set", "eval.batch_size=64"]


def _run(module: str, *args: str, timeout: float = 900) -> str:
    """``python -m benches.<module> ARGS`` from the repository root, as the README runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", f"benches.{module}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_stream_benchmark_finishes_every_task_and_reports_the_share_outside_the_model(tmp_path):
    store = tmp_path / "store"
    first = _run("bench_gpu_stream", "--build-store-only", "--store", str(store), *TINY)
    assert "written in" in first and (store / "index.json").is_file()
    out = _run("bench_gpu_stream", "--store", str(store), "--out", str(tmp_path / "runs"),
               "--precision", "bf16", "--channels-last", *TINY)
    assert "(reused)" in out  # the store is built once, before the GPU's time starts
    for task in range(4):
        assert f"  task {task}: " in out and f"after task {task}: mAP" in out
    row = next(line for line in out.splitlines() if line.startswith("| prs+ssca |"))
    outside = float(row.split("|")[4].strip().rstrip("%"))
    assert 0.0 <= outside < 100.0
    config = next((tmp_path / "runs").rglob("config.yaml")).read_text()
    assert "precision: bf16" in config and "channels_last: true" in config


@pytest.mark.slow
def test_campaign_benchmark_packs_runs_on_one_device_and_prints_a_table(tmp_path):
    out = _run("bench_gpu_campaign", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "camp"),
               "--levels", "1,2", "--window-s", "2", "--startup-s", "600", "--cpus-per-run", "1", *TINY)
    assert "| runs per GPU |" in out and "best packing:" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2
    (campaign,) = (tmp_path / "camp").iterdir()
    for level in (1, 2):  # every packed run trained (its progress file), each in its own process
        files = sorted((campaign / f"level{level}").glob("seed*.jsonl"))
        assert [f.stem for f in files] == [f"seed{s}" for s in range(level)]
        assert all(json.loads(f.read_text().splitlines()[-1])["images"] > 0 for f in files)
        assert f"{level}/{level} runs training" in out
