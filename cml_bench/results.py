"""Run folders: resolved config, manifest, long-format metrics CSV, summary.

A run is written into ``<out>/<benchmark>/<strategy>/seed<k>-<timestamp>/``. It is assembled in a
hidden ``.partial-*`` sibling and renamed into place only when complete, so a killed run never
leaves a folder that looks finished, and an earlier run is never overwritten. The manifest is
written last and records the row count and sha256 of ``metrics.csv``: a run is *finished* only when
its manifest says so and its metrics match (:func:`check_run`); anything else is damaged and is
neither skipped as done nor shown in a leaderboard. A ``.lock`` in the working folder (owner's pid
and host, refreshed while it runs) keeps a second process from resuming into a live run.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch

from cml_bench.config import ConfigError, RunConfig, dump_yaml, resolve
from cml_bench.metrics import FAMILY_METRICS


class RunFolderError(ValueError):
    """A run folder cannot be created, written, locked or trusted; the message says what to do."""


CSV_COLUMNS = ["benchmark", "strategy", "seed", "trained_through_task", "eval_on", "group", "metric", "value"]
GROUP_ORDER = ["majority", "moderate", "minority", "all"]
GROUP_LABELS = {"majority": "majority", "moderate": "moderate", "minority": "minority", "all": "overall"}
"""How tables and plots name each group ("all" classes: "overall")."""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def manifest(config: RunConfig, wall_time_s: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to tell how a result was produced."""
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {
        "seed": config.seed,
        "wall_time_s": round(wall_time_s, 2),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "device": config.device,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {p: _version(p) for p in ("cml-bench", "torch", "torchvision", "avalanche-lib",
                                              "timm", "numpy", "pandas")},
        "torch_threads": torch.get_num_threads(),
        # the same seed and thread count give other numbers on a CPU whose kernels differ (AVX2 vs
        # AVX-512): this says which ran (not part of the run identity: same experiment, other floats)
        "cpu": {"model": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        info["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    info.update(extra or {})
    return info


def _os_error(err: OSError, doing: str, where: Path | str) -> RunFolderError:
    """One line for a failed write: a full disk, a read-only or unwritable folder, a file in the way."""
    if err.errno == errno.ENOSPC:
        return RunFolderError(f"No space left on the device of {where} while {doing}: free space and run the "
                              f"same command again (an interrupted run continues from its last task).")
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return RunFolderError(f"Cannot write to {where} while {doing} ({os.strerror(err.errno).lower()}): "
                              f"choose a writable --out.")
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        return RunFolderError(f"--out {where} is not a folder: a file is in the way "
                              f"({err.filename or where}); choose another --out or move the file.")
    return RunFolderError(f"Could not write {where} while {doing}: {err.strerror or err}.")


def prepare_out(out: str | Path) -> Path:
    """Create the results folder ``out`` (if needed) and check it is a writable folder, before any
    work starts; RunFolderError in one line otherwise (a file in the way, read-only, full)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder: choose another --out or move the file.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise _os_error(err, "checking the results folder", out) from None
    return out


def start_run(out: str | Path, config: RunConfig, strategy_label: str) -> Path:
    """Create the hidden staging folder of a new run (with its resolved config) and return it."""
    parent = Path(out) / config.benchmark.name / strategy_label
    stamp = time.strftime("%Y%m%d-%H%M%S")
    staging = parent / f".partial-seed{config.seed}-{stamp}-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        dump_yaml(config, staging / "config.yaml")
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise _os_error(err, "creating the run folder", out) from None
    return staging


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finish_run(staging: Path, config: RunConfig, rows: Iterable[dict[str, Any]], info: dict[str, Any],
               model_state: dict[str, Any] | None = None) -> Path:
    """Write the results into ``staging`` and rename it into place; return the final folder.

    ``model_state`` (the final weights) is saved as ``model.pt`` for diagnostics such as
    ``python -m cml_bench angles RUN_DIR``. The manifest, written last, records ``metrics.csv``'s
    row count and sha256 and ``status: finished``. The folder is renamed into place first and the
    checkpoint, no longer needed, removed after: a kill in between leaves a finished run (with a
    spare checkpoint), never finished results stranded in a hidden folder.
    """
    frame = pd.DataFrame(list(rows), columns=CSV_COLUMNS)
    try:
        frame.to_csv(staging / "metrics.csv", index=False)
        (staging / "summary.md").write_text(summary_table(frame) + "\n")
        if model_state is not None:
            torch.save(model_state, staging / "model.pt")
        info = {**info, "status": "finished",
                "metrics_csv": {"rows": len(frame), "sha256": _sha256(staging / "metrics.csv")}}
        tmp = staging / ".manifest.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, staging / "manifest.json")
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        for name in ("manifest.json", ".manifest.json.tmp", "metrics.csv", "summary.md", "model.pt"):
            (staging / name).unlink(missing_ok=True)  # free the space; the checkpoint stays for a resume
        oserr = err if isinstance(err, OSError) else OSError(errno.ENOSPC if "space" in str(err).lower()
                                                             else errno.EIO, str(err).splitlines()[0])
        raise _os_error(oserr, "writing the run's results", staging) from None
    stamp = staging.name.split("-", 2)[2].rsplit("-", 1)[0]  # .partial-seed<k>-<stamp>-<pid>
    for n in range(1000):
        final = staging.parent / (f"seed{config.seed}-{stamp}" + (f"-{n}" if n else ""))
        if final.exists():
            continue
        try:
            staging.rename(final)  # never onto an existing run
            break
        except OSError:
            if not final.exists():
                raise
    else:
        raise FileExistsError(f"Could not find a free run folder name under {staging.parent}.")
    for leftover in ("checkpoint.pt", "checkpoint.json", LOCK):
        (final / leftover).unlink(missing_ok=True)
    return final


# --- is a folder a finished run, of this config, on this data? ------------------------------------


@dataclass
class RunCheck:
    """What :func:`check_run` found: ``finished`` (its manifest vouches for its metrics), ``legacy``
    (no checksum to check: written before manifests recorded one, or without a manifest; read
    unchecked) or ``damaged`` (with the reason)."""

    status: str
    reason: str = ""
    manifest: dict[str, Any] | None = None

    @property
    def usable(self) -> bool:
        return self.status != "damaged"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """A run folder's manifest.json, or None when it is missing or not a JSON object."""
    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_run(folder: Path) -> RunCheck:
    """Whether ``folder`` holds a finished run whose metrics.csv is the one its manifest records."""
    if not (folder / "manifest.json").exists():  # assembled by hand, or by another tool: unchecked
        return RunCheck("legacy")
    manifest_ = read_manifest(folder)
    if manifest_ is None:
        return RunCheck("damaged", "its manifest.json is unreadable")
    record = manifest_.get("metrics_csv")
    if record is None:
        return RunCheck("legacy", manifest=manifest_)
    if manifest_.get("status") != "finished" or not isinstance(record, dict):
        return RunCheck("damaged", "its manifest does not say it finished", manifest_)
    try:
        digest = _sha256(folder / "metrics.csv")
    except OSError:
        return RunCheck("damaged", "its metrics.csv is missing or unreadable", manifest_)
    if digest != record.get("sha256"):
        with open(folder / "metrics.csv", "rb") as fh:
            rows = max(0, sum(1 for _ in fh) - 1)
        return RunCheck("damaged", f"its metrics.csv does not match its manifest ({rows} of "
                                   f"{record.get('rows')} rows: cut or edited)", manifest_)
    return RunCheck("finished", manifest=manifest_)


def _same_config(path: Path, wanted: dict[str, Any]) -> bool:
    import yaml

    try:
        stored = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False  # an unreadable folder is not a run of this config
    if stored == wanted:
        return True
    try:  # a run written before a config key existed ran with that key's default
        return isinstance(stored, dict) and resolve(stored).to_dict() == wanted
    except ConfigError:
        return False


def _runs_of(out: str | Path, config: RunConfig, strategy_label: str, prefix: str) -> list[Path]:
    """Folders ``<prefix>seed<k>-*`` of this config's (benchmark, strategy, seed), newest first."""
    parent = Path(out) / config.benchmark.name / strategy_label
    return sorted(parent.glob(f"{prefix}seed{config.seed}-*"), reverse=True)


def _identity(config: RunConfig, identity: dict[str, Any] | None) -> dict[str, Any]:
    if identity is not None:
        return identity
    from cml_bench.resolved import run_identity

    return run_identity(config, torch.get_num_threads())


def _differs(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    """``"data, threads"``: which parts of two run identities differ."""
    return ", ".join(k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k))


def find_partial(out: str | Path, config: RunConfig, strategy_label: str,
                 identity: dict[str, Any] | None = None, notes: list[str] | None = None) -> Path | None:
    """The newest unfinished run of exactly this config and :func:`~cml_bench.resolved.run_identity`
    (default: today's, with this process's thread count) that left a checkpoint, if any.

    A checkpoint made on other data, weights or thread count is not resumed (a line in ``notes``).
    """
    wanted_config, wanted = config.to_dict(), _identity(config, identity)
    for path in _runs_of(out, config, strategy_label, ".partial-"):
        if not (path / "checkpoint.pt").is_file() or not _same_config(path, wanted_config):
            continue
        try:
            stored = json.loads((path / "checkpoint.json").read_text()).get("identity")
        except (OSError, ValueError, AttributeError):
            stored = None
        if stored == wanted:
            return path
        if notes is not None:
            why = f"its {_differs(stored, wanted)} differ(s)" if isinstance(stored, dict) else \
                "it was written by an older cml_bench"
            notes.append(f"not resuming {path}: {why}; starting afresh")
    return None


def find_finished(out: str | Path, config: RunConfig, strategy_label: str,
                  identity: dict[str, Any] | None = None, notes: list[str] | None = None) -> Path | None:
    """The newest finished run under ``out`` with exactly this resolved config and run identity.

    Damaged runs (:func:`check_run`) and runs on other data, weights or thread count are not done
    (a line each in ``notes``); a run from before identities were recorded matches on its config.
    """
    wanted_config, wanted = config.to_dict(), None
    for path in _runs_of(out, config, strategy_label, ""):
        if not (path / "metrics.csv").is_file() or not _same_config(path, wanted_config):
            continue
        check = check_run(path)
        if not check.usable:
            if notes is not None:
                notes.append(f"{path} is damaged ({check.reason}): not counted as done")
            continue
        stored = (check.manifest or {}).get("identity")
        if stored is None:
            return path
        wanted = wanted if wanted is not None else _identity(config, identity)
        if stored == wanted:
            return path
        if notes is not None:
            notes.append(f"{path} was made with other {_differs(stored, wanted)}: not counted as done")
    return None


def cleanup_partials(out: str | Path, config: RunConfig, strategy_label: str) -> list[Path]:
    """Remove the unfinished runs of this config that a finished run supersedes (none in use by a
    live process); return them."""
    removed = []
    wanted = config.to_dict()
    for path in _runs_of(out, config, strategy_label, ".partial-"):
        if _same_config(path, wanted) and lock_owner(path) is None:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def set_aside(folder: Path) -> Path:
    """Rename an unusable working folder to a hidden ``.damaged-*`` sibling (kept for inspection,
    never resumed or read as results); return its new path."""
    name = ".damaged-" + folder.name.removeprefix(".partial-")
    target = folder.with_name(name)
    n = 0
    while target.exists():
        n += 1
        target = folder.with_name(f"{name}-{n}")
    os.replace(folder, target)
    (target / LOCK).unlink(missing_ok=True)
    return target


# --- a lock on a run's working folder ---------------------------------------------------------------

LOCK = ".lock"
HEARTBEAT_S = 20.0  # a live run refreshes its lock this often
STALE_AFTER_S = 120.0  # a lock not refreshed for this long is stale, whichever host wrote it


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (Linux: clock ticks since boot), to tell a reused pid apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, started: int | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    now = _start_ticks(pid)
    return started is None or now is None or now == started


def lock_owner(folder: Path) -> dict[str, Any] | None:
    """The live owner (``pid``, ``host``) of ``folder``'s lock, or None when unlocked or stale: the
    pid is gone on this host, or the lock has not been refreshed for :data:`STALE_AFTER_S`."""
    path = folder / LOCK
    try:
        owner = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict):
        return None
    if owner.get("host") == socket.gethostname():
        pid = owner.get("pid")
        alive = isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid, owner.get("started"))
        return owner if alive else None
    return owner if age < STALE_AFTER_S else None


class RunLock:
    """Holds ``<folder>/.lock`` (pid, host) while a run works in ``folder``, refreshing it every
    :data:`HEARTBEAT_S` from a daemon thread; :meth:`acquire` takes over a stale lock."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait_s: float = 0.0) -> "RunLock":
        """Take the lock, waiting up to ``wait_s`` for a lock from another host to go stale (a
        node that died); RunFolderError (one line) when a live process holds it."""
        deadline = time.monotonic() + wait_s
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_ticks(os.getpid()),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        path = self.folder / LOCK
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = lock_owner(self.folder)
                if owner is None:  # stale (or just released): take it over
                    path.unlink(missing_ok=True)
                    continue
                if owner.get("host") != me["host"] and time.monotonic() < deadline:
                    time.sleep(5.0)  # another host's lock: live, or a dead node's, stale soon
                    continue
                raise RunFolderError(
                    f"{self.folder} is in use by a live run (pid {owner.get('pid')} on {owner.get('host')}, "
                    f"lock {path}): wait for it to finish; if that process is gone, delete the lock.") from None
            except OSError as err:
                raise _os_error(err, "locking the run folder", self.folder) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            break
        self._thread = threading.Thread(target=self._beat, name="cml_bench run lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.folder / LOCK)
            except OSError:
                return  # the folder was renamed (finished) or removed

    def release(self) -> None:
        """Stop refreshing and remove the lock if it is still in ``folder`` (not once renamed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        try:
            owner = json.loads((self.folder / LOCK).read_text())
            if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                (self.folder / LOCK).unlink()
        except (OSError, ValueError, AttributeError):
            pass


# What the summary shows per metric family: the paper's continual columns; every metric of the
# single-task families (the generic thresholded and top-3 scores, the attribute metrics).
SUMMARY_METRICS = {"continual": ("CF1", "OF1", "mAP"), "generic": FAMILY_METRICS["generic"],
                   "attribute": FAMILY_METRICS["attribute"], "mlcil": ("avg_mAP", "mAP", "CF1", "OF1")}


def metric_family(frame: pd.DataFrame) -> str:
    """``continual`` | ``generic`` | ``attribute`` | ``mlcil``: which family a run's metric rows belong to."""
    names = set(frame["metric"])
    if "avg_mAP" in names:  # written by every MLCIL run (cml_bench.mlcil.AVERAGE_METRIC)
        return "mlcil"
    return "attribute" if "mA" in names else "generic" if "CF1@3" in names else "continual"


def summary_table(frame: pd.DataFrame, metrics: tuple[str, ...] | None = None) -> str:
    """Groups x metrics after the last task on the union of all test sets, as a Markdown table.

    ``metrics`` defaults to the family's columns (:data:`SUMMARY_METRICS`; CF1, OF1, mAP for a
    continual stream).
    """
    if frame.empty:
        return "(no results)"
    metrics = metrics or SUMMARY_METRICS[metric_family(frame)]
    last = frame["trained_through_task"].max()
    final = frame[(frame.trained_through_task == last) & (frame.eval_on == "seen")
                  & frame.metric.isin(metrics)]
    table = final.pivot_table(index="group", columns="metric", values="value", aggfunc="mean")
    # a metric a run could not compute (a joint run's avg_mAP: NaN) shows as a dash
    table = table.reindex(index=[g for g in GROUP_ORDER if g in table.index], columns=list(metrics))
    table.index = [GROUP_LABELS.get(g, g) for g in table.index]
    lines = ["| group | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for group, row in table.iterrows():
        lines.append(f"| {group} | " + " | ".join("–" if pd.isna(v) else f"{v:.1f}" for v in row.values) + " |")
    matrix = frame[(frame.metric == "mAP") & (frame.group == "all") & frame.eval_on.str.startswith("task")]
    if matrix.trained_through_task.nunique() > 1:
        pivot = matrix.pivot_table(index="trained_through_task", columns="eval_on", values="value")
        lines += ["", "mAP on each task's test set after training through task i (rows):", "",
                  "| after task | " + " | ".join(pivot.columns) + " |", "|---|" + "---:|" * len(pivot.columns)]
        for i, row in pivot.iterrows():
            lines.append(f"| {i} | " + " | ".join("" if pd.isna(v) else f"{v:.1f}" for v in row.values) + " |")
    return "\n".join(lines)
