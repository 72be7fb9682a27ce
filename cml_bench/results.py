"""Run folders: resolved config, manifest, long-format metrics CSV, summary.

A run is written into ``<out>/<benchmark>/<strategy>/seed<k>-<timestamp>/``. It is assembled in a
hidden ``.partial-*`` sibling and renamed into place only when complete, so a killed run never
leaves a folder that looks finished, and an earlier run is never overwritten.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch

from cml_bench.config import ConfigError, RunConfig, dump_yaml, resolve
from cml_bench.evaluator import FAMILY_METRICS

CSV_COLUMNS = ["benchmark", "strategy", "seed", "trained_through_task", "eval_on", "group", "metric", "value"]
GROUP_ORDER = ["majority", "moderate", "minority", "all"]


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
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        info["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    info.update(extra or {})
    return info


def start_run(out: str | Path, config: RunConfig, strategy_label: str) -> Path:
    """Create the hidden staging folder of a new run (with its resolved config) and return it."""
    parent = Path(out) / config.benchmark.name / strategy_label
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    staging = parent / f".partial-seed{config.seed}-{stamp}-{os.getpid()}"
    staging.mkdir()
    dump_yaml(config, staging / "config.yaml")
    return staging


def finish_run(staging: Path, config: RunConfig, rows: Iterable[dict[str, Any]], info: dict[str, Any],
               model_state: dict[str, Any] | None = None) -> Path:
    """Write the results into ``staging`` and rename it into place; return the final folder.

    ``model_state`` (the final weights) is saved as ``model.pt`` for diagnostics such as
    ``python -m cml_bench angles RUN_DIR``. The checkpoint, no longer needed, is removed.
    """
    (staging / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
    frame = pd.DataFrame(list(rows), columns=CSV_COLUMNS)
    frame.to_csv(staging / "metrics.csv", index=False)
    (staging / "summary.md").write_text(summary_table(frame) + "\n")
    if model_state is not None:
        torch.save(model_state, staging / "model.pt")
    for leftover in ("checkpoint.pt", "checkpoint.json"):
        (staging / leftover).unlink(missing_ok=True)
    stamp = staging.name.split("-", 2)[2].rsplit("-", 1)[0]  # .partial-seed<k>-<stamp>-<pid>
    for n in range(1000):
        final = staging.parent / (f"seed{config.seed}-{stamp}" + (f"-{n}" if n else ""))
        if final.exists():
            continue
        try:
            staging.rename(final)  # never onto an existing run
            return final
        except OSError:
            if not final.exists():
                raise
    raise FileExistsError(f"Could not find a free run folder name under {staging.parent}.")


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


def _newest_run(out: str | Path, config: RunConfig, strategy_label: str, prefix: str,
                marker: str) -> Path | None:
    """The newest folder ``<prefix>seed<k>-*`` holding ``marker`` whose config equals ``config``."""
    parent = Path(out) / config.benchmark.name / strategy_label
    wanted = config.to_dict()
    for path in sorted(parent.glob(f"{prefix}seed{config.seed}-*"), reverse=True):
        if (path / marker).is_file() and _same_config(path, wanted):
            return path
    return None


def find_partial(out: str | Path, config: RunConfig, strategy_label: str) -> Path | None:
    """The newest unfinished run of exactly this config that left a checkpoint, if any."""
    return _newest_run(out, config, strategy_label, ".partial-", "checkpoint.pt")


def find_finished(out: str | Path, config: RunConfig, strategy_label: str) -> Path | None:
    """The newest finished run under ``out`` with exactly this resolved config, if any."""
    return _newest_run(out, config, strategy_label, "", "metrics.csv")


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
    table.index = ["overall" if g == "all" else g for g in table.index]
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
