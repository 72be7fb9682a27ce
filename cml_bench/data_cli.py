"""``python -m cml_bench data {prepare, inspect} DATASET``: build and check prepared data stores.

A dataset is a benchmark registered with ``data=DataCommands(...)`` (:mod:`cml_bench.stream`): its
commands, the options that name its files (its "source": ``--coco-root``, ``--splits``...) and its
default image size. Which benchmarks have them is known only after every benchmark module is
imported (registry discovery, plugin files included), so the DATASET parsers are added the first
time ``data prepare`` or ``data inspect`` is parsed: building the command line costs nothing at
start-up, for ``data`` as for every other command. Errors are the usual user errors
(``FileNotFoundError``, ``ValueError``...) that ``cli.main`` prints as one line.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

from cml_bench.registry import BENCHMARKS

if TYPE_CHECKING:
    from cml_bench.stream import DataCommands


def _add_size(parser: argparse.ArgumentParser, size: int | tuple[int, int]) -> None:
    if isinstance(size, tuple):
        parser.add_argument("--image-size", "--size", dest="size", type=int, nargs=2, default=list(size),
                            metavar=("H", "W"), help=f"stored image height and width (default {size[0]} {size[1]})")
    else:
        parser.add_argument("--image-size", "--size", dest="size", type=int, default=size,
                            help=f"stored image side in pixels (default {size})")


def _add_source(parser: argparse.ArgumentParser, commands: DataCommands) -> None:
    for option in commands.source:
        parser.add_argument(option.flag, required=option.required, metavar=option.metavar, help=option.help)


def _add_datasets(prepare: argparse._SubParsersAction, inspect: argparse._SubParsersAction) -> None:
    """A DATASET parser under ``prepare`` and under ``inspect`` for every benchmark with data commands."""
    for name in BENCHMARKS.names():
        commands = BENCHMARKS.get(name).data
        if commands is None:
            continue
        p = prepare.add_parser(name, help=commands.line, description=f"Prepare {commands.line}.")
        _add_source(p, commands)
        p.add_argument("--out", required=True, metavar="DIR", help="the store folder to write")
        _add_size(p, commands.size)
        p.add_argument("--skip-bad-images", action="store_true",
                       help="leave out unreadable or truncated (and missing) images, listed in the report")
        p.add_argument("--force", action="store_true", help="rebuild an existing store (e.g. of another version)")
        p.set_defaults(func=cmd_data_prepare)
        i = inspect.add_parser(name, help=commands.line, description=f"Inspect {commands.line} from its annotations.")
        _add_source(i, commands)
        i.set_defaults(func=cmd_data_inspect)


class _DatasetsOnFirstUse(argparse._SubParsersAction):
    """``data``'s ACTION (prepare / inspect): adds their DATASET parsers when one of them is chosen."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dataset_parsers: list[argparse._SubParsersAction] = []  # prepare's and inspect's, set below
        self._added = False

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Sequence[str],
                 option_string: str | None = None) -> None:
        if not self._added:
            self._added = True
            _add_datasets(*self.dataset_parsers)
        super().__call__(parser, namespace, values, option_string)


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data prepare DATASET`` and ``data inspect DATASET`` to the top-level command parsers."""
    data = subparsers.add_parser("data", help="prepare or inspect a real dataset (`data prepare -h` lists them)")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True, action=_DatasetsOnFirstUse)

    prep = sub.add_parser("prepare", help="decode, resize and store the images for training (resumable)",
                          description="Read the annotations and images; write a memory-mapped store of uint8 "
                                      "images (resumable if interrupted); print the image and per-class counts "
                                      "and their check against the published numbers.")
    insp = sub.add_parser("inspect", help="counts and checks from the annotations alone",
                          description="Check the annotations (and id lists) without reading images.")
    sub.dataset_parsers = [prep.add_subparsers(dest="dataset", metavar="DATASET", required=True),
                           insp.add_subparsers(dest="dataset", metavar="DATASET", required=True)]
    return data


def _commands(args: argparse.Namespace) -> tuple[DataCommands, dict[str, Any]]:
    """The chosen dataset's commands and its source options' values, by keyword."""
    commands = BENCHMARKS.get(args.dataset).data
    return commands, {option.dest: getattr(args, option.dest) for option in commands.source}


def cmd_data_inspect(args: argparse.Namespace) -> int:
    commands, source = _commands(args)
    print(commands.inspect(**source).text())
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
    commands, source = _commands(args)
    report = commands.prepare(**source, out=args.out, size=size, skip_bad_images=args.skip_bad_images,
                              force=args.force, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.text())
    print(f"\nStore: {args.out} (use it with --benchmark {args.dataset} --set benchmark.options.root={args.out})")
    return 0
