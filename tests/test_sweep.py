"""`sweep`: grid expansion, skip on re-submission, failures in the summary, Ray errors, and a real
two-node Ray cluster that loses its worker node mid-sweep."""
from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cml_bench.cli import main
from cml_bench.config import ConfigError
from cml_bench.sweep import Outcome, PlannedRun, Progress, SweepReport, expand_grid, parse_seeds, summary_text

ROOT = Path(__file__).resolve().parents[1]
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"  # the CLI of this Python's Ray
# + memory.csv for replay runs; anytime.csv because synth-cocoseq's defaults turn anytime evaluation on
RUN_FILES = {"config.yaml", "manifest.json", "metrics.csv", "summary.md", "model.pt", "scores.npz", "anytime.csv"}


def _tiny_config(tiny_layer, tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_layer))
    return path


def _run_folders(out: Path) -> list[str]:
    return sorted(f"{p.parent.name}/{p.name.split('-')[0]}" for p in out.glob("*/*/seed*"))


def test_seeds_accept_lists_and_ranges():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("3-5, 0") == [0, 3, 4, 5]
    with pytest.raises(ConfigError, match="--seeds expects integers"):
        parse_seeds("a,b")


def test_grid_is_benchmarks_x_strategies_x_seeds(tiny_layer):
    runs = expand_grid(tiny_layer, {}, strategies=["finetune", "prs+ssca"], seeds=[0, 2])
    assert [(r.config.strategy.name, r.head, r.label, r.config.seed) for r in runs] == [
        ("finetune", "pooled", "finetune", 0), ("finetune", "pooled", "finetune", 2),
        ("prs+ssca", "ssca", "prs+ssca", 0), ("prs+ssca", "ssca", "prs+ssca", 2)]
    # run --seeds N counts up from the config's seed
    assert [r.config.seed for r in expand_grid(tiny_layer, {"seed": 5}, n_seeds=2)] == [5, 6]


def test_progress_line_and_summary_name_failed_runs(tiny_layer):
    stream = io.StringIO()
    progress = Progress(total=5, skipped=1, stream=stream)
    progress.running, progress.done, progress.failed = 1, 2, 1
    progress.show()
    assert "sweep: 2/4 done, 1 running, 1 failed, 1 skipped" in stream.getvalue()
    assert "ETA" in stream.getvalue()
    (run,) = expand_grid(tiny_layer, {}, strategies=["prs"], seeds=[1])
    report = SweepReport([PlannedRun(run)], {0: Outcome(error="ConfigError: no GPU\nmore")})
    text = summary_text(report, "out")
    assert "1 failed" in text and "FAILED prs on synth-cocoseq, seed 1: ConfigError: no GPU" in text


def test_gpus_per_run_takes_fractions_of_a_gpu_and_only_on_ray(tiny_layer, tmp_path, capsys):
    from cml_bench.sweep import LocalExecutor, run_sweep

    for bad in (1.5, -0.25):
        with pytest.raises(ConfigError, match="--gpus-per-run must be a fraction of one GPU"):
            run_sweep([], tmp_path, LocalExecutor(), gpus=bad)
    for good in (0.25, 1, 2):
        assert run_sweep([], tmp_path, LocalExecutor(), gpus=good, stream=io.StringIO()).planned == []
    # locally, --workers packs runs on the device; a Ray-only flag must not be silently ignored
    assert main(["sweep", "--strategy", "finetune", "--gpus-per-run", "0.25", "--out", str(tmp_path)]) != 0
    assert "--gpus-per-run is for --executor ray" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_failed_run_is_named_with_its_error_and_the_sweep_exits_1(tiny_layer, tmp_path, capsys):
    argv = ["sweep", "--config", str(_tiny_config(tiny_layer, tmp_path)), "--out", str(tmp_path / "out"),
            "--strategy", "finetune", "--device", "cuda"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "0 finished, 0 skipped (already done), 1 failed" in out
    assert "FAILED finetune on synth-cocoseq, seed 0: Device 'cuda' requested but no CUDA GPU" in out


def test_resubmitted_sweep_skips_finished_runs(tiny_layer, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["sweep", "--config", str(_tiny_config(tiny_layer, tmp_path)), "--out", str(out),
            "--strategy", "finetune", "--seeds", "0,1"]
    assert main(argv + ["--workers", "2"]) == 0  # the local process pool
    assert "2 finished, 0 skipped" in capsys.readouterr().out
    assert _run_folders(out) == ["finetune/seed0", "finetune/seed1"]
    # a third seed added to the same command: only it runs
    assert main(argv[:-1] + ["0-2"]) == 0
    text = capsys.readouterr()
    assert "1 finished, 2 skipped (already done), 0 failed" in text.out
    assert "sweep: 1/1 done, 0 running, 0 failed, 2 skipped" in text.err
    assert _run_folders(out) == ["finetune/seed0", "finetune/seed1", "finetune/seed2"]
    assert main(["leaderboard", str(out)]) == 0
    assert "| finetune |" in capsys.readouterr().out


def test_run_resolves_its_run_once_and_sweep_rerun_runs_again(tiny_layer, tmp_path, capsys, monkeypatch):
    import cml_bench.resolved as resolved

    validated = []
    real = resolved.build_dataclass
    monkeypatch.setattr(resolved, "build_dataclass", lambda cls, values, path="": validated.append(path) or
                        real(cls, values, path))
    argv = ["--config", str(_tiny_config(tiny_layer, tmp_path)), "--out", str(tmp_path / "out"),
            "--strategy", "finetune"]
    assert main(["run", *argv]) == 0
    assert validated == ["benchmark.options", "strategy.options"]  # planning, identity and training share it
    capsys.readouterr()
    assert main(["sweep", *argv, "--rerun"]) == 0  # not "already finished": a second folder
    assert "1 finished, 0 skipped (already done), 0 failed" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("synth-cocoseq/finetune/seed0-*"))) == 2


def test_ray_executor_without_ray_says_how_to_install(tiny_layer, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    argv = ["sweep", "--config", str(_tiny_config(tiny_layer, tmp_path)), "--out", str(tmp_path),
            "--executor", "ray", "--address", "127.0.0.1:6379"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs Ray, which is not installed: pip install 'cml-bench[ray]'" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address,message", [
    (None, "No Ray cluster reachable at 127.0.0.1:{port} (Connection refused)"),
    ("head-without-port", "--address expects HOST:PORT of the Ray head"),
])
def test_ray_executor_with_a_wrong_address_fails_in_one_line(address, message, tiny_layer, tmp_path, capsys):
    pytest.importorskip("ray")
    port = _free_port()  # nothing listens there
    argv = ["sweep", "--config", str(_tiny_config(tiny_layer, tmp_path)), "--out", str(tmp_path),
            "--executor", "ray", "--address", address or f"127.0.0.1:{port}"]
    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 60  # the connection check times out quickly, not Ray's minutes
    err = capsys.readouterr().err
    assert message.format(port=port) in err and err.count("\n") == 1


# --- a real two-node Ray cluster on this machine, every process on 127.0.0.1 ------------------------


def _descendants(pids: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _pids_mentioning(*needles: str) -> set[int]:
    """Processes whose command line contains one of ``needles`` (our cluster's temp dir or port)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in text for n in needles) and int(cmdline.parent.name) != os.getpid():
            found.add(int(cmdline.parent.name))
    return found


def _kill(pids: set[int]) -> None:
    for pid in pids | _descendants(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class TwoNodeCluster:
    """``ray start --head`` plus one ``ray start --address`` worker node, both on 127.0.0.1.

    Ray rewrites 127.0.0.1 to the machine's outward address unless its cluster mode is off, and
    refuses to join a worker with it off; so the head and the driver run with it off (binding to
    127.0.0.1), and the worker joins through ``127.1`` (the same loopback address, spelled so Ray
    keeps it; gRPC's native resolver parses it). Ray 2.60 authenticates every node and client with
    a token: one random token in RAY_AUTH_TOKEN for all of them.
    """

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        base = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.local_env = {**base, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # head and driver
        self.worker_env = {**base, "GRPC_DNS_RESOLVER": "native"}
        self.address = f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], env: dict) -> None:
        small = ["--num-cpus", "1", "--object-store-memory", str(80 * 2**20), "--disable-usage-stats"]
        proc = subprocess.run([RAY, "start", *args, *small], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def start(self) -> None:
        self._start(["--head", "--port", str(self.port), "--include-dashboard", "false",
                     "--ray-client-server-port", str(_free_port()), "--temp-dir", str(self.root / "h")],
                    self.local_env)
        self._start(["--address", f"127.1:{self.port}", "--temp-dir", str(self.root / "w")], self.worker_env)

    def worker_raylet(self) -> int:
        (pid,) = [p for p in _pids_mentioning(str(self.root / "w"))
                  if Path(f"/proc/{p}/comm").read_text().strip() == "raylet"]
        return pid

    def kill_worker_node(self) -> None:
        """The worker node dies: its raylet, the runs it hosts and its other processes, at once."""
        _kill(_pids_mentioning(str(self.root / "w")))

    def stop(self) -> None:
        _kill(_pids_mentioning(str(self.root), f"127.0.0.1:{self.port}", f"127.1:{self.port}"))


@pytest.fixture
def ray_cluster():
    pytest.importorskip("ray")
    if not Path(RAY).is_file():
        pytest.skip("the `ray` command is not installed beside this Python")
    root = Path(tempfile.mkdtemp(prefix="cmlray", dir="/tmp"))  # short: Ray's socket paths are limited
    cluster = TwoNodeCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _pid_of_staging(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])  # .partial-seed<k>-<stamp>-<pid>


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_ray_sweep_survives_losing_a_worker_node(ray_cluster, tiny_layer, tmp_path):
    config = _tiny_config(tiny_layer, tmp_path)
    grid = ["--config", str(config), "--strategy", "finetune,prs", "--seeds", "0,1"]
    sweep = [sys.executable, "-m", "cml_bench", "sweep", *grid]

    start = time.monotonic()
    local = subprocess.run(sweep + ["--out", str(tmp_path / "local")], env=ray_cluster.local_env,
                           capture_output=True, text=True, timeout=900)
    local_s = time.monotonic() - start
    assert local.returncode == 0, local.stderr

    out = tmp_path / "ray"
    start = time.monotonic()
    driver = subprocess.Popen(sweep + ["--out", str(out), "--executor", "ray", "--address", ray_cluster.address],
                              env=ray_cluster.local_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        raylet = ray_cluster.worker_raylet()
        victim = None
        deadline = time.monotonic() + 600
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            for marker in out.glob("synth-cocoseq/*/.partial-*/checkpoint.json"):
                try:  # a run on the worker node that has checkpointed a task
                    if (marker.parent / "checkpoint.pt").is_file() and \
                            _parent(_pid_of_staging(marker.parent)) == raylet:
                        victim = marker.parent
                except (OSError, ValueError):
                    continue
            time.sleep(0.05)
        assert victim is not None, "no run checkpointed on the worker node before the sweep ended"
        ray_cluster.kill_worker_node()
        stdout, stderr = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
    ray_s = time.monotonic() - start
    print(f"\nwall time of the 4-run grid: local sweep {local_s:.0f} s, Ray sweep (2 nodes, 1 killed) {ray_s:.0f} s")

    assert driver.returncode == 0, stdout + stderr
    assert "4 finished, 0 skipped (already done), 0 failed" in stdout
    victim_name = f"{victim.parent.name} on synth-cocoseq, seed {victim.name.split('-')[1][4:]}"
    assert "Resumed from a checkpoint: " in stdout and victim_name in stdout
    # every run exactly once, complete, and nothing half-written left behind
    expected = ["finetune/seed0", "finetune/seed1", "prs/seed0", "prs/seed1"]
    assert _run_folders(out) == _run_folders(tmp_path / "local") == expected
    for run in out.glob("*/*/seed*"):
        assert {p.name for p in run.iterdir()} - {"memory.csv"} == RUN_FILES
    assert not list(out.glob("*/*/.partial-*"))
    # the same numbers as the local sweep: every run's metrics, and the leaderboard over the folder
    for run in out.glob("*/*/seed*"):
        (twin,) = (tmp_path / "local" / run.parent.relative_to(out)).glob(run.name.split("-")[0] + "-*")
        pd.testing.assert_frame_equal(pd.read_csv(run / "metrics.csv"), pd.read_csv(twin / "metrics.csv"))
    for folder in (out, tmp_path / "local"):
        assert main(["leaderboard", str(folder)]) == 0
    boards = [pd.read_csv(f / "leaderboard.csv").drop(columns="run") for f in (out, tmp_path / "local")]
    pd.testing.assert_frame_equal(*boards)
