"""Is a leaderboard row really behind the best one? Paired tests over seeds, bootstrap over test images.

Runs with the same seed see the same data order (and the same model initialisation), so two
strategies are compared **paired by seed**: the differences d_s = x_row(s) - x_ref(s) over the seeds
both rows have. :func:`paired_test` runs a two-sided Wilcoxon signed-rank test when there are at
least :data:`WILCOXON_MIN_PAIRS` pairs and a paired t-test otherwise (with 5 pairs or fewer the
signed-rank test cannot reach p < 0.0625, so it could never reject at 0.05). Conventions for the
degenerate cases, which a t statistic leaves undefined: all differences zero (identical rows) gives
p = 1; all differences equal and non-zero (a constant shift) gives p = 0; fewer than 2 pairs is
"untested".

:func:`compare_to_reference` marks every (row, column) of a leaderboard against a reference row per
column (the best mean, or a chosen strategy): ``best`` (the reference, and rows whose displayed
mean ties it), ``same`` (not significantly different at ``alpha``), ``lower`` / ``higher``
(significantly different), ``untested``.

:func:`bootstrap_differences` gives a percentile confidence interval of the difference over the
test images: one set of resampled image indices (drawn with replacement) is applied to every run,
so the row and the reference are paired over images too, the metrics are recomputed on each
resample with :func:`cml_bench.metrics.family_metrics` (exactly what the evaluator writes), and the
difference is averaged over the paired seeds. It measures how much the gap depends on which test
images were drawn; the seed test measures how much it depends on the training run.
Everything here is pure: frames and arrays in, frames and arrays out (the bootstrap may spread its
runs over worker processes, which changes where each run's arrays are computed, not their values).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from cml_bench.metrics import family_metrics, lower_is_better
from cml_bench.scores import TestScores

WILCOXON_MIN_PAIRS = 6
ZERO = 1e-9  # differences this small (metric points) are float noise of identical values
MARKS = ("best", "same", "worse", "better", "untested")
"""Worse / better: significantly, in the metric's own direction (lower forgetting is better)."""


@dataclass(frozen=True)
class PairedTest:
    """Result of :func:`paired_test`: ``test`` is ``wilcoxon``, ``t-test`` or ``none`` (< 2 pairs)."""

    test: str
    n: int
    mean_diff: float
    p_value: float


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided paired test of ``a`` vs ``b`` (same length, pair i = seed i); see the module docstring."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Expected two 1-D arrays of the same length, got shapes {a.shape} and {b.shape}.")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    d[np.abs(d) <= ZERO] = 0.0
    n = len(d)
    if n < 2:
        return PairedTest("none", n, float(d.mean()) if n else float("nan"), float("nan"))
    name = "wilcoxon" if n >= WILCOXON_MIN_PAIRS else "t-test"
    if np.all(d == d[0]):  # no spread: identical rows, or a constant shift
        return PairedTest(name, n, float(d[0]), 1.0 if d[0] == 0 else 0.0)
    if name == "wilcoxon":
        p = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    else:
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return PairedTest(name, n, float(d.mean()), p)


def compare_to_reference(per_seed: pd.DataFrame, alpha: float = 0.05,
                         against: str | None = None) -> pd.DataFrame:
    """Mark every row and column of a leaderboard against a reference row, paired by seed.

    Args:
        per_seed: final values with index levels ``benchmark``, ``strategy``, ``seed`` (and any
            others, e.g. ``run``, which are dropped) and one column per (group, metric).
        alpha: significance level of the paired test.
        against: the reference strategy; None = per column, the row with the best mean (its
            displayed, one-decimal mean ties are ``best`` too). A benchmark without that strategy
            falls back to the best mean.

    Returns:
        Long frame: benchmark, strategy, group, metric, against (the reference row), chosen (True
        when it is ``against``), alpha, test, n_pairs, diff (mean of row - reference over the paired
        seeds), p_value, mark (one of :data:`MARKS`). A column
        in which every row has the same displayed mean gets no reference and no marks (mark "").
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    values = per_seed.droplevel([n for n in per_seed.index.names if n not in ("benchmark", "strategy", "seed")])
    rows = []
    for bench, sub in values.groupby(level="benchmark"):
        sub = sub.droplevel("benchmark")
        means = sub.groupby(level="strategy").mean()
        for col in sub.columns:
            shown = means[col].round(1).dropna()
            if against is not None and against in means.index and not np.isnan(means.loc[against, col]):
                ref = against
            elif shown.nunique() > 1:
                ref = means[col].idxmin() if lower_is_better(col[1]) else means[col].idxmax()
            else:
                ref = None
            wide = sub[col].unstack("strategy")  # seeds x strategies
            for strategy in means.index:
                out = {"benchmark": bench, "strategy": strategy, "group": col[0], "metric": col[1],
                       "against": ref, "chosen": ref is not None and ref == against, "alpha": alpha,
                       "test": "none", "n_pairs": 0, "diff": np.nan, "p_value": np.nan, "mark": ""}
                if ref is not None and strategy in shown.index:
                    result = paired_test(wide[strategy].to_numpy(), wide[ref].to_numpy())
                    out.update(test=result.test, n_pairs=result.n, diff=result.mean_diff, p_value=result.p_value)
                    if strategy == ref or (against is None and shown[strategy] == shown[ref]):
                        out["mark"] = "best"
                    elif result.test == "none":
                        out["mark"] = "untested"
                    elif result.p_value >= alpha:
                        out["mark"] = "same"
                    else:
                        worse = (result.mean_diff > 0) if lower_is_better(col[1]) else (result.mean_diff < 0)
                        out["mark"] = "worse" if worse else "better"
                rows.append(out)
    return pd.DataFrame(rows)


def replicate_indices(n_images: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """int [n_boot, n_images]: test-image indices drawn with replacement (own generator)."""
    return np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))


def replicate_values(s: TestScores, columns: Sequence[tuple[str, str]],
                     indices: Iterable[np.ndarray | None]) -> np.ndarray:
    """float [len(indices), len(columns)]: the (group, metric) values of ``s`` recomputed on each
    resample of its test images (an index array; None = the test set as it is)."""
    out = []
    wanted = {g for g, _ in columns}
    groups = {g: cols for g, cols in s.groups.items() if g in wanted and g != "all"}
    for idx in indices:
        take = slice(None) if idx is None else idx
        ig = None if s.ignore is None else s.ignore[take]
        values = family_metrics(s.kind, s.scores[take], s.targets[take], groups, s.threshold,
                                classes=s.groups["all"], ignore=ig)
        out.append([values[g].get(m, np.nan) for g, m in columns])
    return np.asarray(out, dtype=float)


PARALLEL_MIN_REPLICATES = 2000
"""Runs x resamples below which the bootstrap stays in this process: a worker costs about a second
to start (it imports numpy, pandas and scipy), a replicate about 1.3 ms (1,400 x 70, 12 columns)."""


def _replicate_chunk(task: tuple[list[TestScores], list[tuple[str, str]], int, int, int]) -> list[np.ndarray]:
    runs, columns, n_images, n_boot, seed = task
    idx = [None, *replicate_indices(n_images, n_boot, seed)]
    return [replicate_values(s, columns, idx) for s in runs]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def replicate_runs(runs: Sequence[TestScores], columns: Sequence[tuple[str, str]], n_boot: int,
                   seed: int = 0, workers: int = 1) -> list[np.ndarray]:
    """:func:`replicate_values` of each run (all on the same test images) on the full test set and
    the same ``n_boot`` resamples of them (:func:`replicate_indices` with ``seed``): one array
    ``[1 + n_boot, len(columns)]`` per run, in order.

    ``workers``: processes to share the runs (1: all in this process). Each run's arrays are
    computed exactly as in this process, so the result does not depend on it. Workers are spawned,
    so with ``workers > 1`` a calling script needs the usual ``if __name__ == "__main__":`` guard
    (the ``leaderboard`` command has it; that is why only the command defaults to one per CPU).
    """
    if not runs:
        return []
    workers = max(1, min(workers, len(runs)))
    n_images, columns = len(runs[0].task), list(columns)
    if workers == 1 or len(runs) * n_boot < PARALLEL_MIN_REPLICATES:
        return _replicate_chunk((list(runs), columns, n_images, n_boot, seed))
    chunks = [list(runs[i::workers]) for i in range(workers)]  # round-robin: runs differ little in cost
    # spawn, not fork: the caller may hold threads (torch, a Ray worker), which fork would copy half-made
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(_replicate_chunk, [(c, columns, n_images, n_boot, seed) for c in chunks]))
    out: list[np.ndarray] = [np.empty(0)] * len(runs)
    for i, arrays in enumerate(done):
        out[i::workers] = arrays
    return out


@dataclass(frozen=True)
class BootstrapCI:
    """The difference (row - reference, mean over paired seeds) on the full test set, and its
    percentile interval over test-image resamples."""

    estimate: float
    low: float
    high: float


def bootstrap_differences(row: Sequence[np.ndarray], ref: Sequence[np.ndarray], level: float = 0.95
                          ) -> list[BootstrapCI]:
    """Confidence intervals per column from :func:`replicate_values` arrays of paired runs.

    ``row[i]`` and ``ref[i]`` are the arrays of one seed's two runs, each ``[1 + n_boot, C]``: row 0
    on the full test set, rows 1.. on the shared resamples. Returns one :class:`BootstrapCI` per column.
    """
    if not row or len(row) != len(ref):
        raise ValueError("Expected the same non-zero number of row and reference runs (paired by seed).")
    diff = np.mean([a - b for a, b in zip(row, ref)], axis=0)  # [1 + n_boot, C]
    tail = (1 - level) / 2 * 100
    out = []
    for c in range(diff.shape[1]):
        reps = diff[1:, c][~np.isnan(diff[1:, c])]
        low, high = (np.percentile(reps, [tail, 100 - tail]) if len(reps) else (np.nan, np.nan))
        out.append(BootstrapCI(float(diff[0, c]), float(low), float(high)))
    return out


def add_bootstrap(sig: pd.DataFrame, per_seed: pd.DataFrame, load, n_boot: int = 200, level: float = 0.95,
                  seed: int = 0, workers: int = 1) -> tuple[pd.DataFrame, list[str]]:
    """:func:`compare_to_reference`'s frame with bootstrap columns ci_estimate, ci_low, ci_high and
    ci_seeds (paired seeds whose two runs both have scores), and notes on what was left out.

    ``per_seed`` is indexed by benchmark, strategy, seed, run; ``load(run)`` returns that run's
    :class:`TestScores` or None (no ``scores.npz``: runs written before it existed). A run whose
    test images differ from the benchmark's first run with scores is left out, with a note.
    ``workers``: as in :func:`replicate_runs`.
    """
    sig = sig.assign(ci_estimate=np.nan, ci_low=np.nan, ci_high=np.nan, ci_seeds=0)
    notes: list[str] = []
    if n_boot <= 0:
        return sig, notes
    columns = list(per_seed.columns)
    keys = per_seed.index.to_frame(index=False)
    for bench, runs in keys.groupby("benchmark"):
        loaded = {r: load(r) for r in runs["run"]}
        have = {r: s for r, s in loaded.items() if s is not None}
        missing = len(loaded) - len(have)
        if missing:
            notes.append(f"{bench}: bootstrap over test images not available for {missing} of {len(loaded)} "
                         f"run(s): no scores.npz (runs from before cml_bench saved per-image test scores).")
        if not have:
            continue
        first = next(iter(have.values()))
        other = [r for r, s in have.items() if not first.same_images(s)]
        if other:
            notes.append(f"{bench}: {len(other)} run(s) left out of the bootstrap: their test images differ "
                         f"from the other runs' ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}).")
        kept = [r for r in have if r not in other]
        values = dict(zip(kept, replicate_runs([have[r] for r in kept], columns, n_boot, seed, workers)))
        run_of = {(row.strategy, row.seed): row.run for row in runs.itertuples() if row.run in values}
        cis: dict[tuple[str, str], tuple[list[BootstrapCI], int]] = {}  # (row, reference) -> CIs, seeds
        for i in sig.index[(sig["benchmark"] == bench) & sig["against"].notna()]:
            pair = strategy, ref = sig.at[i, "strategy"], sig.at[i, "against"]
            if pair not in cis:
                seeds = sorted({s for st, s in run_of if st == strategy} & {s for st, s in run_of if st == ref})
                cis[pair] = (bootstrap_differences([values[run_of[strategy, s]] for s in seeds],
                                                   [values[run_of[ref, s]] for s in seeds], level)
                             if seeds else [], len(seeds))
            found, n_seeds = cis[pair]
            if found:
                ci = found[columns.index((sig.at[i, "group"], sig.at[i, "metric"]))]
                sig.loc[i, ["ci_estimate", "ci_low", "ci_high"]] = ci.estimate, ci.low, ci.high
                sig.at[i, "ci_seeds"] = n_seeds
    return sig, notes
