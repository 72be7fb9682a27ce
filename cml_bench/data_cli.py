"""``python -m cml_bench data {prepare, inspect} DATASET``: build and check prepared data stores.

Each dataset has its own sub-command with its own inputs (``cocoseq``: --coco-root / --splits;
``pa100k`` / ``rap_zs`` / ``peta_zs``: --root, and --split-file for the zero-shot pickles).

Heavy imports happen inside the commands, so adding these parsers costs nothing at start-up.
Errors are the usual user errors (``FileNotFoundError``, ``ValueError``...) that ``cli.main`` prints
as one line.
"""
from __future__ import annotations

import argparse
import sys
import time

DATASETS = ("cocoseq", "pa100k", "rap_zs", "peta_zs")
PEDESTRIAN = ("pa100k", "rap_zs", "peta_zs")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coco-root", required=True, metavar="DIR",
                        help="COCO 2014 folder: annotations/instances_{train,val}2014.json, train2014/, val2014/")
    parser.add_argument("--splits", required=True, metavar="DIR",
                        help="PRS id lists, laid out like prs_splits/COCOseq (multihot_map.json, ids/)")
    parser.add_argument("--groups", metavar="DIR",
                        help="published group lists cocoseq_{majority,moderate,minority}.json "
                             "(default: ../groups beside --splits)")


def _pedestrian(parser: argparse.ArgumentParser, name: str) -> None:
    where = {"pa100k": "PA-100K folder: annotation.mat and data/",
             "rap_zs": "RAPv2 folder: dataset_zs_run0.pkl and RAP_dataset/",
             "peta_zs": "PETA folder: dataset_zs_run0.pkl and images/"}[name]
    parser.add_argument("--root", required=True, metavar="DIR", help=where)
    if name != "pa100k":
        parser.add_argument("--split-file", metavar="FILE",
                            help="the zero-shot split pickle (default: ROOT/dataset_zs_run0.pkl)")
    parser.set_defaults(split_file=None)


def _store_options(parser: argparse.ArgumentParser, pedestrian: bool) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="the store folder to write")
    if pedestrian:
        parser.add_argument("--image-size", type=int, nargs=2, default=[256, 192], metavar=("H", "W"),
                            help="stored image height and width (default 256 192, the papers' input)")
    else:
        parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256, the protocol's)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out missing, unreadable or truncated images (listed in the report)")
    parser.add_argument("--force", action="store_true", help="rebuild an existing store (e.g. of another version)")


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data prepare DATASET`` and ``data inspect DATASET`` to the top-level command parsers."""
    data = subparsers.add_parser("data", help="prepare or inspect a real dataset (" + ", ".join(DATASETS) + ")")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    prep = sub.add_parser("prepare", help="decode, resize and store the images for training (resumable)",
                          description="Read the annotations and images; write a memory-mapped store of uint8 "
                                      "images (resumable if interrupted); print the counts and their check "
                                      "against the published numbers.")
    insp = sub.add_parser("inspect", help="counts and checks from the annotations alone",
                          description="Check the annotations and splits without decoding images.")
    prep_sets = prep.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    insp_sets = insp.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name in DATASETS:
        pedestrian = name in PEDESTRIAN
        for sets, func, build in ((prep_sets, cmd_data_prepare, True), (insp_sets, cmd_data_inspect, False)):
            p = sets.add_parser(name, help=f"the {name} stream")
            if pedestrian:
                _pedestrian(p, name)
            else:
                _common(p)
            if build:
                _store_options(p, pedestrian)
            p.set_defaults(func=func)
    return data


def _progress():
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        # one updating line on a terminal, nothing per chunk in a log file
        if sys.stderr.isatty():
            print(f"\r  {done:,} / {total:,} images ({time.perf_counter() - start:.0f} s)", end="",
                  file=sys.stderr, flush=True)
    return progress


def cmd_data_inspect(args: argparse.Namespace) -> int:
    if args.dataset in PEDESTRIAN:
        from benchmarks import pedestrian

        print(pedestrian.inspect(args.dataset, args.root, args.split_file).text())
        return 0
    from benchmarks.cocoseq import inspect

    print(inspect(args.coco_root, args.splits, args.groups).text())
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    if args.dataset in PEDESTRIAN:
        from benchmarks import pedestrian

        report = pedestrian.prepare(args.dataset, args.root, args.out, split_file=args.split_file,
                                    size=tuple(args.image_size), skip_bad_images=args.skip_bad_images,
                                    force=args.force, progress=_progress())
    else:
        from benchmarks.cocoseq import prepare

        report = prepare(args.coco_root, args.splits, args.out, groups=args.groups, size=args.size,
                         skip_bad_images=args.skip_bad_images, force=args.force, progress=_progress())
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.text())
    print(f"\nStore: {args.out} (use it with --benchmark {args.dataset} --set benchmark.options.root={args.out})")
    return 0
