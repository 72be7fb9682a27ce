"""Sweeps: a grid of runs (benchmarks x strategies x seeds) executed here or on a Ray cluster.

The grid is expanded and fully resolved before anything trains (a typo fails at once); runs whose
finished folder with the same resolved config exists are skipped, so a sweep can be re-submitted
after any failure. Every run goes through :func:`run_one`, whichever executor runs it:

- ``local``: one run after another in this process, or ``workers`` at a time in a small process pool;
- ``ray``: each run a Ray task holding its CPU / GPU request, retried when its worker or node dies.

Run folders are written atomically by :mod:`cml_bench.results` (hidden ``.partial-*`` folder, then a
rename), and :func:`run_one` always resumes a run of the same config from its last task-boundary
checkpoint, so a retried or re-submitted run continues where the dead one stopped. Each run's torch
thread count is its CPU request in every executor, so a grid gives the same metrics locally and on Ray.
"""
from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TextIO

from cml_bench.config import ConfigError, RunConfig, merge

RAY_INSTALL_HINT = "pip install 'cml-bench[ray]' (or: pip install ray) on the driver and on every node"


def parse_list(text: str | None) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``None`` -> ``[]``."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix -> sorted unique seeds."""
    seeds: set[int] = set()
    for item in parse_list(text):
        lo, dash, hi = item.partition("-")
        try:
            seeds.update(range(int(lo), int(hi) + 1) if dash else [int(item)])
        except ValueError:
            raise ConfigError(f"--seeds expects integers or ranges like 0,1,2 or 0-4, got '{item}'.") from None
    if not seeds:
        raise ConfigError("--seeds is empty: give seeds like 0,1,2 or 0-4.")
    return sorted(seeds)


def expand_grid(file_layer: Mapping[str, Any], cli_layer: Mapping[str, Any], strategies: Sequence[str] = (),
                benchmarks: Sequence[str] = (), seeds: Sequence[int] | None = None,
                n_seeds: int = 1) -> list[RunConfig]:
    """Resolve every (benchmark, strategy, seed) of a grid, in that nesting order.

    Empty ``strategies`` / ``benchmarks`` mean the one the layers name. ``seeds`` lists the seeds;
    without it, ``n_seeds`` seeds counting up from the resolved config's seed (``run --seeds N``).
    """
    from cml_bench.runner import resolve_config

    configs = []
    for bench in benchmarks or [None]:
        for name in strategies or [None]:
            layer = dict(cli_layer)
            if bench:
                layer = merge(layer, {"benchmark": {"name": bench}})
            if name:
                layer = merge(layer, {"strategy": {"name": name}})
            base = resolve_config(file_layer, layer)
            for seed in seeds if seeds is not None else [base.seed + k for k in range(n_seeds)]:
                configs.append(resolve_config(file_layer, layer, {"seed": seed}))
    return configs


@dataclass
class PlannedRun:
    """One run of a grid: its config and, when it already finished, its folder."""

    config: RunConfig
    label: str
    done: Path | None = None

    @property
    def name(self) -> str:
        return f"{self.label} on {self.config.benchmark.name}, seed {self.config.seed}"


def plan_runs(configs: Sequence[RunConfig], out: str | Path, rerun: bool = False, threads: int | None = None,
              log: Callable[[str], None] | None = None) -> list[PlannedRun]:
    """Pair each config with its finished run under ``out`` (none when ``rerun``).

    A run is done only on the same data, weights and (on a CPU) ``threads`` (default: this
    process's torch thread count); see :mod:`cml_bench.identity`. Finished runs that do not count
    (damaged, other data) are reported through ``log``, one line each.
    """
    import torch

    from cml_bench.identity import run_identity
    from cml_bench.results import find_finished
    from cml_bench.runner import strategy_label

    threads = threads if threads is not None else torch.get_num_threads()
    planned = []
    for config in configs:
        label = strategy_label(config)
        notes: list[str] = []
        done = None if rerun else find_finished(out, config, label, run_identity(config, threads), notes)
        for note in notes:
            (log or print)(f"{label} on {config.benchmark.name}, seed {config.seed}: {note}")
        planned.append(PlannedRun(config, label, done))
    return planned


def first_line(err: BaseException) -> str:
    """The first line of an error, named by its type unless it is a user error with its own message."""
    lines = str(err).strip().splitlines()
    line = lines[0] if lines else ""
    if isinstance(err, (ValueError, FileNotFoundError)) and line:
        return line
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


@dataclass
class Outcome:
    """What a run came to: its folder, or the first line of its error."""

    path: str | None = None
    error: str | None = None
    wall_time_s: float = 0.0
    note: str = ""  # "resumed" / "already finished" for the driver's summary


def run_one(config: RunConfig, out: str, cpus: int, log: Callable[..., None] | None = None) -> Outcome:
    """Run ``config`` into ``out`` with ``cpus`` torch threads; never raises for a failed run.

    A finished run of the same config (one a dead attempt completed before its result came back)
    is returned instead of training again; an unfinished one with a checkpoint is resumed.
    """
    import torch

    from cml_bench.identity import run_identity
    from cml_bench.results import STALE_AFTER_S, find_finished, find_partial
    from cml_bench.runner import run, strategy_label

    start = time.perf_counter()
    label = strategy_label(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cpus)))
    try:
        identity = run_identity(config, torch.get_num_threads())
        done = find_finished(out, config, label, identity)
        if done is not None:
            return Outcome(str(done), note="already finished")
        note = "resumed" if find_partial(out, config, label, identity) is not None else ""
        # a retry of a run whose node died waits for the dead node's lock to go stale
        result = run(config, out, log=log or (lambda *_: None), resume=True, lock_wait_s=STALE_AFTER_S + 30)
        return Outcome(str(result.path), wall_time_s=time.perf_counter() - start, note=note)
    except Exception as err:  # noqa: BLE001 - reported by the driver, the sweep goes on
        return Outcome(error=first_line(err), wall_time_s=time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


# --- executors: submit runs, then yield (index, Outcome) as runs end -------------------------------


def _die_with_parent(parent: int) -> None:
    """Initialiser of local worker processes: end when the sweep driver ends, however it ends.

    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); on every
    platform a daemon thread also checks once a second that the parent is still there (and covers a
    parent that died before the ``prctl`` call). A killed worker's run resumes from its checkpoint.
    """
    import os
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no glibc: the thread below still watches
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="cml_bench parent watch", daemon=True).start()


class LocalExecutor:
    """Runs one after another in this process, or ``workers`` at a time in spawned processes."""

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}.")
        self.workers = workers

    def execute(self, runs: Sequence[PlannedRun], out: str, cpus: int,
                on_start: Callable[[int], None]) -> Iterator[tuple[int, Outcome]]:
        if self.workers == 1:
            for i, item in enumerate(runs):
                on_start(i)
                yield i, run_one(item.config, out, cpus)
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # spawn: a forked torch / OpenMP runtime can deadlock in the child
        import os

        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            pending = list(range(len(runs)))
            active: dict[Any, int] = {}
            while pending or active:
                while pending and len(active) < self.workers:  # at most `workers` in flight: "running" is true
                    i = pending.pop(0)
                    active[pool.submit(run_one, runs[i].config, out, cpus)] = i
                    on_start(i)
                finished, _ = wait(list(active), timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = active.pop(future)
                    try:
                        yield i, future.result()
                    except Exception as err:  # noqa: BLE001 - a crashed worker process
                        yield i, Outcome(error=first_line(err))
                if not finished:
                    yield -1, Outcome()  # a tick, so the progress line's clock moves


def import_ray():
    """``ray``, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}.") from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, within ``timeout_s``, when nothing listens at ``HOST:PORT``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--address expects HOST:PORT of the Ray head (e.g. 10.0.0.1:6379, printed by "
                          f"`ray start --head`), got '{address}'.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        raise ConfigError(f"No Ray cluster reachable at {address} ({reason}): start one with "
                          f"`ray start --head --port {port}` or check --address.") from None


class RayExecutor:
    """Each run a Ray task with its CPU / GPU request, retried (and resumed) when its worker dies."""

    def __init__(self, address: str | None, max_retries: int = 3, connect_timeout_s: float = 5.0):
        import os

        self.ray = import_ray()
        address = address or os.environ.get("RAY_ADDRESS")
        if not address:
            raise ConfigError("--executor ray needs --address HOST:PORT of the Ray head (printed by "
                              "`ray start --head`; or set RAY_ADDRESS).")
        if address != "auto":
            check_reachable(address, connect_timeout_s)
        self.address, self.max_retries = address, max_retries

    def connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        try:
            # no worker output on the driver: it would break the progress line (it is in the nodes' logs)
            ray.init(address=self.address, log_to_driver=False, logging_level="ERROR")
        except Exception as err:  # noqa: BLE001 - connection / authentication problems, in one line
            cause = f" ({first_line(err.__cause__)})" if err.__cause__ is not None else ""
            raise ConfigError(f"Could not join the Ray cluster at {self.address}: {first_line(err)}{cause}; "
                              f"if it uses token authentication, set RAY_AUTH_MODE=token and its token "
                              f"(RAY_AUTH_TOKEN or ~/.ray/auth_token) here too.") from None

    def execute(self, runs: Sequence[PlannedRun], out: str, cpus: int, gpus: Callable[[RunConfig], float],
                on_start: Callable[[int], None]) -> Iterator[tuple[int, Outcome]]:
        ray = self.ray
        self.connect()
        remote = ray.remote(run_one)
        refs = {}
        for i, item in enumerate(runs):
            # max_retries: re-executed when its worker process or node dies (Python errors are not
            # retried: run_one returns them); the new attempt resumes from the dead one's checkpoint
            ref = remote.options(num_cpus=cpus, num_gpus=gpus(item.config), max_retries=self.max_retries,
                                 name=f"cml_bench {item.name}").remote(item.config, out, cpus)
            refs[ref] = i
            on_start(i)  # submitted: running, or waiting for a free slot on the cluster
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                if not ready:
                    yield -1, Outcome()
                for ref in ready:
                    i = refs.pop(ref)
                    try:
                        yield i, ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - retries used up (worker / node died each time)
                        yield i, Outcome(error=first_line(err))
        finally:
            ray.shutdown()  # leaves the cluster; runs still in flight are cancelled and resume next time


# --- the driver: progress line and summary ---------------------------------------------------------


@dataclass
class SweepReport:
    """Counts and outcomes of one sweep."""

    planned: list[PlannedRun]
    outcomes: dict[int, Outcome] = field(default_factory=dict)  # by index into `planned`
    wall_time_s: float = 0.0

    @property
    def skipped(self) -> list[PlannedRun]:
        return [p for p in self.planned if p.done is not None]

    @property
    def failed(self) -> list[tuple[PlannedRun, Outcome]]:
        return [(self.planned[i], o) for i, o in sorted(self.outcomes.items()) if o.error is not None]

    @property
    def finished(self) -> list[tuple[PlannedRun, Outcome]]:
        return [(self.planned[i], o) for i, o in sorted(self.outcomes.items()) if o.error is None]


class Progress:
    """One line on the driver: done / running / failed / skipped and an ETA.

    On a terminal the line is redrawn in place; elsewhere (logs, CI) a line is printed when a count
    changes.
    """

    def __init__(self, total: int, skipped: int, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.skipped = total, skipped
        self.done = self.failed = self.running = 0
        self.start = time.monotonic()
        self._last = ""

    def line(self) -> str:
        to_run = self.total - self.skipped
        ended = self.done + self.failed
        elapsed = time.monotonic() - self.start
        if ended and to_run > ended:
            eta = f"ETA {_duration(elapsed / ended * (to_run - ended))}"
        else:
            eta = "ETA -" if to_run > ended else f"took {_duration(elapsed)}"
        return (f"sweep: {self.done}/{to_run} done, {self.running} running, {self.failed} failed, "
                f"{self.skipped} skipped | {_duration(elapsed)} elapsed, {eta}")

    def show(self, force: bool = False) -> None:
        text = self.line()
        if self.tty:
            self.stream.write("\r" + text.ljust(len(self._last)))
        else:  # a log: a line when a run ends, not on every tick
            ended = (self.done, self.failed)
            if not force and ended == getattr(self, "_ended", None):
                return
            self._ended = ended
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last = text

    def close(self) -> None:
        self.show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_sweep(planned: Sequence[PlannedRun], out: str | Path, executor: LocalExecutor | RayExecutor,
              cpus: int = 1, gpus: float | None = None, stream: TextIO | None = None) -> SweepReport:
    """Run every planned run that is not done yet with ``executor``; show progress; return the report.

    ``gpus`` per run; ``None``: 1 for a config whose device is CUDA, else 0 (Ray executor only).
    """
    if cpus < 1:
        raise ConfigError(f"--cpus-per-run must be >= 1, got {cpus}.")
    if gpus is not None and (gpus < 0 or (gpus > 1 and not float(gpus).is_integer())):
        raise ConfigError(f"--gpus-per-run must be a fraction of one GPU (0.25 packs 4 runs on each GPU) or a "
                          f"whole number of GPUs, got {gpus}.")
    report = SweepReport(list(planned))
    todo = [i for i, p in enumerate(report.planned) if p.done is None]
    progress = Progress(len(report.planned), len(report.planned) - len(todo), stream)
    progress.show(force=True)
    runs = [report.planned[i] for i in todo]

    def started(_: int) -> None:
        progress.running += 1
        progress.show()

    out = str(out)
    if isinstance(executor, RayExecutor):
        per_run_gpus = (lambda c: gpus) if gpus is not None else (lambda c: 1 if c.device.startswith("cuda") else 0)
        events = executor.execute(runs, out, cpus, per_run_gpus, started)
    else:
        events = executor.execute(runs, out, cpus, started)
    for j, outcome in events:
        if j >= 0:
            report.outcomes[todo[j]] = outcome
            progress.running -= 1
            if outcome.error is None:
                progress.done += 1
            else:
                progress.failed += 1
        progress.show()
    progress.close()
    report.wall_time_s = time.monotonic() - progress.start
    return report


def summary_text(report: SweepReport, out: str | Path) -> str:
    """The sweep's closing lines: counts, wall time, failed runs with their error, what to run next."""
    lines = [f"Sweep of {len(report.planned)} runs: {len(report.finished)} finished, {len(report.skipped)} "
             f"skipped (already done), {len(report.failed)} failed, in {_duration(report.wall_time_s)}."]
    resumed = [p.name for p, o in report.finished if o.note == "resumed"]
    if resumed:
        lines.append("Resumed from a checkpoint: " + "; ".join(resumed) + ".")
    for item, outcome in report.failed:
        lines.append(f"  FAILED {item.name}: {outcome.error}")
    if report.failed:
        lines.append("Fix the cause and submit the same command again: finished runs are skipped and "
                     "interrupted ones resume from their last task.")
    lines.append(f"Results under {out}; tables: python -m cml_bench leaderboard {out}")
    return "\n".join(lines)
