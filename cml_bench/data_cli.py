"""``python -m cml_bench data {prepare, inspect} DATASET``: build and check prepared data stores.

Each dataset is a module ``benchmarks/<dataset>.py`` with ``inspect(**source)`` and
``prepare(**source, out=, size=, skip_bad_images=, force=, progress=)``; ``source`` is its own
command-line options (``coco_root``, ``splits``...), added by the function named in ``DATASETS``.
Heavy imports happen inside the commands, so adding these parsers costs nothing at start-up.
Errors are the usual user errors (``FileNotFoundError``, ``ValueError``...) that ``cli.main`` prints
as one line.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Callable

COCO_ROOT_HELP = "COCO 2014 folder: annotations/instances_{train,val}2014.json, train2014/, val2014/"


def _cocoseq_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coco-root", required=True, metavar="DIR", help=COCO_ROOT_HELP)
    parser.add_argument("--splits", required=True, metavar="DIR",
                        help="PRS id lists, laid out like prs_splits/COCOseq (multihot_map.json, ids/)")
    parser.add_argument("--groups", metavar="DIR",
                        help="published group lists cocoseq_{majority,moderate,minority}.json "
                             "(default: ../groups beside --splits)")


def _coco2014_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coco-root", required=True, metavar="DIR", help=COCO_ROOT_HELP)


def _voc2007_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voc-root", required=True, metavar="DIR",
                        help="VOCdevkit folder (VOC2007/ImageSets/Main, VOC2007/JPEGImages) of the trainval "
                             "and test archives")


# dataset -> (one line, default image side, its source options, their argument names)
DATASETS: dict[str, tuple[str, int, Callable[[argparse.ArgumentParser], None], tuple[str, ...]]] = {
    "cocoseq": ("COCOseq (PRS): 4 tasks, 70 classes", 256, _cocoseq_source, ("coco_root", "splits", "groups")),
    "coco2014": ("MS-COCO 2014, one task, 80 classes", 448, _coco2014_source, ("coco_root",)),
    "voc2007": ("PASCAL VOC 2007, one task, 20 classes", 448, _voc2007_source, ("voc_root",)),
}


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data prepare`` and ``data inspect`` to the top-level command parsers."""
    data = subparsers.add_parser("data", help=f"prepare or inspect a real dataset ({', '.join(DATASETS)})")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    prep = sub.add_parser("prepare", help="decode, resize and store the images for training (resumable)",
                          description="Read the annotations and images; write a memory-mapped store of uint8 "
                                      "images (resumable if interrupted); print the image and per-class counts "
                                      "and their check against the published numbers.")
    insp = sub.add_parser("inspect", help="counts and checks from the annotations alone",
                          description="Check the annotations (and id lists) without reading images.")
    prep_sets = prep.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    insp_sets = insp.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, (line, size, add_source, _) in DATASETS.items():
        p = prep_sets.add_parser(name, help=line, description=f"Prepare {line}.")
        add_source(p)
        p.add_argument("--out", required=True, metavar="DIR", help="the store folder to write")
        p.add_argument("--image-size", "--size", dest="size", type=int, default=size,
                       help=f"image side in pixels after resizing (default {size})")
        p.add_argument("--skip-bad-images", action="store_true",
                       help="leave out missing, unreadable or truncated images (listed in the report)")
        p.add_argument("--force", action="store_true", help="rebuild an existing store (e.g. of another version)")
        p.set_defaults(func=cmd_data_prepare)
        i = insp_sets.add_parser(name, help=line, description=f"Inspect {line} from its annotations.")
        add_source(i)
        i.set_defaults(func=cmd_data_inspect)
    return data


def _source(args: argparse.Namespace) -> dict[str, object]:
    return {key: getattr(args, key) for key in DATASETS[args.dataset][3]}


def cmd_data_inspect(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"benchmarks.{args.dataset}")
    print(module.inspect(**_source(args)).text())
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"benchmarks.{args.dataset}")
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        # one updating line on a terminal, nothing per chunk in a log file
        if sys.stderr.isatty():
            print(f"\r  {done:,} / {total:,} images ({time.perf_counter() - start:.0f} s)", end="",
                  file=sys.stderr, flush=True)

    report = module.prepare(**_source(args), out=args.out, size=args.size, skip_bad_images=args.skip_bad_images,
                            force=args.force, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.text())
    print(f"\nStore: {args.out} (use it with --benchmark {args.dataset} --set benchmark.options.root={args.out})")
    return 0
