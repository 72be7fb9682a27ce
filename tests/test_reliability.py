"""Results a lab can trust: what a results folder may hold (no code runs from it), when a run counts
as done (same config, same data, intact metrics), locks, write order, and faults in one line."""
from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import cml_bench.checkpoint as ckpt
import cml_bench.runner as runner
from cml_bench import leaderboard as lb
from cml_bench.cli import main
from cml_bench.resolved import run_identity
from cml_bench.results import find_finished, find_partial, finish_run, start_run
from cml_bench.runner import resolve_config, strategy_label

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


class Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing catches it on the way out."""


def _killed_after_task0(config, out: Path, monkeypatch) -> Path:
    """Run ``config`` into ``out`` and stop it right after its first checkpoint; the partial folder."""
    real = runner.save_checkpoint

    def save_then_die(folder, task, *args, **kwargs):
        real(folder, task, *args, **kwargs)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(runner, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            runner.run(config, out, log=lambda *a: None)
    (partial,) = out.glob(f"{config.benchmark.name}/{strategy_label(config)}/.partial-*")
    assert (partial / "checkpoint.pt").is_file()
    return partial


def _argv(tiny_layer, tmp_path, out, strategy="finetune", *extra) -> list[str]:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_layer))
    return ["run", "--config", str(config), "--out", str(out), "--strategy", strategy, *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- 1. no code from a results folder


class Planted:
    """A pickle that writes a marker file when unpickled: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "code ran"))


def test_planted_pickle_checkpoint_is_refused_and_never_run(tiny_layer, tmp_path, capsys):
    out, marker = tmp_path / "out", tmp_path / "marker"
    config = resolve_config(tiny_layer, {"strategy": {"name": "finetune"}})
    partial = start_run(out, config, "finetune")
    torch.save({"task": 0, "evil": Planted(marker)}, partial / "checkpoint.pt")
    identity = run_identity(config, torch.get_num_threads())
    (partial / "checkpoint.json").write_text(json.dumps({"completed_task": 0, "identity": identity}))

    assert main(_argv(tiny_layer, tmp_path, out, "finetune", "--resume")) == 2
    err = _one_line_error(capsys)
    assert not marker.exists()  # nothing in the file ran
    assert f"Refused to load {partial / 'checkpoint.pt'}" in err and "nothing in it was run" in err
    assert not partial.exists() and list(partial.parent.glob(".damaged-*"))  # set aside, kept
    assert find_partial(out, config, "finetune") is None  # the next run starts afresh


def _same(a, b) -> bool:
    """Exact equality of nested checkpoint states: types, dtypes and bits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, float) and np.isnan(a):
        return np.isnan(b)
    if type(a).__name__ == "ParamData":
        return a.name == b.name and a.shape == b.shape and a.device == b.device and torch.equal(a.data, b.data)
    return bool(a == b)


@pytest.mark.parametrize("strategy", ["ewc", "prs", "gss", "exstream", "ocdm+ssca"])
def test_checkpoint_holds_only_data_and_restores_every_plugin_exactly(strategy, tiny_layer, tmp_path, monkeypatch):
    """Each strategy's full state (buffer, memory, EWC importances, RNGs, evaluator) survives a
    weights-only save and load bit for bit (the end-to-end resume test: tests/test_resume.py)."""
    config = resolve_config(tiny_layer, {"strategy": {"name": strategy}})
    captured = {}
    real = ckpt.torch.save

    def save(obj, path, *args, **kwargs):
        captured["plain"] = obj
        real(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save)
    partial = _killed_after_task0(config, tmp_path / "out", monkeypatch)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(partial / "checkpoint.pt") == []
    loaded = ckpt.load_checkpoint(partial)
    before = ckpt.from_plain({k: v for k, v in captured["plain"].items() if k not in ("model", "optimizer")})
    assert _same({**before, "model": captured["plain"]["model"], "optimizer": captured["plain"]["optimizer"]},
                 loaded)


# ---------------------------------------------------------------- 2. never mix configurations


def _finished_run(root: Path, config, rows: list[list], stamp: str, identity=None) -> Path:
    """A run folder written by the real writer (start_run + finish_run), with the given final rows."""
    staging = start_run(root, config, strategy_label(config))
    staging = staging.rename(staging.with_name(f".partial-seed{config.seed}-{stamp}-1"))
    frame = [dict(zip(["benchmark", "strategy", "seed", "trained_through_task", "eval_on", "group", "metric",
                       "value"], r)) for r in rows]
    info = {"seed": config.seed, "identity": identity or run_identity(config, 1)}
    return finish_run(staging, config, frame, info)


def _rows(config, value: float, tasks: int = 4) -> list[list]:
    label = strategy_label(config)
    rows = []
    for t in range(tasks):
        rows += [[config.benchmark.name, label, config.seed, t, "seen", g, m, value + t]
                 for g in ("majority", "moderate", "minority", "all") for m in ("CF1", "OF1", "mAP")]
        rows += [[config.benchmark.name, label, config.seed, t, f"task{j}", "all", "mAP", value] for j in range(t + 1)]
    return rows


def test_leaderboard_keeps_configs_apart_and_names_what_differs(tiny_layer, tmp_path):
    root = tmp_path / "results"
    slow = [resolve_config(tiny_layer, {"strategy": {"name": "prs"}, "seed": s}) for s in (0, 1)]
    fast = [resolve_config(tiny_layer, {"strategy": {"name": "prs"}, "train": {"lr": 1e-2}, "seed": s})
            for s in (0, 1)]
    for k, config in enumerate(slow):
        _finished_run(root, config, _rows(config, 10.0 + k), f"20260101-00000{k}")
    for k, config in enumerate(fast):  # newer runs of the same seeds, another lr: they replace nothing
        _finished_run(root, config, _rows(config, 50.0 + k), f"20260102-00000{k}")
    md = lb.write_leaderboard(root)
    table = lb.final_table(lb.load_results(root))
    labels = sorted(table.index.get_level_values("strategy"))
    assert len(labels) == 2 and all(re.match(r"^prs \[[0-9a-f]{6}\]$", s) for s in labels)
    means = sorted(table[("all", "mAP", "mean")].tolist())
    assert means == [pytest.approx(13.5), pytest.approx(53.5)]  # each over its own 2 seeds, never 33.5
    assert (table[("all", "mAP", "n")] == 2).all()
    assert "runs of 2 configurations, never averaged together" in md and "train.lr=0.01" in md
    assert "train.lr=0.0005" in md and "Ignored" not in md
    board = pd.read_csv(root / "leaderboard.csv")
    assert board.loc[board.row == "mean", "config"].nunique() == 2
    # the skip logic shares the key: one experiment per (config without seed/device, data)
    from cml_bench.identity import experiment_key

    assert experiment_key(slow[0].to_dict()) == experiment_key(slow[1].to_dict())
    assert experiment_key(slow[0].to_dict()) != experiment_key(fast[0].to_dict())


# ---------------------------------------------------------------- 3. "done" includes the data


def test_rebuilt_store_is_not_already_done(tmp_path, capsys):
    from test_cocoseq import make_tree

    from benchmarks import cocoseq

    coco, splits = make_tree(tmp_path / "src")
    store = tmp_path / "store"
    cocoseq.prepare(coco, splits, store, size=32)
    layer = {"benchmark": {"name": "cocoseq", "options": {"root": str(store)}},
             "model": {"backbone": "resnet10t", "pretrained": False, "feature_level": 3, "stem_pool": False},
             "eval": {"batch_size": 50}}
    config_file = tmp_path / "store.yaml"
    config_file.write_text(yaml.safe_dump(layer))
    argv = ["run", "--config", str(config_file), "--out", str(tmp_path / "out"), "--strategy", "finetune"]
    assert main(argv) == 0
    assert main(argv) == 0
    assert "already done with this config, skipped" in capsys.readouterr().out
    cocoseq.prepare(coco, splits, store, size=40, force=True)  # rebuilt: other size, same path
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "skipped" not in text and "was made with other data: not counted as done" in text
    assert len(list((tmp_path / "out" / "cocoseq" / "finetune").glob("seed0-*"))) == 2
    (run,) = [p for p in (tmp_path / "out" / "cocoseq" / "finetune").glob("seed0-*")
              if json.loads((p / "manifest.json").read_text())["data"]["image_size"] == 40]
    assert json.loads((run / "manifest.json").read_text())["identity"]["data"].startswith("store ")


def test_thread_count_and_weights_file_are_part_of_the_identity(tiny_layer, tmp_path):
    config = resolve_config(tiny_layer)
    assert run_identity(config, 1) != run_identity(config, 2)  # on a CPU
    assert run_identity(config, 1)["data"] == "synth-cocoseq generator 1"
    weights = tmp_path / "backbone.bin"
    weights.write_bytes(b"first weights")
    config = resolve_config(tiny_layer, {"model": {"pretrained": True, "weights": None, "weights_path": str(weights)}})
    before = run_identity(config, 1)["weights"]
    weights.write_bytes(b"other weights, same path")
    assert before.startswith("sha256:") and run_identity(config, 1)["weights"] != before


def test_manifest_names_the_cpu_kernels_that_ran(tiny_layer):
    """Same seed and threads, other CPU kernels (AVX2 / AVX-512): other floats; the manifest says which ran."""
    import torch

    from cml_bench.results import manifest
    info = manifest(resolve_config(tiny_layer), 1.0)
    assert info["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["cpu"]["model"] and info["torch_threads"] == torch.get_num_threads()


# ---------------------------------------------------------------- 4. a cut metrics.csv is not finished


def test_cut_metrics_csv_is_damaged_left_out_and_not_done(tiny_layer, tmp_path, capsys):
    root = tmp_path / "results"
    configs = [resolve_config(tiny_layer, {"strategy": {"name": "prs"}, "seed": s}) for s in (0, 1)]
    runs = [_finished_run(root, c, _rows(c, 10.0), f"20260101-00000{c.seed}") for c in configs]
    lines = (runs[1] / "metrics.csv").read_text().splitlines(keepends=True)
    kept = 1 + sum(12 + t + 1 for t in range(3))  # the header and tasks 0-2: cut at a line boundary
    (runs[1] / "metrics.csv").write_text("".join(lines[:kept]))
    md = lb.write_leaderboard(root)
    assert "Left out 1 damaged run(s)" in md and f"{kept - 1} of {len(lines) - 1} rows" in md and runs[1].name in md
    from cml_bench.results import check_run

    assert check_run(runs[1]).status == "damaged"
    table = lb.final_table(lb.load_runs(root).frame)
    assert table[("all", "mAP", "n")].tolist() == [1] and table[("all", "mAP", "mean")].tolist() == [13.0]
    notes: list[str] = []
    assert find_finished(root, configs[1], "prs", run_identity(configs[1], 1), notes) is None
    assert "is damaged" in notes[0]
    with pytest.raises(ValueError, match="does not match its manifest"):
        lb.load_results(root)  # the strict loader names it


# ---------------------------------------------------------------- 5-7. write order, partials, locks


def test_kill_between_rename_and_cleanup_leaves_a_finished_run(tiny_layer, tmp_path, monkeypatch):
    config = resolve_config(tiny_layer, {"strategy": {"name": "finetune"}})
    out = tmp_path / "out"
    real_unlink = pathlib.Path.unlink

    def unlink(self, *args, **kwargs):
        if self.name == "checkpoint.pt":
            raise Killed  # the process dies while removing the checkpoint
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    with pytest.raises(Killed):
        runner.run(config, out, log=lambda *a: None)
    monkeypatch.undo()
    (final,) = out.glob("synth-cocoseq/finetune/seed0-*")  # the results are in place, not stranded
    from cml_bench.results import check_run

    assert check_run(final).status == "finished"
    assert find_finished(out, config, "finetune") == final


def test_same_command_after_a_kill_continues_and_cleans_up(tiny_layer, tmp_path, monkeypatch, capsys):
    config = resolve_config(tiny_layer, {"strategy": {"name": "prs"}})
    out = tmp_path / "out"
    partial = _killed_after_task0(config, out, monkeypatch)
    stale = partial.with_name(".partial-seed0-20200101-000000-1")  # an older attempt that never checkpointed
    stale.mkdir()
    shutil.copy(partial / "config.yaml", stale / "config.yaml")
    assert main(_argv(tiny_layer, tmp_path, out, "prs")) == 0  # no --resume
    text = capsys.readouterr().out
    assert f"resuming after task 0 from {partial}" in text
    assert not list(out.glob("synth-cocoseq/prs/.partial-*"))  # superseded partials removed
    assert len(list(out.glob("synth-cocoseq/prs/seed0-*"))) == 1


def test_a_live_run_cannot_be_resumed_into_and_a_dead_ones_lock_is_taken_over(tiny_layer, tmp_path, capsys):
    config = resolve_config(tiny_layer, {"strategy": {"name": "finetune"}})
    out = tmp_path / "out"
    partial = start_run(out, config, "finetune")
    (partial / "checkpoint.pt").write_bytes(b"not needed: the lock is checked first")
    identity = run_identity(config, torch.get_num_threads())
    (partial / "checkpoint.json").write_text(json.dumps({"completed_task": 0, "identity": identity}))
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (partial / ".lock").write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname()}))
        assert main(_argv(tiny_layer, tmp_path, out, "finetune", "--resume")) == 2
        err = _one_line_error(capsys)
        assert f"{partial} is in use by a live run (pid {owner.pid} on {socket.gethostname()}" in err
        assert (partial / "checkpoint.pt").exists()  # untouched
    finally:
        owner.kill()
        owner.wait()
    from cml_bench.results import RunLock

    lock = RunLock(partial).acquire()  # its owner is gone: stale, taken over
    assert json.loads((partial / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (partial / ".lock").exists()


@pytest.mark.slow
def test_killed_sweep_driver_takes_its_workers_with_it(tiny_layer, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_layer))
    driver = subprocess.Popen([sys.executable, "-m", "cml_bench", "sweep", "--config", str(config), "--out",
                               str(tmp_path / "out"), "--strategy", "finetune", "--seeds", "0,1", "--workers", "2"],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def children(pid: int) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((tmp_path / "out").glob("synth-cocoseq/*/.partial-*")):
            time.sleep(0.1)  # a worker has started a run
        workers = children(driver.pid)
        assert workers, "the sweep started no worker processes"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10  # the kernel signals them at once; the watch thread within 1 s
        while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() and
                                                  "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
                                                  for w in workers if Path(f"/proc/{w}/stat").exists()):
            time.sleep(0.2)
        alive = [w for w in workers if Path(f"/proc/{w}/stat").exists()
                 and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        assert not alive, f"worker processes {alive} outlived their killed driver"
    finally:
        if driver.poll() is None:
            driver.kill()


# ---------------------------------------------------------------- 9. faults end in one line


def test_full_disk_while_checkpointing_says_so_and_removes_the_temporary_file(tiny_layer, tmp_path, monkeypatch,
                                                                                capsys):
    real = ckpt.torch.save

    def full(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)  # half the space taken, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    out = tmp_path / "out"
    assert main(_argv(tiny_layer, tmp_path, out, "finetune")) == 2
    err = _one_line_error(capsys)
    assert "No space left on the device of" in err and "temporary file was removed" in err
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("checkpoint.pt"))


def test_truncated_checkpoint_is_damaged_and_the_next_attempt_starts_afresh(tiny_layer, tmp_path, monkeypatch):
    from cml_bench.sweep import run_one

    config = resolve_config(tiny_layer, {"strategy": {"name": "finetune"}})
    out = tmp_path / "out"
    partial = _killed_after_task0(config, out, monkeypatch)
    blob = (partial / "checkpoint.pt").read_bytes()
    (partial / "checkpoint.pt").write_bytes(blob[: len(blob) // 2])
    threads = torch.get_num_threads()
    first = run_one(config, str(out), threads)
    assert first.error is not None and "\n" not in first.error
    assert f"Checkpoint {partial / 'checkpoint.pt'} is damaged (truncated" in first.error
    assert "the same command now starts this run from task 0" in first.error
    second = run_one(config, str(out), threads)  # submitting again works: no endless resubmission
    from cml_bench.results import check_run

    assert second.error is None and check_run(Path(second.path)).status == "finished"


def test_out_that_is_a_file_or_read_only_is_one_line(tiny_layer, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    assert main(_argv(tiny_layer, tmp_path, blocker)) == 2
    assert f"--out {blocker} is a file, not a folder" in _one_line_error(capsys)

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    assert main(_argv(tiny_layer, tmp_path, tmp_path / "ro")) == 2
    assert "(read-only file system): choose a writable --out" in _one_line_error(capsys)
