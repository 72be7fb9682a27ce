"""Command line: ``python -m cml_bench <command>`` (also installed as ``cml-bench``)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from typing import Any, Sequence

import yaml

from cml_bench.config import ConfigError, load_yaml
from cml_bench.registry import BENCHMARKS, HEADS, STRATEGIES, RegistryError

DESCRIPTION = """\
cml_bench: which continual strategy, with which classification head, learns a stream of
multi-label image tasks best?

Run a strategy on a benchmark and read majority / moderate / minority / overall mAP, CF1 and OF1:

  python -m cml_bench run --strategy prs+ssca                 # embedded default, CPU, minutes
  python -m cml_bench run --strategy prs --benchmark cocoseq --device cuda

A strategy name may end in a head suffix: +ssca (DLFL's semantic spatial cross-attention) or +cos
(pooled features with a normalised classifier); no suffix = pooled features + linear classifier.
`python -m cml_bench list` shows every strategy, head and benchmark with its options.
"""


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=0.01", "strategy.options.rho=0.02"]`` -> nested mapping (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=0.01), got '{item}'.")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def _cli_layer(args: argparse.Namespace) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    if args.strategy is not None:
        layer.setdefault("strategy", {})["name"] = args.strategy
    if args.benchmark is not None:
        layer.setdefault("benchmark", {})["name"] = args.benchmark
    if args.seed is not None:
        layer["seed"] = args.seed
    if args.device is not None:
        layer["device"] = args.device
    return layer


def cmd_run(args: argparse.Namespace) -> int:
    from cml_bench.config import merge
    from cml_bench.runner import resolve_config, run

    file_layer = load_yaml(args.config) if args.config else {}
    config = resolve_config(file_layer, merge(_parse_set(args.set), _cli_layer(args)))
    result = run(config, args.out, log=print)
    print()
    print(f"{result.rows[0]['strategy']} on {config.benchmark.name}, seed {config.seed}: after the last "
          f"task, on the test sets of all tasks ({result.wall_time_s:.0f} s)")
    print(result.summary)
    print(f"\nResults: {result.path}/metrics.csv (config, manifest and summary beside it)")
    return 0


def _options_text(options_cls: type) -> str:
    fields = dataclasses.fields(options_cls)
    if not fields:
        return "      (no options)"
    lines = []
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"      {f.name} = {default!r}")
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    print("Strategies (add a head suffix: +ssca or +cos; options go under strategy.options):")
    for name in STRATEGIES.names():
        spec = STRATEGIES.get(name)
        print(f"  {name:<12} {spec.description}")
        if args.verbose:
            print(_options_text(spec.options))
    print("\nHeads: " + ", ".join(HEADS) + " (pooled is the default)")
    print("\nBenchmarks (options go under benchmark.options):")
    for name in BENCHMARKS.names():
        spec = BENCHMARKS.get(name)
        print(f"  {name:<14} {spec.description}")
        if args.verbose:
            print(_options_text(spec.options))
    for kind, registry in (("strategy", STRATEGIES), ("benchmark", BENCHMARKS)):
        for module, err in registry.broken.items():
            print(f"\n  ! {kind} module '{module}' failed to import: {type(err).__name__}: {err}")
    if not args.verbose:
        print("\n`python -m cml_bench list -v` also lists every option with its default.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cml_bench", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="train one strategy on one benchmark and write its results",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description=textwrap.dedent("""\
        Train a strategy on a benchmark, evaluating after every task, and write a run folder
        (config.yaml, manifest.json, metrics.csv, summary.md) under --out. Settings come from,
        in increasing precedence: built-in defaults, the benchmark's defaults, --config FILE.yaml,
        --set KEY=VALUE, and the flags below."""))
    run.add_argument("--strategy", help="strategy name, optionally with a head suffix (e.g. prs+ssca); "
                                        "default finetune")
    run.add_argument("--benchmark", help="benchmark name (default synth-cocoseq, the embedded one)")
    run.add_argument("--seed", type=int, help="seed of data order, model init and buffer choices (default 0)")
    run.add_argument("--config", metavar="FILE.yaml", help="YAML with sections benchmark, strategy, "
                                                           "model, train, eval")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config value, e.g. --set train.lr=0.01 (repeatable)")
    run.add_argument("--out", default="results", help="results folder (default: results)")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list strategies, heads and benchmarks")
    lst.add_argument("-v", "--verbose", action="store_true", help="also list every option with its default")
    lst.set_defaults(func=cmd_list)
    return parser


USER_ERRORS = (ConfigError, RegistryError, FileNotFoundError, FileExistsError, ValueError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        from cml_bench.models import PretrainedWeightsError

        if args.debug or not isinstance(err, (*USER_ERRORS, PretrainedWeightsError)):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
