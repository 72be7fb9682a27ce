"""``python -m cml_bench data {prepare, inspect} DATASET``: build and check prepared data stores.

Each dataset is one row of :data:`DATASETS`: the module and functions that read it, the options
that name its input files (its "source": ``--coco-root``, ``--splits``...) and its default image
size. ``inspect(**source)`` reads the annotations only; ``prepare(**source, out=, size=,
skip_bad_images=, force=, progress=)`` writes the store; both return a report whose ``text()`` is
printed. Heavy imports happen inside the commands, so these parsers cost nothing at start-up.
Errors are the usual user errors (``FileNotFoundError``, ``ValueError``...) that ``cli.main`` prints
as one line.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from cml_bench.registry import import_plugin_module

COCO_ROOT_HELP = "COCO 2014 folder: annotations/instances_{train,val}2014.json, train2014/, val2014/"
NUSWIDE_ROOT_HELP = ("NUS-WIDE folder: ImageList/{Train,Test}Imagelist.txt, TrainTestLabels/"
                     "Labels_<concept>_{Train,Test}.txt, Concepts81.txt, Flickr/<concept>/<file>.jpg")


def _prs_lists(parser: argparse.ArgumentParser, name: str, like: str) -> None:
    parser.add_argument("--splits", required=True, metavar="DIR",
                        help=f"PRS id lists, laid out like prs_splits/{like} (multihot_map.json, ids/)")
    parser.add_argument("--groups", metavar="DIR",
                        help=f"published group lists {name}_{{majority,moderate,minority}}.json "
                             "(default: ../groups beside --splits)")


def _cocoseq_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coco-root", required=True, metavar="DIR", help=COCO_ROOT_HELP)
    _prs_lists(parser, "cocoseq", "COCOseq")


def _nuswideseq_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nuswide-root", required=True, metavar="DIR", help=NUSWIDE_ROOT_HELP)
    _prs_lists(parser, "nuswideseq", "NUSWIDEseq")


def _nuswide_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nuswide-root", required=True, metavar="DIR", help=NUSWIDE_ROOT_HELP)


def _coco2014_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coco-root", required=True, metavar="DIR", help=COCO_ROOT_HELP)


def _voc2007_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voc-root", required=True, metavar="DIR",
                        help="VOCdevkit folder (VOC2007/ImageSets/Main, VOC2007/JPEGImages) of the trainval "
                             "and test archives")


def _pedestrian_source(where: str, split_file: bool) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--root", required=True, metavar="DIR", help=where)
        if split_file:
            parser.add_argument("--split-file", metavar="FILE",
                                help="the zero-shot split pickle (default: ROOT/dataset_zs_run0.pkl)")
    return add


@dataclass(frozen=True)
class DataSource:
    """How the ``data`` commands reach one dataset.

    Attributes:
        line: one line for ``--help``.
        module: the module holding the dataset's readers (imported only when a command runs).
        inspect, prepare: names of its functions (see the module docstring for how they are called).
        add_source: adds the dataset's input options to a parser.
        source: the ``argparse`` names of those options, passed on as keyword arguments.
        size: default stored image size: a side in pixels, or ``(height, width)``.
        fixed: keyword arguments always passed (e.g. which of a module's datasets).
    """

    line: str
    module: str
    inspect: str
    prepare: str
    add_source: Callable[[argparse.ArgumentParser], None]
    source: tuple[str, ...]
    size: int | tuple[int, int]
    fixed: Mapping[str, Any] = field(default_factory=dict)


DATASETS: dict[str, DataSource] = {
    "cocoseq": DataSource("COCOseq (PRS): 4 tasks, 70 classes", "benchmarks.cocoseq", "inspect", "prepare",
                          _cocoseq_source, ("coco_root", "splits", "groups"), 256),
    "nuswideseq": DataSource("NUS-WIDEseq (PRS): 6 tasks, 49 classes", "benchmarks.nuswide", "inspect_seq",
                             "prepare_seq", _nuswideseq_source, ("nuswide_root", "splits", "groups"), 256),
    "nuswide": DataSource("NUS-WIDE, one task, 81 concepts", "benchmarks.nuswide", "inspect_single",
                          "prepare_single", _nuswide_source, ("nuswide_root",), 448),
    "coco2014": DataSource("MS-COCO 2014, one task, 80 classes", "benchmarks.coco2014", "inspect", "prepare",
                           _coco2014_source, ("coco_root",), 448),
    "voc2007": DataSource("PASCAL VOC 2007, one task, 20 classes", "benchmarks.voc2007", "inspect", "prepare",
                          _voc2007_source, ("voc_root",), 448),
    "pa100k": DataSource("PA-100K, one task, 26 pedestrian attributes", "benchmarks.pedestrian", "inspect",
                         "prepare", _pedestrian_source("PA-100K folder: annotation.mat and data/", False),
                         ("root",), (256, 192), {"dataset": "pa100k"}),
    "rap_zs": DataSource("RAP_ZS (zero-shot split), one task, 53 pedestrian attributes", "benchmarks.pedestrian",
                         "inspect", "prepare",
                         _pedestrian_source("RAPv2 folder: dataset_zs_run0.pkl and RAP_dataset/", True),
                         ("root", "split_file"), (256, 192), {"dataset": "rap_zs"}),
    "peta_zs": DataSource("PETA_ZS (zero-shot split), one task, 35 pedestrian attributes", "benchmarks.pedestrian",
                          "inspect", "prepare", _pedestrian_source("PETA folder: dataset_zs_run0.pkl and images/", True),
                          ("root", "split_file"), (256, 192), {"dataset": "peta_zs"}),
}


def _add_size(parser: argparse.ArgumentParser, size: int | tuple[int, int]) -> None:
    if isinstance(size, tuple):
        parser.add_argument("--image-size", "--size", dest="size", type=int, nargs=2, default=list(size),
                            metavar=("H", "W"), help=f"stored image height and width (default {size[0]} {size[1]})")
    else:
        parser.add_argument("--image-size", "--size", dest="size", type=int, default=size,
                            help=f"stored image side in pixels (default {size})")


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data prepare DATASET`` and ``data inspect DATASET`` to the top-level command parsers."""
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
    for name, source in DATASETS.items():
        p = prep_sets.add_parser(name, help=source.line, description=f"Prepare {source.line}.")
        source.add_source(p)
        p.add_argument("--out", required=True, metavar="DIR", help="the store folder to write")
        _add_size(p, source.size)
        p.add_argument("--skip-bad-images", action="store_true",
                       help="leave out unreadable or truncated (and missing) images, listed in the report")
        p.add_argument("--force", action="store_true", help="rebuild an existing store (e.g. of another version)")
        p.set_defaults(func=cmd_data_prepare)
        i = insp_sets.add_parser(name, help=source.line, description=f"Inspect {source.line} from its annotations.")
        source.add_source(i)
        i.set_defaults(func=cmd_data_inspect)
    return data


def _call(args: argparse.Namespace, function: str, **kwargs: Any) -> Any:
    source = DATASETS[args.dataset]
    fn = getattr(import_plugin_module(source.module), getattr(source, function))
    return fn(**{key: getattr(args, key) for key in source.source}, **source.fixed, **kwargs)


def cmd_data_inspect(args: argparse.Namespace) -> int:
    print(_call(args, "inspect").text())
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        # one updating line on a terminal, nothing per chunk in a log file
        if sys.stderr.isatty():
            print(f"\r  {done:,} / {total:,} images ({time.perf_counter() - start:.0f} s)", end="",
                  file=sys.stderr, flush=True)

    size = tuple(args.size) if isinstance(args.size, list) else args.size
    if min(args.size if isinstance(args.size, list) else [args.size]) < 1:
        raise ValueError(f"--image-size must be positive pixel counts, got {args.size}.")
    report = _call(args, "prepare", out=args.out, size=size, skip_bad_images=args.skip_bad_images,
                   force=args.force, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.text())
    print(f"\nStore: {args.out} (use it with --benchmark {args.dataset} --set benchmark.options.root={args.out})")
    return 0
