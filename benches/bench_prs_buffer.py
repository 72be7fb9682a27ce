"""Speed and fidelity benchmark of the vectorised PRS buffer against the plain reference, and of
OCDM next to it.

A script to run by hand on the real label stream, from the repository root:

    python -m benches.bench_prs_buffer --labels ../shared/data/prs_splits/COCOseq/labels_cocoseq.json \
        [--capacity 2000 --rho -0.03 --seed 0 --reference-seed 1 --batch-size 10 --passes 5 \
         --skip-reference]

The stream: the training rows of the labels JSON as multi-hot vectors, tasks in the protocol order
(``--task-order``, COCOseq default 0,3,1,2), each task's rows shuffled with ``--shuffle-seed``
(default 0, as a training run would; pass -1 to keep file order). It is fed through the production
``PRSBuffer`` (seed ``--seed``), the reference ``ReferencePRS`` (seed ``--reference-seed``, a
different one on purpose: the two are compared in distribution), a ``ReservoirBuffer`` and an
``OCDMBuffer`` (seed ``--seed``, the same rho: the same target distribution as PRS).

What is timed: the production buffers (``PRSBuffer``, ``ReservoirBuffer``, ``OCDMBuffer``) the way the training loop
uses them (``cml_bench/replay.py``): one ``offer_batch`` call per consecutive ``--batch-size``-row
chunk of the stream (default 10, the protocol's mini-batch), input validation included; the reference
through its own interface, one ``offer`` call per sample. Only samples offered once the buffer is full
count (the chunk in which it fills is split there: the rows before are offered untimed, the rest as
one timed call). The figure is wall time per sample: elapsed time of the timed calls / samples. A
production buffer's pass over the stream takes a fraction of a second, so a burst of load from other
processes can inflate one pass: each production buffer makes ``--passes`` passes (default 5; a fresh
buffer with the same seed each time, so the very same decisions), every pass's figure is printed,
and the median pass is the one compared. The reference makes one pass (several seconds).

Reported: microseconds per sample once the buffer is full, the speed ratio, per-group and per-class
shares of label occurrences (buffer and plain stream), each buffer's KL divergence from the target
n_c^rho (over the classes seen; OCDM's objective), and PASS/FAIL lines for: production (median
pass) >= 50x faster per sample than the reference; production and reference per-group shares within
2 percentage points; minority share in the PRS buffer at least twice its stream share. The exit
status is 1 if a check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benches.reference_prs import ReferencePRS
from cml_bench.buffers import OCDMBuffer, PRSBuffer, ReservoirBuffer

GROUPS = ("majority", "moderate", "minority")
SPEEDUP_TARGET = 50.0
GROUP_TOLERANCE_PP = 2.0
MINORITY_FACTOR = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=Path, required=True, help="labels_<dataset>.json")
    parser.add_argument("--groups", type=Path, default=None,
                        help="folder of <dataset>_{majority,moderate,minority}.json "
                             "(default: <labels>/../../groups)")
    parser.add_argument("--dataset", default=None,
                        help="group file prefix (default: the labels file name after 'labels_')")
    parser.add_argument("--task-order", default="0,3,1,2", help="comma-separated task ids")
    parser.add_argument("--shuffle-seed", type=int, default=0,
                        help="shuffle each task's rows with this seed; -1 keeps file order")
    parser.add_argument("--capacity", type=int, default=2000)
    parser.add_argument("--rho", type=float, default=-0.03)
    parser.add_argument("--seed", type=int, default=0, help="seed of PRSBuffer, ReservoirBuffer and OCDMBuffer")
    parser.add_argument("--reference-seed", type=int, default=1, help="seed of ReferencePRS")
    parser.add_argument("--batch-size", type=int, default=10,
                        help="rows per offer_batch call for the production buffers (the mini-batch)")
    parser.add_argument("--passes", type=int, default=5,
                        help="timed passes of each production buffer; the median one is compared")
    parser.add_argument("--skip-reference", action="store_true", help="do not run the slow reference")
    return parser.parse_args(argv)


def load_stream(args: argparse.Namespace) -> tuple[list[str], np.ndarray]:
    data = json.loads(args.labels.read_text())
    classes = list(data["classes"])
    order = [t.strip() for t in args.task_order.split(",") if t.strip()]
    missing = [t for t in order if t not in data["train"]]
    if missing:
        raise SystemExit(f"Task(s) {missing} not in {args.labels} (has {sorted(data['train'])}).")
    blocks = []
    for task in order:
        rows = np.zeros((len(data["train"][task]), len(classes)), dtype=bool)
        for i, (_, _, labels) in enumerate(data["train"][task]):
            rows[i, labels] = True
        if args.shuffle_seed >= 0:
            rows = rows[np.random.default_rng(args.shuffle_seed).permutation(len(rows))]
        blocks.append(rows)
    return classes, np.concatenate(blocks)


def load_groups(args: argparse.Namespace, classes: list[str]) -> dict[str, list[int]]:
    folder = args.groups or args.labels.resolve().parent.parent / "groups"
    dataset = args.dataset or args.labels.stem.removeprefix("labels_")
    index = {name: i for i, name in enumerate(classes)}
    groups = {}
    for group in GROUPS:
        path = folder / f"{dataset}_{group}.json"
        if not path.exists():
            raise SystemExit(f"Group list {path} not found; pass --groups DIR or --dataset NAME.")
        names = json.loads(path.read_text())
        unknown = [n for n in names if n not in index]
        if unknown:
            raise SystemExit(f"{path} names classes not in the labels file: {unknown}")
        groups[group] = sorted(index[n] for n in names)
    return groups


def run(buffer, stream: np.ndarray, name: str, batch: int | None = None,
        progress: int = 5000) -> tuple[float, float, int, int]:
    """Feed the stream; return (µs per sample once full: wall time, CPU time of this process;
    samples offered then; admitted then).

    ``batch=None``: one ``buffer.offer(row)`` per sample. ``batch=k``: one ``buffer.offer_batch`` per
    consecutive k-row chunk, rows [0, k), [k, 2k), ... (the training loop's mini-batches). Samples
    offered while the buffer fills are not timed; the chunk in which it becomes full is split at that
    point (every sample is stored while it fills, so the point is known in advance). The rest is timed
    in blocks of about ``progress`` samples, with a progress line on stderr after each block (outside
    the timed part). The µs figures are nan if the buffer never filled.
    """
    step = batch or 1
    start = 0
    while start < len(stream) and len(buffer) < buffer.capacity:
        stop = min(start + buffer.capacity - len(buffer), (start // step + 1) * step, len(stream))
        if batch is None:
            buffer.offer(stream[start])
        else:
            buffer.offer_batch(stream[start:stop])
        start = stop
    bounds = [start, *range((start // step + 1) * step, len(stream), step), len(stream)]
    chunks = [stream[lo:hi] for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    per_block = max(1, progress // step)
    elapsed, cpu, admitted, done = 0.0, 0.0, 0, start
    for first in range(0, len(chunks), per_block):
        block = chunks[first : first + per_block]
        t0, c0 = time.perf_counter(), time.process_time()
        if batch is None:
            offer = buffer.offer
            slots = [offer(chunk[0]) for chunk in block]
        else:
            offer_batch = buffer.offer_batch
            slots = [slot for chunk in block for slot in offer_batch(chunk)]
        elapsed += time.perf_counter() - t0
        cpu += time.process_time() - c0
        admitted += sum(slot is not None for slot in slots)
        done += sum(len(chunk) for chunk in block)
        print(f"  {name}: {done}/{len(stream)} samples", file=sys.stderr)
    offers = len(stream) - start
    per = 1e6 / offers if offers else float("nan")
    return elapsed * per, cpu * per, offers, admitted


def run_passes(make, stream: np.ndarray, name: str, args: argparse.Namespace):
    """``args.passes`` timed passes of a fresh ``make()`` each through ``run`` in batch mode.

    Returns (the last buffer, (wall, CPU) µs per sample of each pass, samples offered once full,
    admitted then). Every pass must make the same decisions (same seed): checked on the slot labels
    it ends with.
    """
    figures, final = [], None
    for k in range(args.passes):
        buffer = make()
        us, cpu, offers, admitted = run(buffer, stream, f"{name} pass {k + 1}/{args.passes}",
                                        batch=args.batch_size)
        figures.append((us, cpu))
        if final is not None and not np.array_equal(final, buffer.slot_labels):
            raise AssertionError(f"{name}: pass {k + 1} ended with other slots than pass 1")
        final = buffer.slot_labels
    return buffer, figures, offers, admitted


def shares(counts: np.ndarray) -> np.ndarray:
    """Per-class share (%) of label occurrences."""
    counts = np.asarray(counts, dtype=float)
    return 100.0 * counts / counts.sum()


def kl_from_target(counts: np.ndarray, n_c: np.ndarray, rho: float) -> float:
    """KL(q || p) of the buffer's label distribution q from p_c = n_c^rho / Z over the seen classes."""
    seen = n_c > 0
    p = np.zeros(len(n_c))
    p[seen] = n_c[seen].astype(float) ** rho
    p /= p.sum()
    q = np.asarray(counts, dtype=float) / np.sum(counts)
    held = q > 0
    return float((q[held] * np.log(q[held] / p[held])).sum())


def check(ok: bool, text: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.batch_size < 1 or args.passes < 1:
        raise SystemExit(f"--batch-size and --passes must be >= 1, got {args.batch_size}, {args.passes}.")
    classes, stream = load_stream(args)
    groups = load_groups(args, classes)
    group_of = {c: g for g, members in groups.items() for c in members}
    order = "file order" if args.shuffle_seed < 0 else f"shuffled within task, seed {args.shuffle_seed}"
    print(f"stream: {len(stream)} samples, {len(classes)} classes, tasks {args.task_order} ({order}); "
          f"{int(stream.sum())} label occurrences, {int((stream.sum(1) == 0).sum())} samples without labels")
    print(f"buffer: capacity {args.capacity}, rho {args.rho}, seed {args.seed}, "
          f"reference seed {args.reference_seed}")

    m = len(classes)
    prs, passes_prs, offers, adm_prs = run_passes(
        lambda: PRSBuffer(args.capacity, m, seed=args.seed, rho=args.rho), stream, "PRSBuffer", args)
    crs, passes_crs, _, adm_crs = run_passes(
        lambda: ReservoirBuffer(args.capacity, m, seed=args.seed), stream, "ReservoirBuffer", args)
    ocdm, passes_ocdm, _, adm_ocdm = run_passes(
        lambda: OCDMBuffer(args.capacity, m, seed=args.seed, rho=args.rho), stream, "OCDMBuffer", args)
    walls_prs, walls_crs = [w for w, _ in passes_prs], [w for w, _ in passes_crs]
    walls_ocdm = [w for w, _ in passes_ocdm]
    us_prs, us_crs = float(np.median(walls_prs)), float(np.median(walls_crs))
    us_ocdm = float(np.median(walls_ocdm))
    cpu_ocdm = float(np.median([c for _, c in passes_ocdm]))
    cpu_prs = float(np.median([c for _, c in passes_prs]))
    assert (prs.class_counts == prs.slot_labels.sum(0)).all()
    results = {"stream": shares(stream.sum(0)), "PRS": shares(prs.class_counts)}
    us_ref, cpu_ref, adm_ref = float("nan"), float("nan"), 0
    if not args.skip_reference:
        ref = ReferencePRS(args.capacity, m, seed=args.reference_seed, rho=args.rho)
        us_ref, cpu_ref, _, adm_ref = run(ref, stream, "ReferencePRS")
        assert (ref.class_counts == ref.slot_labels.sum(0)).all()
        results["reference"] = shares(ref.class_counts)
    results["reservoir"] = shares(crs.class_counts)
    results["OCDM"] = shares(ocdm.class_counts)
    counts = {"PRS": prs.class_counts, "OCDM": ocdm.class_counts, "reservoir": crs.class_counts}
    if not args.skip_reference:
        counts["reference"] = ref.class_counts

    print(f"\nload average while running (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs; the runs are sequential in one process")
    print(f"timed: PRSBuffer, ReservoirBuffer and OCDMBuffer through offer_batch on consecutive {args.batch_size}-row "
          f"chunks (as cml_bench/replay.py calls it, validation included), median of {args.passes} passes; "
          f"ReferencePRS through offer, one call per sample, one pass; only the {offers} samples offered "
          f"once the buffer is full (wall time)")
    print(f"µs per sample once full, each pass: PRSBuffer {' '.join(f'{x:.2f}' for x in walls_prs)}; "
          f"ReservoirBuffer {' '.join(f'{x:.2f}' for x in walls_crs)}; "
          f"OCDMBuffer {' '.join(f'{x:.2f}' for x in walls_ocdm)}")
    print(f"µs per sample once full: PRSBuffer {us_prs:.2f} (median pass), ReservoirBuffer {us_crs:.2f} "
          f"(median pass), OCDMBuffer {us_ocdm:.2f} (median pass, {us_ocdm / us_prs:.1f}x PRSBuffer), "
          f"ReferencePRS {us_ref:.1f}")
    print(f"the same in CPU time of this process (less sensitive to other load; not the checked figure): "
          f"PRSBuffer {cpu_prs:.2f} (median pass), ReferencePRS {cpu_ref:.1f}, ratio {cpu_ref / cpu_prs:.1f}x; "
          f"OCDMBuffer {cpu_ocdm:.2f} (median pass, {cpu_ocdm / cpu_prs:.1f}x PRSBuffer)")
    print(f"admitted of the {offers} samples offered once full: PRSBuffer {adm_prs}, ReservoirBuffer {adm_crs}, "
          f"OCDMBuffer {adm_ocdm}"
          + ("" if args.skip_reference else f", ReferencePRS {adm_ref}"))

    print("\nper-group share of label occurrences (%):")
    cols = list(results)
    print(f"  {'group':<10}{'classes':>8}" + "".join(f"{c:>11}" for c in cols))
    group_share = {c: {g: float(results[c][groups[g]].sum()) for g in GROUPS} for c in cols}
    for g in GROUPS:
        print(f"  {g:<10}{len(groups[g]):>8}" + "".join(f"{group_share[c][g]:>11.2f}" for c in cols))

    n_c = prs.n_c
    print(f"\nKL divergence of the buffer's label distribution from the target n_c^{args.rho} (seen classes, "
          f"final n_c): " + ", ".join(f"{name} {kl_from_target(c, n_c, args.rho):.4f}" for name, c in counts.items()))

    print("\nper-class share of label occurrences (%), in class-index order:")
    print(f"  {'class':<16}{'group':<10}" + "".join(f"{c:>11}" for c in cols))
    for i, name in enumerate(classes):
        print(f"  {name:<16}{group_of.get(i, '?'):<10}" + "".join(f"{results[c][i]:>11.2f}" for c in cols))

    print()
    ok = True
    if args.skip_reference:
        print("SKIP: speed ratio and reference agreement (--skip-reference)")
    else:
        ratio = us_ref / us_prs
        print(f"speed ratio reference / production (µs per sample): {ratio:.1f}x with the median pass "
              f"({us_ref / max(walls_prs):.1f}x with the slowest, {us_ref / min(walls_prs):.1f}x with the "
              f"fastest)")
        ok &= check(ratio >= SPEEDUP_TARGET,
                    f"production {ratio:.1f}x faster per sample, median pass (target >= {SPEEDUP_TARGET:.0f}x)")
        worst = max(abs(group_share["PRS"][g] - group_share["reference"][g]) for g in GROUPS)
        ok &= check(worst <= GROUP_TOLERANCE_PP,
                    f"production vs reference per-group shares differ by at most {worst:.2f} pp "
                    f"(target <= {GROUP_TOLERANCE_PP:.0f} pp)")
    minority_buf, minority_stream = group_share["PRS"]["minority"], group_share["stream"]["minority"]
    ok &= check(minority_buf >= MINORITY_FACTOR * minority_stream,
                f"minority share in PRS buffer {minority_buf:.2f}% vs stream {minority_stream:.2f}% "
                f"({minority_buf / minority_stream:.1f}x; target >= {MINORITY_FACTOR:.0f}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
