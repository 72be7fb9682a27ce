"""Checkpoints at task boundaries: a run killed mid-stream resumes and ends with identical metrics."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

# One thread and no warnings in both processes, so the two runs compute bit-identically.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cmd(strategy, config, out, *extra):
    return [sys.executable, "-m", "cml_bench", "run", "--strategy", strategy, "--config", str(config),
            "--out", str(out), "--seed", "3", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["prs+ssca", "ewc", "gss+ssca"])  # ours; Avalanche's; a keyed buffer
def test_resume_after_kill_matches_uninterrupted_run(strategy, tiny_layer, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_layer))
    reference = subprocess.run(_cmd(strategy, config, tmp_path / "ref"), env=ENV, capture_output=True, text=True,
                               timeout=600)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(strategy, config, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = None
    deadline = time.monotonic() + 300
    while marker is None and time.monotonic() < deadline and proc.poll() is None:
        found = list(out.glob(f"synth-cocoseq/{strategy}/.partial-*/checkpoint.json"))
        if found and (found[0].parent / "checkpoint.pt").is_file():
            marker = found[0]
        time.sleep(0.02)
    assert marker is not None, "the run finished or failed before writing a checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    completed = json.loads(marker.read_text())["completed_task"]
    assert completed < 3
    assert not list(out.glob(f"synth-cocoseq/{strategy}/seed3-*"))  # nothing looks finished

    resumed = subprocess.run(_cmd(strategy, config, out, "--resume"), env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after task {completed}" in resumed.stdout
    (ref_run,) = (tmp_path / "ref").glob(f"synth-cocoseq/{strategy}/seed3-*")
    (new_run,) = out.glob(f"synth-cocoseq/{strategy}/seed3-*")
    pd.testing.assert_frame_equal(pd.read_csv(ref_run / "metrics.csv"), pd.read_csv(new_run / "metrics.csv"))
    assert not (new_run / "checkpoint.pt").exists()
    assert not list(out.glob(f"synth-cocoseq/{strategy}/.partial-*"))
