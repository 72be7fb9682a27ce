"""``python -m cml_bench data {prepare, inspect} DATASET``: build and check prepared data stores.

Each dataset names the functions that read it (``module:function``), its root folder option and
whether it takes PRS id lists (``--splits``, ``--groups``). Heavy imports happen inside the
commands, so adding these parsers costs nothing at start-up. Errors are the usual user errors
(``FileNotFoundError``, ``ValueError``...) that ``cli.main`` prints as one line.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class DataSource:
    """How the ``data`` commands reach one dataset.

    Attributes:
        inspect, prepare: ``module:function``; called as ``inspect(root[, splits, groups])`` and
            ``prepare(root[, splits], out, groups=, size=, skip_bad_images=, force=, progress=)``.
        root_flag, root_help: the dataset's root folder option.
        splits: whether it reads PRS id lists (``--splits``, ``--groups``).
        size: the default stored image side.
    """

    inspect: str
    prepare: str
    root_flag: str
    root_help: str
    splits: bool
    size: int


COCO_ROOT = ("--coco-root", "COCO 2014 folder: annotations/instances_{train,val}2014.json, train2014/, val2014/")
NUSWIDE_ROOT = ("--nuswide-root", "NUS-WIDE folder: ImageList/{Train,Test}Imagelist.txt, TrainTestLabels/"
                                  "Labels_<concept>_{Train,Test}.txt, Concepts81.txt, Flickr/<concept>/<file>.jpg")
DATASETS = {
    "cocoseq": DataSource("benchmarks.cocoseq:inspect", "benchmarks.cocoseq:prepare", *COCO_ROOT, True, 256),
    "nuswideseq": DataSource("benchmarks.nuswide:inspect_seq", "benchmarks.nuswide:prepare_seq", *NUSWIDE_ROOT,
                             True, 256),
    "nuswide": DataSource("benchmarks.nuswide:inspect_single", "benchmarks.nuswide:prepare_single",
                          *NUSWIDE_ROOT, False, 448),
}


def _function(path: str) -> Callable[..., Any]:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _add_dataset(parser: argparse.ArgumentParser, name: str, source: DataSource) -> None:
    dest = source.root_flag.lstrip("-").replace("-", "_")
    parser.add_argument(source.root_flag, dest=dest, required=True, metavar="DIR", help=source.root_help)
    if source.splits:
        parser.add_argument("--splits", required=True, metavar="DIR",
                            help="the stream's PRS id lists, a folder like prs_splits/COCOseq or "
                                 "prs_splits/NUSWIDEseq (multihot_map.json, ids/)")
        parser.add_argument("--groups", metavar="DIR",
                            help=f"published group lists {name}_{{majority,moderate,minority}}.json "
                                 "(default: ../groups beside --splits)")
    parser.set_defaults(dataset=name, root_dest=dest)


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data prepare DATASET`` and ``data inspect DATASET`` to the top-level command parsers."""
    data = subparsers.add_parser("data", help=f"prepare or inspect a real dataset ({', '.join(DATASETS)})")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    prep = sub.add_parser("prepare", help="decode, resize and store the images for training (resumable)",
                          description="Read the labels, id lists and images; write a memory-mapped "
                                      "store of uint8 images (resumable if interrupted); print per-task "
                                      "and per-class counts and their check against PROTOCOL.md.")
    insp = sub.add_parser("inspect", help="counts, groups and PROTOCOL.md checks from the labels alone",
                          description="Check the id lists against the labels without reading images.")
    prep_sets = prep.add_subparsers(dest="dataset_name", metavar="DATASET", required=True)
    insp_sets = insp.add_subparsers(dest="dataset_name", metavar="DATASET", required=True)
    for name, source in DATASETS.items():
        p = prep_sets.add_parser(name, help=f"prepare the {name} store")
        _add_dataset(p, name, source)
        p.add_argument("--out", required=True, metavar="DIR", help="the store folder to write")
        p.add_argument("--image-size", "--size", dest="size", type=int, default=source.size,
                       help=f"stored image side in pixels (default {source.size})")
        p.add_argument("--skip-bad-images", action="store_true",
                       help="leave out unreadable or truncated (and, for COCO, missing) images, listed in the report")
        p.add_argument("--force", action="store_true", help="rebuild an existing store (e.g. of another version)")
        p.set_defaults(func=cmd_data_prepare)
        _add_dataset(insp_sets.add_parser(name, help=f"check {name} without reading images"), name, source)
    insp.set_defaults(func=cmd_data_inspect)
    return data


def _inputs(args: argparse.Namespace) -> list[Any]:
    root = getattr(args, args.root_dest)
    return [root, args.splits] if DATASETS[args.dataset].splits else [root]


def cmd_data_inspect(args: argparse.Namespace) -> int:
    inspect = _function(DATASETS[args.dataset].inspect)
    groups = {"groups": args.groups} if DATASETS[args.dataset].splits else {}
    print(inspect(*_inputs(args), **groups).text())
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    prepare = _function(DATASETS[args.dataset].prepare)
    groups = {"groups": args.groups} if DATASETS[args.dataset].splits else {}
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        # one updating line on a terminal, nothing per chunk in a log file
        if sys.stderr.isatty():
            print(f"\r  {done:,} / {total:,} images ({time.perf_counter() - start:.0f} s)", end="",
                  file=sys.stderr, flush=True)

    report = prepare(*_inputs(args), args.out, size=args.size, skip_bad_images=args.skip_bad_images,
                     force=args.force, progress=progress, **groups)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.text())
    print(f"\nStore: {args.out} (use it with --benchmark {args.dataset} --set benchmark.options.root={args.out})")
    return 0
