"""Sweeps: a grid of runs (benchmarks x strategies x seeds) executed here or on a Ray cluster.

The grid is expanded into runs resolved once (:class:`~cml_bench.resolved.ResolvedRun`) before
anything trains (a typo fails at once); runs whose finished folder with the same resolved config
exists are skipped, so a sweep can be re-submitted after any failure. Every run goes through
:func:`run_one`, whichever executor runs it:

- ``local``: one run after another in this process, or ``workers`` at a time in a small process pool;
- ``ray``: each run a Ray task holding its CPU / GPU request, retried when its worker or node dies.

The ``run`` command is such a sweep too, on the local executor in its own process, reported run by
run (:class:`RunPrinter`) instead of by a progress line.

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
from cml_bench.resolved import ResolvedRun, resolve_run

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
                n_seeds: int = 1) -> list[ResolvedRun]:
    """Resolve every (benchmark, strategy, seed) of a grid, in that nesting order.

    Empty ``strategies`` / ``benchmarks`` mean the one the layers name. ``seeds`` lists the seeds;
    without it, ``n_seeds`` seeds counting up from the resolved config's seed (``run --seeds N``).
    """
    runs = []
    for bench in benchmarks or [None]:
        for name in strategies or [None]:
            layer = dict(cli_layer)
            if bench:
                layer = merge(layer, {"benchmark": {"name": bench}})
            if name:
                layer = merge(layer, {"strategy": {"name": name}})
            base = resolve_run(file_layer, layer)  # the config's own seed, resolved once
            for seed in seeds if seeds is not None else [base.config.seed + k for k in range(n_seeds)]:
                runs.append(base if seed == base.config.seed else resolve_run(file_layer, layer, {"seed": seed}))
    return runs


@dataclass
class PlannedRun:
    """One run of a grid: the run resolved once and, when it already finished, its folder.

    ``rerun``: run it even if a finished run of it exists (``--rerun``; ``done`` is then None).
    """

    run: ResolvedRun
    done: Path | None = None
    rerun: bool = False

    @property
    def config(self) -> RunConfig:
        return self.run.config

    @property
    def label(self) -> str:
        return self.run.label

    @property
    def name(self) -> str:
        return self.run.name


def plan_runs(runs: Sequence[ResolvedRun], out: str | Path, rerun: bool = False, threads: int | None = None,
              log: Callable[[str], None] | None = None) -> list[PlannedRun]:
    """Pair each run with its finished run folder under ``out`` (none when ``rerun``).

    A run is done only on the same data, weights and (on a CPU) ``threads`` (default: this
    process's torch thread count); see :mod:`cml_bench.identity`. Finished runs that do not count
    (damaged, other data) are reported through ``log``, one line each.
    """
    import torch

    from cml_bench.results import find_finished

    threads = threads if threads is not None else torch.get_num_threads()
    planned = []
    for run in runs:
        notes: list[str] = []
        done = None if rerun else find_finished(out, run.config, run.label, run.identity(threads), notes)
        for note in notes:
            (log or print)(f"{run.name}: {note}")
        planned.append(PlannedRun(run, done, rerun))
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
    """What a run came to: its folder (and printed summary), or the first line of its error."""

    path: str | None = None
    error: str | None = None
    wall_time_s: float = 0.0
    note: str = ""  # "resumed" / "already finished" for the driver's summary
    summary: str = ""  # the run's summary table, as `run` prints it


def run_one(run: ResolvedRun | RunConfig, out: str, cpus: int | None = None, *, rerun: bool = False,
            log: Callable[..., None] | None = None, loggers: Sequence[str] = (),
            fail_fast: bool = False) -> Outcome:
    """Run ``run`` into ``out`` with ``cpus`` torch threads (None: as they are); how every
    executor runs a run. A worker process or Ray node receives the resolved config and resolves it
    again, with its own plugin registries.

    A finished run of the same config (one a dead attempt completed before its result came back)
    is returned instead of training again, unless ``rerun``; an unfinished one with a checkpoint is
    resumed. ``log`` gets the runner's lines, ``loggers`` are fed (``run --logger``). A failed run
    becomes an Outcome with its error; with ``fail_fast`` (the `run` command) its error is raised
    instead, and a lock held on another host is not waited for.
    """
    import torch

    from cml_bench.results import STALE_AFTER_S, find_finished, find_partial
    from cml_bench.runner import run as run_folder

    start = time.perf_counter()
    threads = torch.get_num_threads()
    if cpus is not None:
        torch.set_num_threads(max(1, int(cpus)))
    try:
        run = ResolvedRun.of(run)
        identity = run.identity(torch.get_num_threads())
        done = None if rerun else find_finished(out, run.config, run.label, identity)
        if done is not None:
            return Outcome(str(done), note="already finished")
        note = "resumed" if find_partial(out, run.config, run.label, identity) is not None else ""
        # a retry of a run whose node died waits for the dead node's lock to go stale (`run` says so at once)
        result = run_folder(run, out, log=log or (lambda *_: None), resume=True, loggers=loggers,
                            lock_wait_s=0.0 if fail_fast else STALE_AFTER_S + 30)
        return Outcome(str(result.path), wall_time_s=result.wall_time_s, note=note, summary=result.summary)
    except Exception as err:  # noqa: BLE001 - reported by the driver, the sweep goes on
        if fail_fast:
            raise
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
    """Runs one after another in this process, or ``workers`` at a time in spawned processes.

    Runs in this process send their lines to ``log`` and feed ``loggers``; with ``fail_fast`` (the
    `run` command) the first failed run raises its error (:func:`run_one`).
    """

    def __init__(self, workers: int = 1, log: Callable[..., None] | None = None, loggers: Sequence[str] = (),
                 fail_fast: bool = False):
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}.")
        self.workers, self.log, self.loggers, self.fail_fast = workers, log, tuple(loggers), fail_fast

    def execute(self, runs: Sequence[PlannedRun], out: str, cpus: int | None,
                on_start: Callable[[int], None]) -> Iterator[tuple[int, Outcome]]:
        if self.workers == 1:
            for i, item in enumerate(runs):
                on_start(i)
                yield i, run_one(item.run, out, cpus, rerun=item.rerun, log=self.log, loggers=self.loggers,
                                 fail_fast=self.fail_fast)
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
                    active[pool.submit(run_one, runs[i].config, out, cpus, rerun=runs[i].rerun)] = i
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
            task = remote.options(num_cpus=cpus, num_gpus=gpus(item.config), max_retries=self.max_retries,
                                  name=f"cml_bench {item.name}")
            ref = task.remote(item.config, out, cpus, rerun=item.rerun)
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

    def started(self, index: int) -> None:
        self.running += 1
        self.show()

    def ended(self, index: int, outcome: Outcome) -> None:
        self.running -= 1
        if outcome.error is None:
            self.done += 1
        else:
            self.failed += 1
        self.show()

    def tick(self) -> None:
        self.show()

    def close(self) -> None:
        self.show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class RunPrinter:
    """The `run` command's report, in plan order on stdout: a run's own lines as it trains, then its
    summary table and folder; a run already done is named, with the table read back from its folder."""

    def __init__(self, planned: Sequence[PlannedRun]):
        self.planned = list(planned)
        self.shown = 0  # the runs before this index are printed

    def _results(self, summary: str, path: str | Path) -> None:
        print(summary)
        print(f"\nResults: {path}/metrics.csv (config, manifest and summary beside it)\n")

    def _already_done(self, item: PlannedRun, path: str | Path) -> None:
        import pandas as pd

        from cml_bench.results import summary_table

        print(f"{item.name}: already done with this config, skipped ({path}; --rerun runs it again)")
        self._results(summary_table(pd.read_csv(Path(path) / "metrics.csv")), path)

    def _skipped_until(self, index: int) -> None:
        for item in self.planned[self.shown:index]:
            if item.done is not None:
                self._already_done(item, item.done)
        self.shown = max(self.shown, index)

    def started(self, index: int) -> None:
        self._skipped_until(index)

    def ended(self, index: int, outcome: Outcome) -> None:
        assert outcome.error is None, "the run command's executor raises a run's error (fail_fast)"
        item, self.shown = self.planned[index], index + 1
        if outcome.note == "already finished":  # finished by another process since it was planned
            self._already_done(item, outcome.path)
            return
        print(f"\n{item.name}: after the last task, on the test sets of all tasks ({outcome.wall_time_s:.0f} s)")
        self._results(outcome.summary, outcome.path)

    def tick(self) -> None:
        """Nothing to redraw: the runs print their own lines as they train."""

    def close(self) -> None:
        self._skipped_until(len(self.planned))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_sweep(planned: Sequence[PlannedRun], out: str | Path, executor: LocalExecutor | RayExecutor,
              cpus: int | None = 1, gpus: float | None = None, stream: TextIO | None = None,
              reporter: Progress | RunPrinter | None = None) -> SweepReport:
    """Run every planned run that is not done yet with ``executor``; report as runs start and end
    (default: the progress line on ``stream``); return the report.

    ``cpus``: torch threads per run (None: as they are). ``gpus`` per run; ``None``: 1 for a config
    whose device is CUDA, else 0 (Ray executor only).
    """
    if cpus is not None and cpus < 1:
        raise ConfigError(f"--cpus-per-run must be >= 1, got {cpus}.")
    if gpus is not None and (gpus < 0 or (gpus > 1 and not float(gpus).is_integer())):
        raise ConfigError(f"--gpus-per-run must be a fraction of one GPU (0.25 packs 4 runs on each GPU) or a "
                          f"whole number of GPUs, got {gpus}.")
    start = time.monotonic()
    report = SweepReport(list(planned))
    todo = [i for i, p in enumerate(report.planned) if p.done is None]
    if reporter is None:
        reporter = Progress(len(report.planned), len(report.planned) - len(todo), stream)
        reporter.show(force=True)
    runs = [report.planned[i] for i in todo]

    def started(j: int) -> None:
        reporter.started(todo[j])

    out = str(out)
    if isinstance(executor, RayExecutor):
        per_run_gpus = (lambda c: gpus) if gpus is not None else (lambda c: 1 if c.device.startswith("cuda") else 0)
        events = executor.execute(runs, out, cpus, per_run_gpus, started)
    else:
        events = executor.execute(runs, out, cpus, started)
    for j, outcome in events:
        if j < 0:
            reporter.tick()
            continue
        report.outcomes[todo[j]] = outcome
        reporter.ended(todo[j], outcome)
    reporter.close()
    report.wall_time_s = time.monotonic() - start
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
