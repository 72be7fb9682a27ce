"""Full-size throughput check: ResNet-101 at 256 px on a COCOseq-sized stream, through the real pipeline.

A script for a GPU machine, run from the repository root. Two steps, so that the GPU's time goes
to the stream (the first needs no GPU, and is skipped when the store already exists):

    python -m benches.bench_gpu_stream --build-store-only
    python -m benches.bench_gpu_stream --device cuda [--precision bf16 --channels-last]

What it does:
1. Writes (or reuses) a ``cocoseq`` store (the format `data prepare cocoseq` writes: memory-mapped
   uint8 images, index, published groups) whose label side is COCOseq-sized: synth-cocoseq's label
   sets at ``--scale`` 1.0 (35k training images over the 4 tasks with COCOseq's per-class counts) and
   a test set of COCOseq's size. The pixels are noise (throughput does not depend on them), taken from
   a small pool of random images so that writing them costs only the disk.
2. Runs each strategy with ``cml_bench.runner.run`` on ``--benchmark cocoseq`` with the benchmark's
   protocol settings (ResNet-101, layer 4, batch 10 + 10 replayed, Adam), ``pretrained=False``, and
   ``train.precision`` / ``train.channels_last`` / ``train.num_workers`` from the flags.
3. Times the model's share of training: forward + loss + backward + clipping + optimiser step
   (Avalanche's ``before_forward`` .. ``after_update``), with CUDA events on a GPU, so that measuring
   adds no synchronisation; the wall time of each task is taken with the device synchronised at its
   start and end. Everything else in a training task (memory-mapped reads, collation, host-to-device
   copies, replay sampling and the buffer's decisions, plugin hooks, and the GPU waiting for any of
   them) is "outside the model".

Printed, unbuffered, after every task and per strategy: stream images/s (incoming images / training
time), processed images/s (incoming + replayed), the share of training time outside the model,
evaluation time, total wall.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from avalanche.core import SupervisedPlugin

from benchmarks import cocoseq, synth_cocoseq as synth
from cml_bench.cli import _parse_set
from cml_bench.config import merge
from cml_bench.registry import STRATEGIES, split_head
from cml_bench.runner import resolve_config, run
from cml_bench.store import StorePart, write_store
from cml_bench.strategy import StrategySpec

NOISE_POOL = 64  # distinct random images the store's pixels are drawn from


def build_store(out: Path, scale: float, size: int) -> int:
    """Write (or reuse, when one with the same labels and size exists) the COCOseq-sized store;
    returns the number of training images."""
    rng = np.random.default_rng([0, synth.GENERATOR_VERSION])
    counts = synth.scaled_counts(scale)
    names = list(synth.CLASS_NAMES)
    parts, train_images = [], 0
    for task, classes in enumerate(synth.COCOSEQ_TASK_CLASSES):
        partners = synth._partners(rng, classes)
        per_class = max(1, round(scale * cocoseq.PROTOCOL_TEST[task] / len(classes)))
        for split, sets in (("train", synth.train_label_sets(rng, counts, classes, partners)),
                            ("test", synth.test_label_sets(rng, per_class, classes, partners))):
            labels = np.zeros((len(sets), len(names)), dtype=np.uint8)
            for row, labs in enumerate(sets):
                labels[row, labs] = 1
            ids = [f"{split}{task}-{i}" for i in range(len(sets))]
            parts.append(StorePart(split, task, ids, ids, labels))
            train_images += len(sets) if split == "train" else 0
    groups = synth.class_groups(counts, scale)
    info = {"published_groups": {g: [names[c] for c in cols] for g, cols in groups.items()}}
    pool = np.random.default_rng(0).integers(0, 256, size=(NOISE_POOL, 3, size, size), dtype=np.uint8)

    def reader(path: str, side: int) -> np.ndarray:
        return pool[int.from_bytes(path.encode()[-8:].rjust(8, b"\0"), "little") % NOISE_POOL]

    start = time.perf_counter()
    result = write_store(out, parts, names, builder="cocoseq", builder_version=cocoseq.BUILDER_VERSION,
                         size=size, info=info, chunk_rows=1024, reader=reader)
    what = "reused" if result.reused else f"written in {time.perf_counter() - start:.0f} s"
    print(f"store: {train_images:,} training images at {size} px in {out} ({what})", flush=True)
    return train_images


class ModelTimer(SupervisedPlugin):
    """Time of the model step (CUDA events on a GPU: no synchronisation) and of whole training tasks."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.cuda = device.type == "cuda"
        self.model_s = self.train_s = 0.0
        self.processed = self.iterations = self.incoming = 0
        self.tasks: list[tuple[int, float, float, float]] = []  # (task, stream img/s, processed img/s, outside %)

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def before_training_exp(self, strategy, **kwargs):
        self._steps, self._processed = [], 0
        self._exp = self._now()

    def after_training_exp(self, strategy, **kwargs):
        wall = self._now() - self._exp  # synchronised: every event below has completed
        if self.cuda:
            model = sum(start.elapsed_time(end) for start, end in self._steps) / 1000
        else:
            model = sum(end - start for start, end in self._steps)
        incoming = len(strategy.experience.dataset)
        self.train_s += wall
        self.model_s += model
        self.incoming += incoming
        self.processed += self._processed
        self.iterations += len(self._steps)
        row = (strategy.experience.current_experience, incoming / wall, self._processed / wall,
               100 * (1 - model / wall))
        self.tasks.append(row)
        print(f"  task {row[0]}: {row[1]:.1f} stream images/s, {row[2]:.1f} processed images/s, "
              f"{row[3]:.1f}% of training time outside the model ({incoming:,} images in {wall:.0f} s)", flush=True)

    def before_forward(self, strategy, **kwargs):
        self._start = self._mark()
        self._processed += len(strategy.mb_x)

    def after_update(self, strategy, **kwargs):
        self._steps.append((self._start, self._mark()))


def timed(name: str, timer: ModelTimer) -> str:
    """Register ``timed-<name>``: the strategy's own plugins plus the timer (through the plugin API)."""
    base, head = split_head(name)
    spec = STRATEGIES.get(base)
    STRATEGIES.register(f"timed-{base}", StrategySpec(
        name=f"timed-{base}", options=spec.options, description=spec.description, reference=spec.reference,
        joint=spec.joint, build=lambda options, ctx: list(spec.build(options, ctx)) + [timer]))
    return f"timed-{base}" + (f"+{head}" if head != "pooled" else "")


def store_arguments(parser: argparse.ArgumentParser) -> None:
    """The store and run-setting flags this script shares with ``bench_gpu_campaign.py``."""
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "cocoseq-synth")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of COCOseq's per-class counts")
    parser.add_argument("--size", type=int, default=256, help="stored image side in pixels")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="train.precision")
    parser.add_argument("--channels-last", action="store_true", help="train.channels_last")
    parser.add_argument("--num-workers", type=int, default=0, help="train.num_workers (DataLoader workers)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="further config overrides, as in `run --set` (e.g. model.backbone=resnet50)")


def run_layer(args: argparse.Namespace, strategy: str) -> dict:
    """The config layer of one benchmark run from the shared flags."""
    layer = {"benchmark": {"name": "cocoseq", "options": {"root": str(args.store)}},
             "strategy": {"name": strategy}, "model": {"pretrained": False},
             "train": {"precision": args.precision, "channels_last": args.channels_last,
                       "num_workers": args.num_workers},
             "eval": {"batch_size": 100}, "device": args.device, "seed": 0}
    return merge(layer, _parse_set(args.set))


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress must reach a log as it happens
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    store_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-gpu-results")
    parser.add_argument("--strategies", default="prs+ssca")
    parser.add_argument("--build-store-only", action="store_true", help="write the store and stop (no GPU)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="do not start another strategy after this many seconds")
    args = parser.parse_args()
    start = time.perf_counter()
    images = build_store(args.store, args.scale, args.size)
    if args.build_store_only:
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    print(f"precision {args.precision}, channels_last {args.channels_last}, num_workers {args.num_workers}",
          flush=True)
    rows = []
    for name in args.strategies.split(","):
        if time.perf_counter() - start > args.budget_s:
            print(f"{name}: skipped (time budget spent)", flush=True)
            continue
        timer = ModelTimer(device)
        config = resolve_config(run_layer(args, timed(name, timer)))
        result = run(config, args.out, log=lambda m: print(m, flush=True))
        outside = 1 - timer.model_s / timer.train_s
        eval_s = result.wall_time_s - timer.train_s
        rows.append((name, images / timer.train_s, timer.processed / timer.train_s, 100 * outside,
                     timer.train_s, eval_s, result.wall_time_s))
        print(f"{name}: {images / timer.train_s:.1f} stream images/s, {timer.processed / timer.train_s:.1f} "
              f"processed images/s ({timer.iterations} steps), {100 * outside:.1f}% of training time outside "
              f"the model; training {timer.train_s:.0f} s, evaluation and setup {eval_s:.0f} s", flush=True)
    print("\n| strategy | stream img/s | processed img/s | outside model | train s | eval+setup s | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| {} | {:.1f} | {:.1f} | {:.1f}% | {:.0f} | {:.0f} | {:.0f} |".format(*row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
