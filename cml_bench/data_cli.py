"""``python -m cml_bench data {prepare, inspect} DATASET``: build and check prepared data stores.

Heavy imports happen inside the commands, so adding these parsers costs nothing at start-up.
Errors are the usual user errors (``FileNotFoundError``, ``ValueError``...) that ``cli.main`` prints
as one line.
"""
from __future__ import annotations

import argparse
import sys
import time

DATASETS = ("cocoseq",)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="which stream (cocoseq)")
    parser.add_argument("--coco-root", required=True, metavar="DIR",
                        help="COCO 2014 folder: annotations/instances_{train,val}2014.json, train2014/, val2014/")
    parser.add_argument("--splits", required=True, metavar="DIR",
                        help="PRS id lists, laid out like prs_splits/COCOseq (multihot_map.json, ids/)")
    parser.add_argument("--groups", metavar="DIR",
                        help="published group lists cocoseq_{majority,moderate,minority}.json "
                             "(default: ../groups beside --splits)")


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data prepare`` and ``data inspect`` to the top-level command parsers."""
    data = subparsers.add_parser("data", help="prepare or inspect a real dataset (COCOseq)")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    prep = sub.add_parser("prepare", help="decode, resize and store the images for training (resumable)",
                          description="Read the annotations, id lists and images; write a memory-mapped "
                                      "store of uint8 images (resumable if interrupted); print per-task "
                                      "and per-class counts and their check against PROTOCOL.md.")
    _common(prep)
    prep.add_argument("--out", required=True, metavar="DIR", help="the store folder to write")
    prep.add_argument("--size", type=int, default=256, help="image side in pixels (default 256, the protocol's)")
    prep.add_argument("--skip-bad-images", action="store_true",
                      help="leave out missing, unreadable or truncated images (listed in the report)")
    prep.add_argument("--force", action="store_true", help="rebuild an existing store (e.g. of another version)")
    prep.set_defaults(func=cmd_data_prepare)

    insp = sub.add_parser("inspect", help="counts, groups and PROTOCOL.md checks from the annotations alone",
                          description="Check the id lists against the annotations without reading images.")
    _common(insp)
    insp.set_defaults(func=cmd_data_inspect)
    return data


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from benchmarks.cocoseq import inspect

    print(inspect(args.coco_root, args.splits, args.groups).text())
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from benchmarks.cocoseq import prepare

    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        # one updating line on a terminal, nothing per chunk in a log file
        if sys.stderr.isatty():
            print(f"\r  {done:,} / {total:,} images ({time.perf_counter() - start:.0f} s)", end="",
                  file=sys.stderr, flush=True)

    report = prepare(args.coco_root, args.splits, args.out, groups=args.groups, size=args.size,
                     skip_bad_images=args.skip_bad_images, force=args.force, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.text())
    print(f"\nStore: {args.out} (use it with --benchmark cocoseq --set benchmark.options.root={args.out})")
    return 0
