"""Full-size throughput check: ResNet-101 at 256 px on a COCOseq-sized stream, through the real pipeline.

Not a test (pytest does not collect it): a script for a GPU machine.

    python tests/bench_gpu_stream.py --store /tmp/cocoseq-synth --device cuda \
        [--strategies prs+ssca,finetune --scale 1.0 --size 256 --budget-s 480]

What it does:
1. Writes a ``cocoseq`` store (the format `data prepare cocoseq` writes: memory-mapped uint8 images,
   index, published groups) whose label side is COCOseq-sized: synth-cocoseq's label sets at
   ``--scale`` 1.0 (35k training images over the 4 tasks with COCOseq's per-class counts) and a
   test set of COCOseq's size; the pixels are random (throughput does not depend on them).
2. Runs each strategy with ``cml_bench.runner.run`` on ``--benchmark cocoseq`` with the benchmark's
   protocol settings (ResNet-101, layer 4, batch 10 + 10 replayed, Adam), ``pretrained=False``.
3. Times, with the device synchronised, the model's share of training: forward + loss + backward +
   clipping + optimiser step (Avalanche's ``before_forward`` .. ``after_update``). Everything else in
   a training task (memory-mapped reads, collation, host-to-device copies, replay sampling and the
   buffer's decisions, plugin hooks) is "outside the model".

Printed per strategy: stream images/s (incoming images / training time), processed images/s
(incoming + replayed), the share of training time outside the model, evaluation time, total wall.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import cocoseq, synth_cocoseq as synth  # noqa: E402
from cml_bench.registry import STRATEGIES, split_head  # noqa: E402
from cml_bench.runner import resolve_config, run  # noqa: E402
from cml_bench.store import StorePart, write_store  # noqa: E402
from cml_bench.strategy import StrategySpec  # noqa: E402


def build_store(out: Path, scale: float, size: int) -> int:
    """Write the COCOseq-sized store; returns the number of training images."""
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

    def reader(path: str, side: int) -> np.ndarray:
        seed = int.from_bytes(path.encode()[-8:].rjust(8, b"\0"), "little")
        return np.random.default_rng(seed).integers(0, 256, size=(3, side, side), dtype=np.uint8)

    start = time.perf_counter()
    write_store(out, parts, names, builder="cocoseq", builder_version=cocoseq.BUILDER_VERSION,
                size=size, info=info, chunk_rows=1024, reader=reader)
    print(f"store: {train_images:,} training images at {size} px written to {out} "
          f"in {time.perf_counter() - start:.0f} s", flush=True)
    return train_images


class ModelTimer(SupervisedPlugin):
    """Synchronised wall time of the model step and of whole training tasks."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.model_s = self.train_s = 0.0
        self.processed = self.iterations = self.incoming = 0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def before_training_exp(self, strategy, **kwargs):
        self._exp = self._now()

    def after_training_exp(self, strategy, **kwargs):
        self.train_s += self._now() - self._exp
        self.incoming += len(strategy.experience.dataset)
        print(f"  so far: {self.incoming / self.train_s:.1f} stream images/s, "
              f"{self.processed / self.train_s:.1f} processed images/s, "
              f"{100 * (1 - self.model_s / self.train_s):.1f}% of training time outside the model", flush=True)

    def before_forward(self, strategy, **kwargs):
        self._step = self._now()
        self.processed += len(strategy.mb_x)
        self.iterations += 1

    def after_update(self, strategy, **kwargs):
        self.model_s += self._now() - self._step


def timed(name: str, timer: ModelTimer) -> str:
    """Register ``timed-<name>``: the strategy's own plugins plus the timer (through the plugin API)."""
    base, head = split_head(name)
    spec = STRATEGIES.get(base)
    STRATEGIES.register(f"timed-{base}", StrategySpec(
        name=f"timed-{base}", options=spec.options, description=spec.description, reference=spec.reference,
        joint=spec.joint, build=lambda options, ctx: list(spec.build(options, ctx)) + [timer]))
    return f"timed-{base}" + (f"+{head}" if head != "pooled" else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "cocoseq-synth")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-gpu-results")
    parser.add_argument("--strategies", default="prs+ssca,finetune")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="do not start another strategy after this many seconds")
    args = parser.parse_args()
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    images = build_store(args.store, args.scale, args.size)
    rows = []
    for name in args.strategies.split(","):
        if time.perf_counter() - start > args.budget_s:
            print(f"{name}: skipped (time budget spent)")
            continue
        timer = ModelTimer(device)
        config = resolve_config({
            "benchmark": {"name": "cocoseq", "options": {"root": str(args.store)}},
            "strategy": {"name": timed(name, timer)}, "model": {"pretrained": False},
            "eval": {"batch_size": 100}, "device": args.device, "seed": 0})
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
