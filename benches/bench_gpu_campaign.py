"""Campaign throughput on one GPU: finished runs per hour with 1, 2, 4, 8 runs packed on the device.

A script for a GPU machine, run from the repository root. The store is the one of
``bench_gpu_stream.py`` (same flags; build it first, it needs no GPU):

    python -m benches.bench_gpu_campaign --build-store-only
    python -m benches.bench_gpu_campaign --device cuda [--levels 1,2,4,8 --window-s 60 --precision bf16]

For each packing level k, a fresh ``sweep`` of k runs (``prs+ssca`` with ResNet-101 at 256 px on the
COCOseq-sized ``cocoseq`` store, seeds 0..k-1, ``pretrained=False``) runs on the local executor with
k workers sharing the device (``sweep --workers k --device cuda``: spawned processes, CUDA
initialised only in them), in a child process of its own. Once every run has made its first
training step (or ``--startup-s`` has passed), the incoming images every run trains are counted
for ``--window-s`` seconds; then the level's processes are ended. A COCOseq run does not finish in
such a window, so finished runs per hour are estimated from the images trained:
``3600 * (images trained by all runs in the window / window) / (training images of one run)``.
Evaluations after tasks that end inside the window are inside it (they cost window time and
train no images); process start-up and model building are not (printed separately). The whole
command takes about ``len(levels) * (startup + window + 10 s)``, printed before it starts.

Printed, unbuffered: per level, stream images/s of all runs together and per run, the estimated
finished runs per hour, tasks completed inside the window, start-up time and the peak GPU memory of
a run; then a table of all levels.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin

from benches.bench_gpu_stream import build_store, run_layer, store_arguments
from cml_bench.registry import STRATEGIES, split_head
from cml_bench.strategy import StrategySpec

ROOT = Path(__file__).resolve().parents[1]  # the repository root: benches and cml_bench for the child

PROGRESS_ENV = "CML_BENCH_CAMPAIGN_PROGRESS"  # folder the counted runs write their progress to
STRATEGY = "prs+ssca"


class ProgressWriter(SupervisedPlugin):
    """Appends ``{"t", "images", "tasks", "gpu_mb"}`` to ``<folder>/seed<seed>.jsonl`` at the first
    step, about every half second, and after every task (wall-clock time, comparable across processes)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.images = self.tasks = 0
        self._last = 0.0

    def _write(self) -> None:
        self._last = time.time()
        memory = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else 0.0
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"t": self._last, "images": self.images, "tasks": self.tasks,
                                 "gpu_mb": memory}) + "\n")

    def before_training_exp(self, strategy, **kwargs):
        self._done, self._steps = self.images, 0  # images of the finished tasks

    def after_training_iteration(self, strategy, **kwargs):
        # incoming images: one loader batch per step (the replayed samples ride on top of it)
        self._steps += 1
        first = self.images == 0
        self.images = self._done + min(self._steps * strategy.train_mb_size, len(strategy.experience.dataset))
        if first or time.time() - self._last > 0.5:
            self._write()

    def after_training_exp(self, strategy, **kwargs):
        self.images = self._done + len(strategy.experience.dataset)
        self.tasks += 1
        self._write()


def _register_counted() -> str:
    """``counted-prs+ssca``: prs with a ``ProgressWriter``, registered whenever this module is imported
    (also as a spawned sweep worker's ``__mp_main__``), so the workers know it too."""
    base, head = split_head(STRATEGY)
    spec = STRATEGIES.get(base)

    def build(options, ctx):
        folder = Path(os.environ[PROGRESS_ENV])
        return list(spec.build(options, ctx)) + [ProgressWriter(folder / f"seed{ctx.seed}.jsonl")]

    name = f"counted-{base}"
    if name not in STRATEGIES.names():
        STRATEGIES.register(name, StrategySpec(name=name, build=build, options=spec.options,
                                               description=spec.description, reference=spec.reference))
    return f"{name}+{head}"


COUNTED = _register_counted()


def level_main(args: argparse.Namespace) -> int:
    """The child of one level: a local sweep of ``args.level`` runs sharing the device."""
    from cml_bench.resolved import resolve_run
    from cml_bench.sweep import LocalExecutor, PlannedRun, run_sweep

    planned = [PlannedRun(resolve_run(run_layer(args, COUNTED), {"seed": seed})) for seed in range(args.level)]
    with open(Path(os.environ[PROGRESS_ENV]) / "sweep.log", "w") as log:
        report = run_sweep(planned, args.out, LocalExecutor(args.level), cpus=args.cpus_per_run, stream=log)
    for item, outcome in report.failed:
        print(f"FAILED {item.name}: {outcome.error}", flush=True)
    return 1 if report.failed else 0


def _records(folder: Path) -> dict[str, list[dict]]:
    out = {}
    for path in sorted(folder.glob("seed*.jsonl")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        out[path.stem] = [json.loads(line) for line in lines if line.endswith("}")]
    return out


def _at(records: list[dict], t: float) -> dict:
    """The last record at or before ``t`` (zeros before the first)."""
    before = [r for r in records if r["t"] <= t]
    return before[-1] if before else {"t": t, "images": 0, "tasks": 0, "gpu_mb": 0.0}


def measure_level(args: argparse.Namespace, k: int, root: Path, train_images: int) -> dict:
    folder = root / f"level{k}"
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "benches.bench_gpu_campaign", "--level", str(k), "--out", str(folder / "runs"),
               "--store", str(args.store), "--scale", str(args.scale), "--size", str(args.size),
               "--device", args.device, "--precision", args.precision, "--num-workers", str(args.num_workers),
               "--cpus-per-run", str(args.cpus_per_run)]
    command += ["--channels-last"] if args.channels_last else []
    for item in args.set:
        command += ["--set", item]
    env = {**os.environ, PROGRESS_ENV: str(folder),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    started = time.time()
    child = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        while time.time() - started < args.startup_s and child.poll() is None:
            if len(_records(folder)) == k:
                break
            time.sleep(0.5)
        t0 = time.time()
        startup = t0 - started
        while time.time() - t0 < args.window_s and child.poll() is None:
            time.sleep(0.5)
        t1 = time.time()
    finally:
        if child.poll() is None:  # the level's sweep and its workers: one process group, ended together
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    output = child.stdout.read() if child.stdout else ""
    records = _records(folder)
    images = sum(_at(r, t1)["images"] - _at(r, t0)["images"] for r in records.values())
    tasks = sum(_at(r, t1)["tasks"] - _at(r, t0)["tasks"] for r in records.values())
    window = t1 - t0
    rate = images / window if window > 0 else 0.0
    row = {"runs": k, "started": len(records), "images_s": rate, "per_run": rate / k,
           "runs_h": 3600 * rate / train_images, "tasks": tasks, "startup_s": startup, "window_s": window,
           "gpu_mb": max((r[-1]["gpu_mb"] for r in records.values() if r), default=0.0)}
    print(f"{k} per GPU: {row['images_s']:.1f} stream images/s ({row['per_run']:.1f} per run), "
          f"~{row['runs_h']:.2f} finished runs/hour, {tasks} tasks completed in the {window:.0f} s window, "
          f"{len(records)}/{k} runs training after {startup:.0f} s, peak GPU memory per run "
          f"{row['gpu_mb'] / 1024:.1f} GiB", flush=True)
    if len(records) < k or child.returncode not in (None, 0, -signal.SIGTERM, -signal.SIGKILL):
        print("  level output:\n" + "\n".join("  | " + line for line in output.splitlines()[-20:]), flush=True)
    return row


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    store_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-gpu-campaign")
    parser.add_argument("--levels", default="1,2,4,8", help="runs per GPU to measure, e.g. 1,2,4,8")
    parser.add_argument("--window-s", type=float, default=60.0, help="seconds counted per level")
    parser.add_argument("--startup-s", type=float, default=90.0,
                        help="at most this long per level for every run to reach its first step")
    parser.add_argument("--cpus-per-run", type=int, default=2, help="torch threads per run (sweep --cpus-per-run)")
    parser.add_argument("--build-store-only", action="store_true", help="write the store and stop (no GPU)")
    parser.add_argument("--level", type=int, help=argparse.SUPPRESS)  # internal: the child of one level
    args = parser.parse_args()
    if args.level is not None:
        return level_main(args)
    train_images = build_store(args.store, args.scale, args.size)
    if args.build_store_only:
        return 0
    levels = [int(v) for v in args.levels.split(",") if v.strip()]
    root = args.out / time.strftime("campaign-%Y%m%d-%H%M%S")
    print(f"levels {levels}, {args.window_s:.0f} s counted per level after at most {args.startup_s:.0f} s of "
          f"start-up: at most about {len(levels) * (args.window_s + args.startup_s + 10) / 60:.1f} min; "
          f"{STRATEGY}, {train_images:,} training images per run, precision {args.precision}, channels_last "
          f"{args.channels_last}, results in {root}", flush=True)
    rows = [measure_level(args, k, root, train_images) for k in levels]
    print("\n| runs per GPU | stream img/s (all runs) | per run | finished runs/hour (est.) | tasks done in "
          "window | start-up s | peak GPU GiB per run |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['runs']} | {r['images_s']:.1f} | {r['per_run']:.1f} | {r['runs_h']:.2f} | {r['tasks']} | "
              f"{r['startup_s']:.0f} | {r['gpu_mb'] / 1024:.1f} |")
    best = max(rows, key=lambda r: r["runs_h"]) if rows else None
    if best:
        print(f"\nbest packing: {best['runs']} runs per GPU, ~{best['runs_h']:.2f} finished runs/hour")
    return 0


if __name__ == "__main__":
    sys.exit(main())
