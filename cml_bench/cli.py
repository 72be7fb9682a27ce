"""Command line: ``python -m cml_bench <command>`` (also installed as ``cml-bench``)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
from typing import Any, Sequence

from cml_bench.config import ConfigError, image_hw, load_config, load_yaml, parse_value
from cml_bench.registry import BENCHMARKS, HEADS, STRATEGIES, RegistryError, add_plugin_folders

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


PLUGINS_HELP = ("a folder of plugin files (*.py registering strategies or benchmarks) to load besides the "
                "installed ones (repeatable; also $CML_BENCH_PLUGINS)")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=0.01", "strategy.options.rho=0.02"]`` -> nested mapping (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=0.01), got '{item}'.")
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # --set train=1 --set train.lr=0.1
                raise ConfigError(f"--set {key}: '{'.'.join(parts[:depth + 1])}' was set to a value, not a section, "
                                  f"by an earlier --set.")
        node[parts[-1]] = parse_value(raw, key)
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
    """A sweep on the local executor, in this process: each run prints its lines and summary, and the
    first failure ends the command with its error."""
    from cml_bench.config import merge
    from cml_bench.results import prepare_out
    from cml_bench.sweep import LocalExecutor, RunPrinter, expand_grid, parse_list, plan_runs, run_sweep

    file_layer = load_config(args.config) if args.config is not None else {}
    cli_layer = merge(_parse_set(args.set), _cli_layer(args))
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds N runs N seeds counting up from --seed: N must be >= 1, got {args.seeds}.")
    # resolve every (strategy, seed) first, so a typo in the last name fails before any training
    runs = expand_grid(file_layer, cli_layer, strategies=parse_list(args.strategy),
                       n_seeds=1 if args.seeds is None else args.seeds)
    prepare_out(args.out)
    planned = plan_runs(runs, args.out, rerun=args.rerun)  # an interrupted run of a config resumes
    executor = LocalExecutor(log=print, loggers=args.logger, fail_fast=True)
    run_sweep(planned, args.out, executor, cpus=None, reporter=RunPrinter(planned))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """A grid of runs, here or on a Ray cluster; finished runs are skipped, interrupted ones resume."""
    from pathlib import Path

    from cml_bench.config import merge
    from cml_bench.sweep import (LocalExecutor, RayExecutor, expand_grid, parse_list, parse_seeds, plan_runs,
                                 run_sweep, summary_text)

    for flag, value, low in (("--workers", args.workers, 1), ("--cpus-per-run", args.cpus_per_run, 1),
                             ("--max-retries", args.max_retries, 0), ("--gpus-per-run", args.gpus_per_run, 0)):
        if value is not None and value < low:  # before the grid is resolved or a cluster contacted
            raise ConfigError(f"{flag} must be >= {low}, got {value}.")
    file_layer = load_config(args.config) if args.config is not None else {}
    cli_layer = _parse_set(args.set)
    if args.device is not None:
        cli_layer = merge(cli_layer, {"device": args.device})
    runs = expand_grid(file_layer, cli_layer, strategies=parse_list(args.strategy),
                       benchmarks=parse_list(args.benchmark),
                       seeds=parse_seeds(args.seeds) if args.seeds is not None else None)
    out = args.out
    if args.executor != "ray":  # on Ray, the nodes write --out (a shared folder the driver may not see)
        from cml_bench.results import prepare_out

        prepare_out(out)
    if args.executor == "ray":
        executor = RayExecutor(args.address, max_retries=args.max_retries)
        out = str(Path(out).resolve())  # the workers' working folder is not ours
    else:
        if args.address:
            raise ConfigError("--address is for --executor ray; the local executor needs none.")
        if args.gpus_per_run is not None:
            raise ConfigError("--gpus-per-run is for --executor ray; locally, --workers N --device cuda packs "
                              "N runs on the GPU.")
        executor = LocalExecutor(args.workers)
    report = run_sweep(plan_runs(runs, out, rerun=args.rerun, threads=args.cpus_per_run), out, executor,
                       cpus=args.cpus_per_run, gpus=args.gpus_per_run)
    print(summary_text(report, args.out))
    return 1 if report.failed else 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    import shlex

    from cml_bench.pretrain import pretrain, resolve_pretrain

    config = resolve_pretrain(_parse_set(args.set))
    command = "python -m cml_bench pretrain " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    pretrain(config, args.out, command=command.strip())
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from cml_bench.leaderboard import write_leaderboard
    from cml_bench.significance import available_cpus

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}.")
    workers = available_cpus() if args.workers is None else args.workers
    print(write_leaderboard(args.results_dir, out_dir=args.out, compare=args.compare, against=args.against,
                            alpha=args.alpha, bootstrap=args.bootstrap, workers=workers))
    where = args.out or args.results_dir
    print(f"\nWrote leaderboard.md / .csv / .tex, accuracy_matrix.csv and plot_*.png to {where}")
    return 0


def cmd_angles(args: argparse.Namespace) -> int:
    """Paper Fig. 8 for a finished run: feature-to-classifier angles per label on all test sets."""
    from pathlib import Path

    from cml_bench.angles import angles_for_model, load_model_weights, plot_angles, summarise_angles
    from cml_bench.models import build_model
    from cml_bench.resolved import resolve_run

    run_dir = Path(args.run_dir)
    for needed in ("config.yaml", "model.pt"):
        if not (run_dir / needed).is_file():
            raise FileNotFoundError(f"'{run_dir}' is not a finished run folder: {needed} is missing "
                                    f"(pass a folder written by `python -m cml_bench run`).")
    resolved = resolve_run(load_yaml(run_dir / "config.yaml"))
    config, benchmark = resolved.config, resolved.build_benchmark()
    model = build_model(config.model, benchmark.meta.num_classes)
    load_model_weights(model, run_dir / "model.pt")
    tests = [exp.dataset for exp in benchmark.test_stream]
    union = tests[0]
    for extra in tests[1:]:
        union = union.concat(extra)
    frame = angles_for_model(model, union, config.eval.batch_size, "cpu",
                             class_names=benchmark.meta.class_names, max_samples=args.max_samples)
    frame.to_csv(run_dir / "angles.csv", index=False)
    summary = summarise_angles(frame)
    summary.to_csv(run_dir / "angles_summary.csv", index=False)
    title = f"{resolved.label} on {config.benchmark.name} (seed {config.seed}): angle between " \
            f"each label's feature and its classifier weight, all test sets"
    plot_angles(frame, run_dir / "angles.png", title)
    pos = frame[frame.positive].angle_deg.median()
    neg = frame[~frame.positive].angle_deg.median()
    print(f"median angle: positives {pos:.1f} deg, negatives {neg:.1f} deg ({len(frame)} pairs)")
    print(f"wrote {run_dir / 'angles.csv'}, angles_summary.csv and angles.png")
    return 0


def cmd_bench_loop(args: argparse.Namespace) -> int:
    from cml_bench.loop_bench import run_loop_bench
    from cml_bench.runner import resolve_config, resolve_device

    from cml_bench.config import merge

    layer = merge({"strategy": {"name": "finetune"}}, _parse_set(args.set))
    if args.benchmark is not None:
        layer = merge(layer, {"benchmark": {"name": args.benchmark}})
    if args.batch_size is not None:
        layer = merge(layer, {"train": {"batch_size": args.batch_size}})
    config = resolve_config(layer, {"device": args.device or "cpu"})
    resolve_device(config.device)
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}.")
    print(f"Training loop cost on {config.benchmark.name}, task 0, {config.model.backbone} "
          f"({config.model.head} head), batch {config.train.batch_size}, {args.repeats} repeats "
          f"after one warm-up, device {config.device}:")
    result = run_loop_bench(config, repeats=args.repeats)
    import statistics

    ours, bare = statistics.median(result.cml_bench_ips), statistics.median(result.bare_ips)
    print(f"cml_bench loop: {ours:.1f} images/s (median)")
    print(f"bare PyTorch loop: {bare:.1f} images/s (median)")
    print(f"ratio cml_bench / bare: {result.ratio:.3f} (overhead {100 * (1 - result.ratio):+.1f}%; "
          f"target: overhead <= 10%)")
    return 0


def _image_size_arg(text: str) -> list[int]:
    """``448`` or ``256x192`` (height x width)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH (e.g. 448 or 256x192), got '{text}'")
    return parts * (3 - len(parts))


def cmd_profile(args: argparse.Namespace) -> int:
    from cml_bench.config import resolve
    from cml_bench.profile import COUNTING_NOTE, describe, format_table, profile_model
    from cml_bench.resolved import apply_head_suffix

    layers = [load_config(args.config) if args.config is not None else {}, _parse_set(args.set)]
    if args.strategy is not None:
        layers.append({"strategy": {"name": args.strategy}})
    config = resolve(*layers)  # the model section only: no benchmark defaults, options unchecked
    apply_head_suffix(config)
    if args.num_labels < 1:
        raise ConfigError(f"--num-labels must be >= 1, got {args.num_labels}.")
    size = image_hw(args.image_size or config.model.image_size, "--image-size")
    if size is None:
        raise ConfigError("No input size: pass --image-size (e.g. 448 or 256x192) or set model.image_size.")
    costs = profile_model(config.model, size, args.num_labels)
    print(f"{describe(config.model, size, args.num_labels)}:\n")
    print(format_table(costs))
    print(f"\n{COUNTING_NOTE}")
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


def _print_entries(registry, verbose: bool, width: int) -> None:
    for name in registry.names():
        spec = registry.get(name)
        print(f"  {name:<{width}} {spec.description}")
        if verbose:
            print(_options_text(spec.options))


def cmd_list(args: argparse.Namespace) -> int:
    print("Strategies (add a head suffix: +ssca or +cos; options go under strategy.options):")
    _print_entries(STRATEGIES, args.verbose, 12)
    print("\nHeads: " + ", ".join(HEADS) + " (pooled is the default)")
    print("\nBenchmarks (options go under benchmark.options):")
    _print_entries(BENCHMARKS, args.verbose, 14)
    shown = set()  # a broken --plugins file is in both registries (it could have held either kind)
    for kind, registry in (("strategy", STRATEGIES), ("benchmark", BENCHMARKS)):
        for module, err in registry.broken.items():
            if id(err) not in shown:
                shown.add(id(err))
                print(f"\n  ! {kind} module '{module}' failed to import: {type(err).__name__}: {err}")
    if not args.verbose:
        print("\n`python -m cml_bench list -v` also lists every option with its default.")
    return 0


def _add_run_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``run``: one strategy (or a few, with seeds) on one benchmark, here and now."""
    run = sub.add_parser("run", help="train one strategy on one benchmark and write its results",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description=textwrap.dedent("""\
        Train a strategy on a benchmark, evaluating after every task, and write a run folder
        (config.yaml, manifest.json, metrics.csv, summary.md) under --out; a (strategy, seed) whose
        finished run with the same resolved config is already there is skipped. Settings come from,
        in increasing precedence: built-in defaults, the benchmark's defaults, --config FILE.yaml,
        --set KEY=VALUE, and the flags below."""))
    run.add_argument("--strategy", help="strategy name, optionally with a head suffix (e.g. prs+ssca), or a "
                                        "comma-separated list; default finetune")
    run.add_argument("--benchmark", help="benchmark name (default synth-cocoseq, the embedded one)")
    run.add_argument("--seed", type=int, help="seed of data order, model init and buffer choices (default 0)")
    run.add_argument("--seeds", type=int, metavar="N", help="run N seeds: --seed, --seed + 1, ...")
    run.add_argument("--resume", action="store_true",
                     help="(the default) an interrupted run of the same config and data continues after its "
                          "last finished task; to start afresh, delete its .partial-* folder")
    run.add_argument("--rerun", action="store_true",
                     help="run even if a finished run with the same resolved config exists (default: skip it)")
    run.add_argument("--config", metavar="NAME|FILE.yaml",
                     help="YAML with sections benchmark, strategy, model, train, eval, or the name of a "
                          "shipped config (cml_bench/configs, e.g. coco2014-resnet101-448)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config value, e.g. --set train.lr=0.01 (repeatable)")
    run.add_argument("--out", default="results", help="results folder (default: results)")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    run.add_argument("--logger", action="append", default=[], choices=["tensorboard", "wandb"],
                     help="also log losses, metrics and the anytime curve with Avalanche's TensorboardLogger "
                          "or WandBLogger (offline unless WANDB_MODE is set) into the run folder (repeatable)")
    run.set_defaults(func=cmd_run)
    return run


def _add_sweep_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sweep``: a grid of runs, here or on a Ray cluster."""
    sweep = sub.add_parser("sweep", help="a grid of runs (benchmarks x strategies x seeds), here or on a "
                                          "Ray cluster", formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=textwrap.dedent("""\
        Expand benchmarks x strategies x seeds into runs and execute them: one after another here
        (--executor local, or --workers N processes), or each as a Ray task on a cluster (--executor
        ray --address HEAD:PORT; every node must have cml_bench installed and see --out, a shared
        folder). Runs already finished with the same resolved config are skipped and interrupted
        ones resume from their last task, so the same command can be submitted again after any
        failure. Each run uses --cpus-per-run torch threads, here and on Ray alike."""))
    sweep.add_argument("--strategy", "--strategies", dest="strategy",
                       help="comma-separated strategies with optional head suffix, e.g. prs,prs+ssca")
    sweep.add_argument("--benchmark", "--benchmarks", dest="benchmark",
                       help="comma-separated benchmarks (default: the config's, synth-cocoseq)")
    sweep.add_argument("--seeds", help="seeds, e.g. 0,1,2 or 0-4 (default: the config's seed)")
    sweep.add_argument("--config", metavar="FILE.yaml", help="YAML overrides shared by every run")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value for every run (repeatable)")
    sweep.add_argument("--device", help="cpu or cuda for every run (default cpu); on Ray use cuda, not cuda:N")
    sweep.add_argument("--out", default="results", help="results folder, shared by all nodes (default: results)")
    sweep.add_argument("--rerun", action="store_true", help="run even the (benchmark, strategy, seed) runs "
                                                            "that are already finished")
    sweep.add_argument("--executor", choices=["local", "ray"], default="local", help="where runs execute "
                       "(default local)")
    sweep.add_argument("--workers", type=int, default=1, help="local executor: runs at a time, each in its "
                                                              "own process (default 1: in this process)")
    sweep.add_argument("--address", help="ray executor: the head's HOST:PORT (printed by `ray start --head`)")
    sweep.add_argument("--cpus-per-run", type=int, default=1,
                       help="CPUs each run requests on Ray and its torch thread count everywhere (default 1)")
    sweep.add_argument("--gpus-per-run", type=float, help="ray executor: GPUs each run requests "
                       "(default: 1 when the run's device is cuda, else 0; fractions share a GPU)")
    sweep.add_argument("--max-retries", type=int, default=3,
                       help="ray executor: re-executions of a run whose worker or node dies (default 3)")
    sweep.set_defaults(func=cmd_sweep)
    return sweep


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cml_bench", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--plugins", action="append", default=[], metavar="DIR", help=PLUGINS_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = _add_run_parser(sub)
    sweep = _add_sweep_parser(sub)

    bench = sub.add_parser("bench-loop", help="measure the training loop's overhead against a bare "
                                              "PyTorch loop")
    bench.add_argument("--benchmark", help="benchmark (default synth-cocoseq)")
    bench.add_argument("--batch-size", type=int, help="incoming batch size (default: the protocol's 10)")
    bench.add_argument("--repeats", type=int, default=3, help="timed repeats of each loop (default 3)")
    bench.add_argument("--device", help="cpu or cuda (default cpu)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set model.head=ssca (repeatable)")
    bench.set_defaults(func=cmd_bench_loop)

    prof = sub.add_parser("profile", help="parameters and FLOPs / MACs of a model config at an input size",
                          description="Parameters and FLOPs (and MACs = FLOPs / 2) of the backbone, the head "
                                      "and the whole model, for one image, counted on the meta device.")
    prof.add_argument("--config", metavar="NAME|FILE.yaml", help="a shipped config name or a YAML file")
    prof.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override one config value, e.g. --set model.ssca_modules=3 (repeatable)")
    prof.add_argument("--strategy", help="strategy name; only its head suffix matters (e.g. finetune+ssca)")
    prof.add_argument("--image-size", type=_image_size_arg, metavar="SIZE|HxW",
                      help="input size, e.g. 448 or 256x192 (default: model.image_size)")
    prof.add_argument("--num-labels", type=int, default=80, help="number of labels M (default 80, MS-COCO)")
    prof.set_defaults(func=cmd_profile)

    pre = sub.add_parser("pretrain", help="pretrain the embedded default's backbone on synth-pretrain",
                         description="Train a backbone (default: the synth-cocoseq default's resnet10t) on the "
                                     "synth-pretrain source, whose sprites are disjoint from synth-cocoseq's, and "
                                     "write its weights (fp16 safetensors) and a record FILE.json (config, sha256, "
                                     "validation mAP). Load them with --set model.weights=FILE.")
    pre.add_argument("--out", default="synth-resnet10t.safetensors", help="weights file to write (.safetensors)")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one setting, e.g. --set epochs=2 or --set source.num_classes=200 (repeatable)")
    pre.set_defaults(func=cmd_pretrain)

    board = sub.add_parser("leaderboard", help="mean ± std over seeds of every strategy in a results folder")
    board.add_argument("results_dir", help="a folder of run folders (e.g. results)")
    board.add_argument("--out", help="where to write the tables and plots (default: results_dir)")
    board.add_argument("--compare", action="store_true",
                       help="add the paper's published rows (COCOseq, NUS-WIDEseq only)")
    board.add_argument("--against", metavar="STRATEGY",
                       help="compare every row with this strategy (default: the best mean of each column)")
    board.add_argument("--alpha", type=float, default=0.05,
                       help="significance level of the paired test over seeds (default 0.05)")
    board.add_argument("--bootstrap", type=int, default=200, metavar="N",
                       help="test-image resamples for the confidence intervals (runs with scores.npz; "
                            "default 200, 0 = none)")
    board.add_argument("--workers", type=int, metavar="N",
                       help="processes sharing the bootstrap (default: one per CPU available; the "
                            "tables are the same for any N)")
    board.set_defaults(func=cmd_leaderboard)

    angles = sub.add_parser("angles", help="angle diagnostics of a finished run (paper Fig. 8)")
    angles.add_argument("run_dir", help="a run folder written by `run` (holds config.yaml and model.pt)")
    angles.add_argument("--max-samples", type=int, help="use only the first N test images")
    angles.set_defaults(func=cmd_angles)

    lst = sub.add_parser("list", help="list strategies, heads and benchmarks")
    lst.add_argument("-v", "--verbose", action="store_true", help="also list every option with its default")
    lst.set_defaults(func=cmd_list)

    from cml_bench.data_cli import add_data_parser

    add_data_parser(sub)
    for command in (run, sweep, bench, prof, angles, lst):  # also accepted after the command's name
        command.add_argument("--plugins", action="append", default=argparse.SUPPRESS, metavar="DIR",
                             help=PLUGINS_HELP)
    return parser


USER_ERRORS = (ConfigError, RegistryError, FileNotFoundError, FileExistsError, ValueError)


def _plugin_folders(argv: Sequence[str]) -> list[str]:
    """The folders ``--plugins`` names anywhere in ``argv``, read before the command line is parsed:
    ``data``'s DATASET choices include the datasets that their files register."""
    early = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    early.add_argument("--plugins", action="append", default=[])
    try:
        folders = early.parse_known_args(argv)[0].plugins
    except argparse.ArgumentError:  # `--plugins` without a folder: the full parser says so
        return []
    return [f for f in folders if os.path.isdir(f)]  # the others: main reports them once parsing is done


def main(argv: Sequence[str] | None = None) -> int:
    add_plugin_folders(_plugin_folders(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.plugins:
            add_plugin_folders(args.plugins)
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
