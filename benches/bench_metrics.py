"""Speed of the metric suite the evaluator runs, on a COCOseq-sized test set.

A script to run by hand, from the repository root:

    python -m benches.bench_metrics [--images 6366 --classes 70 --repeats 30 --seed 0 --top-k 0]

The input: ``--images`` x ``--classes`` sigmoid scores (float32, as the evaluator's ``predict``
returns them) and 0/1 targets with a long-tailed class prevalence (class c is positive with
probability 0.3 / (1 + c / 4), 1-4 labels per image on average like COCOseq), and three class groups
(majority / moderate / minority, by prevalence: the first 15, the next 35, the last 20 columns).
Some scores are exactly 0.5 (ties on the threshold) and ties between images are common (scores
rounded to 1e-3), as with a real model's float32 outputs.

What is timed: one ``metrics.group_metrics(scores, targets, groups)`` call, the evaluator's metric
suite for one evaluation (all classes + each group; with ``--top-k 3`` also the generic family's
top-3 metrics where the installed version takes ``top_k``), input validation included. Each call is
timed ``--repeats`` times; the median wall and CPU (process) time per call are printed, because a
loaded machine inflates single calls. Also printed: the largest difference between our per-class
AP and ``100 * sklearn.metrics.average_precision_score`` (a sanity check, not timed).
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import time

import numpy as np

from cml_bench import metrics


def make_inputs(images: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    rng = np.random.default_rng(seed)
    prevalence = 0.3 / (1 + np.arange(classes) / 4)
    targets = (rng.random((images, classes)) < prevalence).astype(np.uint8)
    logits = rng.normal(size=(images, classes)) + 1.5 * targets - 1.0
    scores = np.round(1 / (1 + np.exp(-logits)), 3).astype(np.float32)
    first, second = round(classes * 15 / 70), round(classes * 50 / 70)
    groups = {"majority": list(range(first)), "moderate": list(range(first, second)),
              "minority": list(range(second, classes))}
    return scores, targets, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6366)
    parser.add_argument("--classes", type=int, default=70)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=0, help="also the top-k metrics (the generic family)")
    args = parser.parse_args()
    scores, targets, groups = make_inputs(args.images, args.classes, args.seed)
    kwargs = {}
    if args.top_k:
        if "top_k" not in inspect.signature(metrics.group_metrics).parameters:
            raise SystemExit("This version's group_metrics takes no top_k; run without --top-k.")
        kwargs["top_k"] = args.top_k
    metrics.group_metrics(scores, targets, groups, **kwargs)  # warm-up
    wall, cpu = [], []
    for _ in range(args.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        metrics.group_metrics(scores, targets, groups, **kwargs)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    print(f"group_metrics on {args.images} x {args.classes} (all classes + {len(groups)} groups"
          f"{f', top-{args.top_k}' if args.top_k else ''}): median {1e3 * statistics.median(wall):.1f} ms wall, "
          f"{1e3 * statistics.median(cpu):.1f} ms CPU per call ({args.repeats} calls; "
          f"min {1e3 * min(wall):.1f} ms wall)")
    from sklearn.metrics import average_precision_score
    ours = metrics.average_precision(scores, targets)
    theirs = np.array([100 * average_precision_score(targets[:, c], scores[:, c]) for c in range(args.classes)])
    print(f"largest |AP - 100 * sklearn AP| over the {args.classes} classes: {np.abs(ours - theirs).max():.2e}")


if __name__ == "__main__":
    main()
