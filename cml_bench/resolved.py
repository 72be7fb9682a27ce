"""A run resolved once: the config, its plugins, their typed options, the head and the label.

Every command resolves each run exactly once, into a :class:`ResolvedRun`, and passes that object
along: the sweep planner (grid expansion, "already done?"), the executors and
:func:`cml_bench.runner.run` read the benchmark and strategy specs, their typed options, the head
and the ``prs+ssca``-style label from it instead of looking them up and validating them again.

What makes a run *this very run* (for skipping and resuming) is its resolved config, compared
whole, plus :meth:`ResolvedRun.identity`; the leaderboard's experiment key is computed from the
same two, as stored in the run folder (:mod:`cml_bench.identity`).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from cml_bench.config import ConfigError, RunConfig, build_dataclass, resolve
from cml_bench.identity import data_identity, weights_identity
from cml_bench.registry import BENCHMARKS, HEADS, STRATEGIES, split_head

if TYPE_CHECKING:  # both modules import Avalanche: not needed to resolve a run
    from cml_bench.strategy import StrategySpec
    from cml_bench.stream import BenchmarkSpec, MultiLabelBenchmark


def apply_head_suffix(config: RunConfig) -> str:
    """Set ``config.model.head`` from the strategy name's suffix (``prs+ssca`` -> ``ssca``; no
    suffix leaves ``model.head`` as configured) and return the base strategy name (``prs``).

    The one place a head suffix is read.
    """
    base, head = split_head(config.strategy.name)
    if "+" in config.strategy.name:
        config.model.head = head
    return base


@dataclass(frozen=True)
class ResolvedRun:
    """One run, resolved and validated once.

    Attributes:
        config: the fully resolved config (what ``config.yaml`` holds); benchmark and strategy
            options written back complete, ``model.head`` set from the strategy's suffix.
        benchmark: the benchmark's registry entry.
        strategy: the base strategy's registry entry (``prs`` for ``prs+ssca``).
        benchmark_options: ``config.benchmark.options`` as the benchmark's options dataclass.
        strategy_options: ``config.strategy.options`` as the strategy's options dataclass.
        label: ``prs+ssca``-style name of what runs: the head made explicit unless pooled; the run
            folder's parent and the ``strategy`` column of its metrics.
    """

    config: RunConfig
    benchmark: BenchmarkSpec
    strategy: StrategySpec
    benchmark_options: Any
    strategy_options: Any
    label: str

    @classmethod
    def of(cls, config: RunConfig | ResolvedRun) -> ResolvedRun:
        """Resolve an already layered config (from :func:`resolve_run`, or a run folder's
        ``config.yaml``); a ResolvedRun is returned as it is. ``config`` itself is not changed."""
        if isinstance(config, ResolvedRun):
            return config
        config = copy.deepcopy(config)
        bench_spec: BenchmarkSpec = BENCHMARKS.get(config.benchmark.name)
        base = apply_head_suffix(config)
        strategy_spec: StrategySpec = STRATEGIES.get(base)
        if config.model.head not in HEADS:
            raise ConfigError(f"Unknown model.head '{config.model.head}'. Available: {', '.join(HEADS)}.")
        bench_options = build_dataclass(bench_spec.options, config.benchmark.options, "benchmark.options")
        strategy_options = build_dataclass(strategy_spec.options, config.strategy.options, "strategy.options")
        config.benchmark.options = dataclasses.asdict(bench_options)
        config.strategy.options = dataclasses.asdict(strategy_options)
        label = base if config.model.head == "pooled" else f"{base}+{config.model.head}"
        return cls(config, bench_spec, strategy_spec, bench_options, strategy_options, label)

    @property
    def head(self) -> str:
        """``pooled``, ``cos`` or ``ssca``."""
        return self.config.model.head

    @property
    def name(self) -> str:
        """``prs+ssca on synth-cocoseq, seed 0``: how the commands name a run."""
        return f"{self.label} on {self.config.benchmark.name}, seed {self.config.seed}"

    def identity(self, threads: int) -> dict[str, Any]:
        """What besides the config must match for a finished run to count as this one, or to be
        resumed: data, weights, and (on a CPU, where results depend on it) the thread count
        ``threads`` (see :mod:`cml_bench.identity`)."""
        config = self.config
        return {"data": data_identity(self.benchmark, self.benchmark_options), "weights": weights_identity(config),
                "threads": int(threads) if str(config.device).startswith("cpu") else None}

    def build_benchmark(self) -> MultiLabelBenchmark:
        """The benchmark's streams, built from the typed options."""
        return self.benchmark.build(self.benchmark_options)


def resolve_run(*layers: Mapping[str, Any]) -> ResolvedRun:
    """Resolve a run: defaults < benchmark defaults < ``layers`` (YAML, then CLI flags).

    The strategy's head suffix sets ``model.head``; benchmark and strategy options are validated
    against their plugins' option dataclasses and written back fully resolved.
    """
    probe = resolve(*layers)
    bench_spec: BenchmarkSpec = BENCHMARKS.get(probe.benchmark.name)
    return ResolvedRun.of(resolve(dict(bench_spec.defaults), *layers))


def resolve_config(*layers: Mapping[str, Any]) -> RunConfig:
    """The resolved config of :func:`resolve_run` (the Python API's first step before ``run``)."""
    return resolve_run(*layers).config


def strategy_label(config: RunConfig) -> str:
    """``prs+ssca``-style name of what actually runs (the head made explicit when not pooled)."""
    return ResolvedRun.of(config).label


def run_identity(run: ResolvedRun | RunConfig, threads: int) -> dict[str, Any]:
    """:meth:`ResolvedRun.identity` of ``run`` (a resolved run, or a resolved config resolved into one)."""
    return ResolvedRun.of(run).identity(threads)
