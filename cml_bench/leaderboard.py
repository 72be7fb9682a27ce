"""Leaderboard: the final results of many runs, aggregated over seeds, as CSV, Markdown, LaTeX, plots.

Reads every finished run folder below a results root (the layout of :mod:`cml_bench.results`:
``<benchmark>/<strategy>/seed<k>-<timestamp>[-n]/metrics.csv``, at any depth; hidden ``.partial-*``
folders are runs still being written and are skipped). A run's *final results* are its rows after its
last task (``trained_through_task`` = its maximum) on the union of all test sets (``eval_on = seen``).

Rows are experiments, never mixtures: runs are keyed by their resolved config without the seed and
the device, plus the data's identity (:func:`cml_bench.identity.experiment_key`, column ``config``).
Where one (benchmark, strategy) has runs of several configs, each is its own row, labelled
``strategy [key]``, and a note names the config keys that differ. Damaged runs (a manifest that does
not vouch for the metrics, see :func:`cml_bench.results.check_run`) are left out with a note.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from cml_bench import mlcil, significance
from cml_bench.metrics import ATTRIBUTE_METRICS, lower_is_better
from cml_bench.registry import row_parts
from cml_bench.identity import NOT_THE_EXPERIMENT, config_hash, experiment_key, flat_items
from cml_bench.recording import ANYTIME_FILE, AUC_METRIC, MEMORY_FILE, memory_shares
from cml_bench.scores import SCORES_FILE, load_scores
from cml_bench.results import CSV_COLUMNS, GROUP_LABELS, GROUP_ORDER, check_run, metric_family

METRICS = ("CF1", "OF1", "mAP")
GROUPS = tuple(GROUP_ORDER)  # majority, moderate, minority, all ("overall" in tables and plots)
STATS = ("mean", "std", "n")
# Leaderboard columns (metrics, groups) of each metric family (see cml_bench.metrics): single-task
# streams have no class groups; generic ones show the thresholded and the top-3 F1 scores.
FAMILY_COLUMNS = {
    "continual": (METRICS, GROUPS),
    "generic": (("mAP", "CF1", "OF1", "CF1@3", "OF1@3"), ("all",)),
    "attribute": (ATTRIBUTE_METRICS, ("all",)),
    # MLCIL (KRT): average mAP over sessions, then mAP / CF1 / OF1 after the last session, forgetting
    mlcil.KIND: ((mlcil.AVERAGE_METRIC, "mAP", "CF1", "OF1", "forgetting_mAP"), ("all",)),
}
REFERENCE_PREFIX = "paper: "  # strategy label of a published (reference) row; never ranked
_STRATEGY_ORDER = ("multitask", "finetune", "ewc", "reservoir", "prs")  # the paper's row order
_RUN_NAME = re.compile(r"^seed-?\d+-(\d{8}-\d{6})(?:-(\d+))?$")

# DLFL paper, Table 7 (COCOseq) and Table 8 (NUS-WIDEseq): ResNet-101 at 256 px on the real datasets,
# mean of five runs, no std published. Values per row in the paper's column order: majority,
# moderate, minority, overall, each C-F1 / O-F1 / mAP (= our CF1 / OF1 / mAP). PRS* is DLFL's re-run
# of PRS; "Ours + PRS" is PRS with the SSCA head (our ``prs+ssca``).
PAPER_COLUMNS = tuple((g, m) for g in GROUPS for m in METRICS)
PAPER_RUNS = 5
PAPER_RESULTS: dict[str, dict[str, tuple[float, ...]]] = {
    "cocoseq": {
        "Multitask": (72.9, 70.9, 77.3, 53.2, 51.4, 55.0, 12.7, 13.6, 24.2, 51.2, 52.1, 53.9),
        "Finetune": (18.5, 27.9, 29.8, 6.7, 16.7, 14.1, 0.0, 0.0, 5.2, 8.5, 18.4, 16.4),
        "EWC": (60.0, 53.4, 64.1, 37.3, 38.1, 47.5, 7.5, 8.2, 21.5, 38.9, 40.0, 46.6),
        "CRS": (67.0, 62.5, 67.9, 47.8, 45.2, 50.4, 14.5, 15.6, 26.9, 47.5, 46.6, 50.2),
        "GSS": (59.3, 56.7, 59.6, 44.9, 43.0, 46.0, 10.5, 11.0, 18.6, 42.8, 42.7, 44.0),
        "ExStream": (58.8, 52.0, 62.5, 49.2, 47.3, 52.7, 26.4, 26.6, 36.6, 47.8, 43.9, 51.1),
        "PRS": (65.4, 59.3, 67.5, 52.5, 49.7, 55.2, 34.5, 34.6, 39.7, 53.2, 50.3, 55.3),
        "PRS*": (70.1, 63.5, 76.1, 55.4, 52.1, 61.4, 34.8, 35.0, 41.6, 56.1, 52.9, 61.2),
        "Ours + PRS": (79.4, 77.2, 85.5, 69.3, 69.7, 74.6, 52.0, 52.8, 54.9, 68.7, 68.8, 73.4),
    },
    "nuswideseq": {
        "Multitask": (33.7, 30.8, 32.8, 29.3, 28.7, 28.9, 9.7, 11.8, 25.8, 24.6, 24.9, 28.4),
        "Finetune": (0.6, 4.6, 4.1, 2.3, 2.8, 6.0, 5.2, 7.4, 9.4, 4.2, 5.1, 7.1),
        "EWC": (15.7, 9.9, 15.8, 16.3, 12.6, 19.4, 12.3, 13.9, 24.1, 17.1, 11.4, 20.7),
        "CRS": (28.4, 17.8, 21.9, 13.6, 14.2, 18.5, 10.4, 11.8, 20.6, 16.8, 15.0, 20.1),
        "GSS": (24.6, 13.5, 19.0, 14.8, 15.5, 17.9, 15.9, 17.6, 24.5, 17.9, 15.3, 20.9),
        "ExStream": (15.6, 9.2, 15.3, 12.4, 12.8, 17.6, 24.6, 24.1, 26.7, 18.7, 16.0, 21.0),
        "PRS": (26.7, 17.9, 21.2, 19.2, 19.3, 21.5, 27.5, 26.8, 31.0, 24.8, 21.7, 25.5),
        "PRS*": (29.1, 19.2, 30.8, 24.3, 24.1, 30.4, 32.9, 32.0, 37.3, 25.6, 29.3, 33.4),
        "Ours + PRS": (34.7, 32.5, 36.3, 37.5, 37.6, 41.5, 46.4, 46.2, 51.8, 40.1, 40.9, 44.9),
    },
}


def _read_metrics(path: Path) -> pd.DataFrame:
    """One run's metrics.csv, validated; ValueError naming the file if it is corrupted or partial."""
    def bad(what: str) -> ValueError:
        return ValueError(f"Corrupted or partial results file {path}: {what}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    if not text.strip():
        raise bad("the file is empty")
    if not text.endswith("\n"):  # pandas ends every row with a newline: a missing one means a cut
        raise bad("it does not end with a newline (truncated?)")
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise bad(f"not valid CSV ({exc})") from None
    header = rows[0]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise bad(f"missing column(s) {', '.join(missing)}; expected {', '.join(CSV_COLUMNS)}")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise bad(f"line {line} has {len(row)} field(s), expected {len(header)}")
    frame = pd.read_csv(io.StringIO(text))
    if frame.empty:
        raise bad("it has a header but no rows")
    for col in ("seed", "trained_through_task", "value"):
        try:
            frame[col] = pd.to_numeric(frame[col])
        except (ValueError, TypeError):
            raise bad(f"column '{col}' has non-numeric entries") from None
    if frame[CSV_COLUMNS[:-1]].isna().any().any():
        raise bad("empty entries outside the 'value' column")
    return frame.astype({"seed": int, "trained_through_task": int})


@dataclass
class RunSet:
    """The runs under a results root: the metrics of the usable ones (columns of ``metrics.csv``
    plus ``run`` and ``config``), and what was left out or read unchecked.

    Attributes:
        frame: long rows of every usable run; ``strategy`` carries ``[key]`` where its
            (benchmark, strategy) has runs of several configs.
        damaged: run -> why it was left out.
        legacy: runs whose manifest predates metrics checksums (read unchecked).
        differing: per displayed (benchmark, base strategy) with several configs, the flat config
            keys (and ``data``) whose values differ, per label.
        kinds: run -> its benchmark's kind (``BenchmarkMeta.kind``: the metric family) as its
            manifest records it; runs written before manifests recorded it are absent.
    """

    frame: pd.DataFrame
    damaged: dict[str, str] = field(default_factory=dict)
    legacy: list[str] = field(default_factory=list)
    differing: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)


def _resolved_config(folder: Path) -> dict[str, Any]:
    """The run's config.yaml resolved like the skip logic does (keys added since get their
    defaults); the raw mapping if it no longer resolves; {} if unreadable."""
    from cml_bench.config import ConfigError, resolve

    try:
        stored = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(stored, dict):
        return {}
    try:
        return resolve(stored).to_dict()
    except (ConfigError, TypeError):
        return stored


def load_runs(root: str | Path) -> RunSet:
    """Every run below ``root`` (any depth; "."-folders such as ``.partial-*`` skipped): usable ones
    in :attr:`RunSet.frame` keyed by experiment, damaged ones listed with the reason. Raises
    FileNotFoundError if ``root`` is not a folder, ValueError if no usable run is found. Nothing is
    written."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Results folder {root} {'is not a folder' if root.exists() else 'does not exist'}.")
    files = sorted(p for p in root.rglob("metrics.csv")
                   if not any(part.startswith(".") for part in p.relative_to(root).parts))
    runs = RunSet(pd.DataFrame())
    frames, meta = [], []
    for path in files:
        run = path.parent.relative_to(root).as_posix()
        check = check_run(path.parent)
        if check.usable:
            try:
                frame = _read_metrics(path)
            except ValueError as err:
                check.status, check.reason = "damaged", str(err).split(": ", 1)[-1].rstrip(".")
        if not check.usable:
            runs.damaged[run] = check.reason
            continue
        if check.status == "legacy":
            runs.legacy.append(run)
        if (check.manifest or {}).get("benchmark_kind"):
            runs.kinds[run] = check.manifest["benchmark_kind"]
        identity = (check.manifest or {}).get("identity") or None
        ident = None if identity is None else (identity.get("data"), identity.get("weights"))
        frames.append(frame.assign(run=run))
        meta.append((run, _resolved_config(path.parent), ident))
    if not frames:
        damaged = f" ({len(runs.damaged)} damaged: {_listing(runs.damaged)})" if runs.damaged else ""
        raise ValueError(f"No finished runs found under {root}{damaged} (no <benchmark>/<strategy>/seed<k>-*/"
                         f"metrics.csv). Make one with `python -m cml_bench run --out {root} ...`.")
    df = pd.concat(frames, ignore_index=True)
    keys = _experiment_keys(meta)
    df["config"] = df["run"].map(keys)
    runs.frame = _label_configs(df, {run: cfg for run, cfg, _ in meta}, {run: i for run, _, i in meta}, runs)
    return runs


def _experiment_keys(meta: list[tuple[str, dict[str, Any], tuple | None]]) -> dict[str, str]:
    """run -> experiment key. A run that predates recorded data identities joins the runs of its
    config when they all agree on one data identity (it cannot be told apart from them)."""
    by_config: dict[str, set] = {}
    for _, cfg, ident in meta:
        by_config.setdefault(config_hash(cfg, NOT_THE_EXPERIMENT, 64), set()).add(ident)
    keys = {}
    for run, cfg, ident in meta:
        base = config_hash(cfg, NOT_THE_EXPERIMENT, 64)
        known = by_config[base] - {None}
        if ident is None and len(known) == 1:
            ident = next(iter(known))
        keys[run] = experiment_key(cfg, *(ident or (None, None)))
    return keys


def _label_configs(df: pd.DataFrame, configs: dict[str, dict[str, Any]], idents: dict[str, Any],
                   runs: RunSet) -> pd.DataFrame:
    """``strategy`` -> ``strategy [key]`` where a (benchmark, strategy) has several experiment
    keys; record in ``runs.differing`` which config keys tell them apart."""
    pairs = df[["benchmark", "strategy", "config", "run"]].drop_duplicates()
    labels: dict[tuple[str, str, str], str] = {}
    for (bench, strategy), group in pairs.groupby(["benchmark", "strategy"]):
        keys = sorted(set(group["config"]))
        if len(keys) == 1:
            continue
        flats = {}
        for key in keys:
            run = group.loc[group["config"] == key, "run"].iloc[0]
            cfg = {k: v for k, v in flat_items(configs[run]).items() if k not in NOT_THE_EXPERIMENT}
            ident = idents[run]
            cfg["data"] = "(not recorded)" if ident is None else ident[0]
            if ident is not None and ident[1] is not None:
                cfg["weights"] = ident[1]
            label = f"{strategy} [{key[:6]}]"
            labels[(bench, strategy, key)] = label
            flats[label] = cfg
        names = sorted({k for f in flats.values() for k in f})
        differ = [k for k in names if len({repr(f.get(k, "(missing)")) for f in flats.values()}) > 1]
        runs.differing[(bench, strategy)] = {label: {k: f.get(k, "(missing)") for k in differ}
                                             for label, f in flats.items()}
    if labels:
        index = list(zip(df["benchmark"], df["strategy"], df["config"]))
        df = df.assign(strategy=[labels.get(i, i[1]) for i in index])
    return df


def _listing(runs: dict[str, str]) -> str:
    return "; ".join(f"`{run}` ({why})" for run, why in sorted(runs.items()))


def load_results(root: str | Path) -> pd.DataFrame:
    """Every finished run's metrics.csv below ``root`` (any depth), with ``run`` and ``config``
    columns (see :class:`RunSet`), strictly: a damaged run is an error.

    ``run`` is the run folder relative to ``root`` (POSIX form). Folders whose name starts with
    "." (unfinished ``.partial-*`` runs) are skipped with everything below them. Raises
    FileNotFoundError if ``root`` is not a folder, ValueError if no finished run is found or a run
    is damaged (naming the file). Nothing is written. :func:`load_runs` leaves damaged runs out.
    """
    runs = load_runs(root)
    if runs.damaged:
        run, why = sorted(runs.damaged.items())[0]
        raise ValueError(f"Corrupted or partial results file {Path(root) / run / 'metrics.csv'}: {why}.")
    return runs.frame


def _run_age(run: str) -> str:
    # seed<k>-<YYYYmmdd-HHMMSS>[-n]: the timestamp, then the clash suffix n, order runs by age;
    # a folder renamed by hand sorts as the oldest.
    name = PurePosixPath(run).name
    m = _RUN_NAME.match(name)
    return f"{m.group(1)}|{int(m.group(2) or 0):06d}|{name}" if m else f"|000000|{name}"


def latest_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the newest run of each (benchmark, strategy, config, seed), by run folder
    timestamp (``config``: the experiment key, when the frame has that column)."""
    key = ["benchmark", "strategy"] + (["config"] if "config" in df.columns else []) + ["seed"]
    runs = df[key + ["run"]].drop_duplicates()
    runs = runs.assign(age=runs["run"].map(_run_age)).sort_values("age")
    newest = runs.groupby(key)["run"].last()
    return df[df["run"].isin(set(newest))]


def superseded_runs(df: pd.DataFrame) -> list[str]:
    """Runs ignored because a newer run of the same (benchmark, strategy, config, seed) exists."""
    return sorted(set(df["run"]) - set(latest_runs(df)["run"]))


def final_results(df: pd.DataFrame) -> pd.DataFrame:
    """Long rows of the final results (last task, ``eval_on = seen``) of the newest run per seed."""
    df = latest_runs(df)
    last = df.groupby("run")["trained_through_task"].transform("max")
    return df[(df["trained_through_task"] == last) & (df["eval_on"] == "seen")]


def strategy_order(names: Iterable[str]) -> list[str]:
    """Strategies in the paper's row order (multitask, finetune, ewc, reservoir, prs), heads after
    their base strategy, unknown ones alphabetically after, reference rows last."""
    paper = list(PAPER_RESULTS["cocoseq"])

    def key(name: str) -> tuple:
        if name.startswith(REFERENCE_PREFIX):  # published rows in the paper's own order
            label = name[len(REFERENCE_PREFIX):]
            return (True, paper.index(label) if label in paper else len(paper), 0, label)
        base = row_parts(name)[0]  # "prs+ssca [1a2b3c]": a config of prs
        rank = _STRATEGY_ORDER.index(base) if base in _STRATEGY_ORDER else len(_STRATEGY_ORDER)
        return (False, rank, base, name)
    return sorted(set(names), key=key)


def _sorted_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by benchmark, then :func:`strategy_order`, then the remaining index levels (for display:
    the frames returned to callers stay lexically sorted, which pandas needs for fast ``.loc``)."""
    rank = {s: i for i, s in enumerate(strategy_order(table.index.get_level_values("strategy")))}
    return table.sort_index(key=lambda level: level.map(rank) if level.name == "strategy" else level)


def final_table(df: pd.DataFrame, metrics: Sequence[str] = METRICS,
                groups: Sequence[str] = GROUPS) -> pd.DataFrame:
    """Final results aggregated over seeds: one row per (benchmark, strategy).

    Columns are a MultiIndex (group, metric, stat) with stat in mean, std (sample std, ddof=1; NaN
    when n = 1) and n (seeds with a value). If one (benchmark, strategy, seed) has several runs,
    only the newest (by the timestamp in its folder name, then its ``-n`` suffix) is used; see
    :func:`superseded_runs`. Rows sorted lexically; the renderers use :func:`strategy_order`.
    """
    final = final_results(df)
    final = final[final["metric"].isin(metrics) & final["group"].isin(groups)]
    stats = (final.groupby(["benchmark", "strategy", "group", "metric"])["value"]
             .agg(["mean", "std", "count"]).rename(columns={"count": "n"}))
    table = stats.unstack(["group", "metric"]).reorder_levels([1, 2, 0], axis=1)
    columns = pd.MultiIndex.from_tuples([(g, m, s) for g in groups for m in metrics for s in STATS],
                                        names=["group", "metric", "stat"])
    return table.reindex(columns=columns)


def per_seed_table(df: pd.DataFrame, metrics: Sequence[str] = METRICS,
                   groups: Sequence[str] = GROUPS) -> pd.DataFrame:
    """Final results of each seed's newest run: rows (benchmark, strategy, seed, run), columns
    (group, metric)."""
    final = final_results(df)
    final = final[final["metric"].isin(metrics) & final["group"].isin(groups)]
    wide = final.groupby(["benchmark", "strategy", "seed", "run", "group", "metric"])["value"].mean()
    wide = wide.unstack(["group", "metric"])
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples([(g, m) for g in groups for m in metrics],
                                                          names=["group", "metric"]))
    return wide.sort_index()


def compare_rows(benchmark_name: str) -> pd.DataFrame:
    """The paper's published rows for ``benchmark_name`` in :func:`final_table`'s format.

    Strategies are labelled ``"paper: <name>"``, std is NaN (not published), n = 5. Only
    "cocoseq" and "nuswideseq" (case, "-", "_" and spaces ignored) have rows; any other name
    gives an empty frame.
    """
    published = PAPER_RESULTS.get(re.sub(r"[^a-z0-9]", "", benchmark_name.lower()), {})
    columns = pd.MultiIndex.from_tuples([(g, m, s) for g, m in PAPER_COLUMNS for s in STATS],
                                        names=["group", "metric", "stat"])
    index = pd.MultiIndex.from_tuples([(benchmark_name, REFERENCE_PREFIX + s) for s in published],
                                      names=["benchmark", "strategy"])
    data = [[x for v in values for x in (v, np.nan, PAPER_RUNS)] for values in published.values()]
    return pd.DataFrame(data, index=index, columns=columns, dtype=float)


def mlcil_compare_rows(benchmark_name: str, columns: pd.MultiIndex) -> pd.DataFrame:
    """KRT's published numbers for an MLCIL stream (``cml_bench.mlcil.KRT_RESULTS``), as one row
    ``"paper: KRT"`` with ``columns`` (a :func:`final_table`'s); cells KRT's tables give but are
    not entered are NaN, std NaN, n NaN (not published). Empty for other streams."""
    published = mlcil.KRT_RESULTS.get(benchmark_name)
    index = pd.MultiIndex.from_tuples([(benchmark_name, REFERENCE_PREFIX + "KRT")] if published else [],
                                      names=["benchmark", "strategy"])
    row = [published.get(m, np.nan) if g == "all" and s == "mean" else np.nan for g, m, s in columns] \
        if published else []
    return pd.DataFrame([row] if published else [], index=index, columns=columns, dtype=float)


def accuracy_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """mAP (all classes) on task j's test set after training through task i, over seeds.

    Tidy long format: benchmark, strategy, trained_through_task (i), task (j), mAP_mean, mAP_std
    (ddof=1), n. Newest run per seed only.
    """
    d = latest_runs(df)
    d = d[(d["metric"] == "mAP") & (d["group"] == "all") & d["eval_on"].str.startswith("task")]
    d = d.assign(task=d["eval_on"].str.removeprefix("task").astype(int))
    return (d.groupby(["benchmark", "strategy", "trained_through_task", "task"])["value"]
            .agg(mAP_mean="mean", mAP_std="std", n="count").reset_index())


def stream_curve(df: pd.DataFrame) -> pd.DataFrame:
    """mAP on the union of the seen tasks (all classes) after each task: the long rows of the newest
    run per seed with ``eval_on = seen``, ``group = all`` (what :func:`cml_bench.plots.plot_stream` draws)."""
    d = latest_runs(df)
    return d[(d["eval_on"] == "seen") & (d["group"] == "all") & (d["metric"] == "mAP")]


def group_results(df: pd.DataFrame) -> pd.DataFrame:
    """Final mAP per class group (:func:`final_results`), each group named as tables name it
    (:data:`~cml_bench.results.GROUP_LABELS`; what :func:`cml_bench.plots.plot_groups` draws)."""
    d = final_results(df)
    d = d[(d["metric"] == "mAP") & d["group"].isin(list(GROUP_LABELS))]
    return d.assign(group=d["group"].map(GROUP_LABELS))


def anytime_curve(anytime: pd.DataFrame) -> pd.DataFrame:
    """The anytime mAP on the seen tasks' subsets (all classes) of ``anytime.csv`` rows (what
    :func:`cml_bench.plots.plot_anytime` draws)."""
    return anytime[(anytime["eval_on"] == "seen") & (anytime["group"] == "all") & (anytime["metric"] == "mAP")]


def _render(table: pd.DataFrame, tex: bool, n_note: bool = True, marks: pd.DataFrame | None = None) -> str:
    """Markdown or LaTeX body of :func:`to_markdown` / :func:`to_latex` (shared layout rules)."""
    pm, dash, blocks = (r" $\pm$ ", "--", []) if tex else (" ± ", "–", [])
    mark_of = {} if marks is None else {(r.benchmark, r.strategy, r.group, r.metric): r.mark
                                        for r in marks.itertuples()}
    signs = {"worse": r"$^{\dagger}$", "better": r"$^{\ddagger}$", "untested": r"$^{\circ}$"} if tex else SIGNS
    esc = (lambda s: re.sub(r"([&%$#_{}])", r"\\\1", s)) if tex else (lambda s: s)
    pairs = list(dict.fromkeys((g, m) for g, m, _ in table.columns))
    for bench in table.index.unique("benchmark"):
        sub = _sorted_rows(table.loc[[bench]]).loc[bench]
        bench_marks = None if marks is None else marks[marks["benchmark"] == bench]
        if bench_marks is not None and not bench_marks["mark"].isin(["same", "worse", "better"]).any():
            bench_marks = None  # nothing could be tested (one seed per row): plain best-mean bold
        ours = [s for s in sub.index if not s.startswith(REFERENCE_PREFIX)]
        best = {}
        for p in pairs:  # by the displayed (rounded) mean: ties are all bold, unless all tie
            means = sub.loc[ours, (*p, "mean")].round(1).dropna()
            low = lower_is_better(p[1])
            best[p] = (means.min() if low else means.max()) if means.nunique() > 1 else None
        row_n = sub.xs("n", axis=1, level="stat").max(axis=1)
        seeds = set(row_n[ours].dropna().astype(int))
        n_col = not n_note or len(seeds) > 1
        lines = []
        for strategy, row in sub.iterrows():
            cells = []
            for g, m in pairs:
                mean, std, n = row[(g, m, "mean")], row[(g, m, "std")], row[(g, m, "n")]
                text = dash if pd.isna(mean) else f"{mean:.1f}" + ("" if pd.isna(std) else f"{pm}{std:.1f}")
                if not pd.isna(n) and n < row_n[strategy]:
                    text += f" (n={int(n)})"  # a seed without this value: say so in the cell
                mark = mark_of.get((bench, strategy, g, m))
                if bench_marks is not None:  # significance marks: bold = best or not significantly different
                    text += signs.get(mark, "")
                    bold = strategy in ours and mark in ("best", "same")
                else:
                    bold = strategy in ours and best[(g, m)] is not None and round(mean, 1) == best[(g, m)]
                if bold:
                    text = rf"\textbf{{{text}}}" if tex else f"**{text}**"
                cells.append(text)
            n = "" if pd.isna(row_n[strategy]) else str(int(row_n[strategy]))
            lines.append([esc(strategy), *cells] + ([n] if n_col or tex else []))
        notes = ["Final results (after the last task, on the union of all tasks' test sets): mean"
                 f"{pm}sample std over seeds; " + ("bold: best mean per column." if bench_marks is None else
                                                  _significance_note(bench_marks, signs))]
        if not n_col and seeds and not tex:
            notes.append(f"n = {seeds.pop()} seed(s) for every strategy.")
        if any(m == mlcil.AVERAGE_METRIC for _, m in pairs):
            notes.append(f"{mlcil.AVERAGE_METRIC}: mAP on the seen classes after each session, averaged over the"
                         " sessions (KRT's average mAP; a joint run has none); mAP, CF1, OF1: after the last"
                         " session; forgetting_mAP: mean over sessions of the best mAP on a session's"
                         " classes before the last session minus the last.")
            if len(ours) < len(sub):
                notes.append(f"{REFERENCE_PREFIX}KRT: published numbers (Dong et al., ICCV 2023; TResNet-M"
                             " pretrained on ImageNet-21k at 224 px), the headline cell of each stream only;"
                             " for reference only, never bold.")
        elif len(ours) < len(sub):
            notes.append(f"Rows labelled {REFERENCE_PREFIX}... are published numbers (DLFL paper,"
                         " Tables 7 and 8: ResNet-101 at 256 px on the real datasets, mean of"
                         f" {PAPER_RUNS} runs, std not published; PRS* = DLFL's re-run of PRS,"
                         " Ours + PRS = PRS with SSCA); for reference only, never bold.")
        blocks.append(_tex_block(esc(bench), pairs, lines, len(ours), notes) if tex
                      else _md_block(bench, pairs, lines, n_col, notes)
                      + ("" if bench_marks is None else _against_table(bench_marks)))
    return "\n\n".join(blocks) + "\n"


SIGNS = {"worse": " †", "better": " ‡", "untested": " °"}  # significance marks after a cell (Markdown)
TEST_NAMES = {"t-test": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}


def _significance_note(marks: pd.DataFrame, signs: dict[str, str]) -> str:
    """The footnote saying what bold and the marks mean, and which paired test was run."""
    tested = marks[marks["mark"].isin(["same", "worse", "better"])]
    chosen = sorted(set(marks.loc[marks["chosen"], "against"]))
    ref = f"{chosen[0]} (the reference row)" if chosen else "the best mean per column"
    tests = ", ".join(f"{TEST_NAMES[name]} ({'>= 6' if name == 'wilcoxon' else '2-5'} paired seeds)"
                      for name in sorted(set(tested["test"]), reverse=True))
    alpha = marks["alpha"].iloc[0] if len(marks) else 0.05
    return (f"bold: {ref} and the rows not significantly different from it (paired by seed, two-sided "
            f"{tests}, alpha = {alpha:g}); {signs['worse'].strip()} significantly worse (lower; "
            f"for forgetting, higher), {signs['better'].strip()} significantly better, {signs['untested'].strip()} fewer than 2 seeds "
            f"paired with the reference (not tested).")


def _md_block(bench: str, pairs: list, lines: list, n_col: bool, notes: list) -> str:
    head = ["strategy"] + [f"{GROUP_LABELS.get(g, g)} {m}" for g, m in pairs] + (["n"] if n_col else [])
    out = [f"### {bench}", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out + [""] + notes)


def _tex_block(bench: str, pairs: list, lines: list, n_ours: int, notes: list) -> str:
    groups = list(dict.fromkeys(g for g, _ in pairs))
    widths = [sum(1 for g2, _ in pairs if g2 == g) for g in groups]
    spans, rules, col = [], [], 2
    for g, w in zip(groups, widths):
        spans.append(rf"\multicolumn{{{w}}}{{c}}{{{GROUP_LABELS.get(g, g)}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + w - 1}}}")
        col += w
    out = ["% requires \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
           rf"\caption{{{bench}: {' '.join(notes)}}}",
           r"\begin{tabular}{l" + "r" * len(pairs) + "r}", r"\toprule",
           " & ".join([""] + spans + [""]) + r" \\", " ".join(rules),
           " & ".join(["Strategy"] + [m for _, m in pairs] + ["$n$"]) + r" \\", r"\midrule"]
    for i, cells in enumerate(lines):
        if i == n_ours:
            out.append(r"\midrule")  # reference rows below a rule of their own
        out.append(" & ".join(cells) + r" \\")
    return "\n".join(out + [r"\bottomrule", r"\end{tabular}", r"\end{table}"])


def to_markdown(table: pd.DataFrame, n_note: bool = True, marks: pd.DataFrame | None = None) -> str:
    """A :func:`final_table` in the paper's layout, one Markdown table per benchmark.

    Rows: strategies; columns: majority / moderate / minority / overall x metrics. Cells "mean ± std"
    (one decimal; "mean" alone when n = 1 or std is unknown); the best mean per column (rows
    labelled ``"paper: ..."`` excluded; none when all rows tie) in bold. The number of
    seeds is a note when every strategy has the same n and ``n_note``, otherwise an "n" column.
    With ``marks`` (:func:`cml_bench.significance.compare_to_reference`), bold is the reference and
    every row not significantly different from it, and the other tested cells carry a mark
    (:data:`SIGNS`).
    """
    return _render(table, tex=False, n_note=n_note, marks=marks)


def to_latex(table: pd.DataFrame, marks: pd.DataFrame | None = None) -> str:
    """A :func:`final_table` as booktabs LaTeX tables (one per benchmark), same rules as
    :func:`to_markdown`: best per column in \\textbf{}, ± as $\\pm$, an n column, significance
    marks as superscript dagger, double dagger, circle."""
    return _render(table, tex=True, marks=marks)


def _flat(frame: pd.DataFrame, row: str) -> pd.DataFrame:
    frame = frame.copy()
    frame.columns = [f"{g}_{m}" for g, m in frame.columns]
    return frame.reset_index().assign(row=row)


def forgetting_table(df: pd.DataFrame) -> pd.DataFrame:
    """Forgetting per (benchmark, strategy, task, metric): mean, std and n over seeds (newest runs).

    ``task`` is ``task<j>`` for one task or ``mean`` for the mean over tasks (the runs' ``seen``
    rows); joint (multitask) runs have no forgetting rows.
    """
    rows = latest_runs(df)
    rows = rows[rows["metric"].str.startswith("forgetting_")]
    rows = rows.assign(metric=rows["metric"].str.removeprefix("forgetting_"),
                       task=rows["eval_on"].replace({"seen": "mean"}))
    grouped = rows.groupby(["benchmark", "strategy", "task", "metric"])["value"]
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def write_leaderboard(root: str | Path, out_dir: str | Path | None = None, compare: bool = False,
                      against: str | None = None, alpha: float = 0.05, bootstrap: int = 200,
                      workers: int = 1) -> str:
    """Load the runs under ``root`` and write the leaderboard into ``out_dir`` (default: ``root``).

    Writes all_metrics.csv (every row of every run, long format), forgetting.csv (see
    :func:`forgetting_table`), leaderboard.csv (column ``row``: "seed" for one run's final values, "mean" / "std" / "n"
    over seeds; column ``reference`` True for published rows), leaderboard.md, leaderboard.tex,
    accuracy_matrix.csv, plot_stream.png, plot_matrix.png and plot_groups.png. With ``compare``, the
    paper's rows (see :func:`compare_rows`) are added for COCOseq / NUS-WIDEseq benchmarks, marked
    and never ranked. Benchmarks of each metric family (:data:`FAMILY_COLUMNS`) get their own
    tables; the plots are drawn for continual streams only. ``workers``: processes sharing the
    bootstrap (:func:`cml_bench.significance.replicate_runs`; 1: this process). Returns the Markdown text.
    """
    from cml_bench import plots  # matplotlib only when plots are drawn

    root = Path(root)
    runs = load_runs(root)
    df = runs.frame
    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    if against is not None and against not in set(df["strategy"]):
        raise ValueError(f"--against {against}: no such strategy under {root}; there are: "
                         f"{', '.join(strategy_order(df['strategy']))}.")
    tables, flats, all_marks, notes = [], [], [], []
    families = dict(_by_family(df, runs.kinds))
    for family, rows in families.items():  # one table per metric family: its own columns
        table = final_table(rows, *FAMILY_COLUMNS[family])
        seeds = per_seed_table(rows, *FAMILY_COLUMNS[family])
        marks, missing = significance.add_bootstrap(significance.compare_to_reference(seeds, alpha, against),
                                                    seeds, lambda run: _scores(root, run), bootstrap,
                                                    workers=workers)
        all_marks.append(marks)
        notes += missing
        if compare and family in ("continual", mlcil.KIND):
            refs = [compare_rows(b).reindex(columns=table.columns) if family == "continual"
                    else mlcil_compare_rows(b, table.columns) for b in table.index.unique(0)]
            table = pd.concat([table] + [r for r in refs if len(r)]).sort_index()
        parts = [_flat(seeds, "seed")]
        parts += [_flat(table.xs(s, axis=1, level="stat"), s) for s in STATS]
        tables.append(table)
        flats.append(pd.concat(parts, ignore_index=True).merge(_mark_columns(marks), how="left",
                                                               on=["benchmark", "strategy", "row"]))
    flat = pd.concat(flats, ignore_index=True)
    config_of = df.drop_duplicates(["benchmark", "strategy"]).set_index(["benchmark", "strategy"])["config"]
    flat = flat.assign(reference=flat["strategy"].str.startswith(REFERENCE_PREFIX),
                       seed=flat["seed"].astype("Int64"), order=flat["row"].map(["seed", *STATS].index),
                       config=[config_of.get(k) for k in zip(flat["benchmark"], flat["strategy"])])
    flat = _sorted_rows(flat.set_index(["benchmark", "strategy", "order", "seed"])).reset_index()
    lead = ["benchmark", "strategy", "row", "seed", "run", "config", "reference"]
    flat = flat[lead + [c for c in flat.columns if c not in lead + ["order"]]]
    flat.to_csv(out / "leaderboard.csv", index=False, float_format="%.10g")  # n as 3, not 3.0
    accuracy_matrix(df).to_csv(out / "accuracy_matrix.csv", index=False)
    df.to_csv(out / "all_metrics.csv", index=False)  # the tidy long format of every run, with `run`
    forgetting_table(df).to_csv(out / "forgetting.csv", index=False)
    continual = families.get("continual")
    if continual is not None:  # the plots follow mAP over a stream of tasks and class groups
        order = strategy_order(continual["strategy"])
        plots.plot_stream(stream_curve(continual), out / "plot_stream.png", order)
        plots.plot_matrix(accuracy_matrix(continual), out / "plot_matrix.png", order)
        plots.plot_groups(group_results(continual), out / "plot_groups.png", order, list(GROUP_LABELS.values()))

    figures = _campaign_figures(root, df, out)
    old = superseded_runs(df)
    md = [f"# Leaderboard: {df['run'].nunique() - len(old)} runs under `{root}`", ""]
    marks = pd.concat(all_marks, ignore_index=True)
    marks.to_csv(out / "significance.csv", index=False, float_format="%.6g")
    md += [to_markdown(table, marks=m) for table, m in zip(tables, all_marks)]
    if notes:
        md.append("\n".join(f"- {n}" for n in notes) + "\n")
    if continual is not None and (continual["metric"] == AUC_METRIC).any():
        md.append(_anytime_markdown(continual, alpha, against))
    md += _notes(runs, old)
    if continual is not None:
        md.append("![mAP on all seen tasks after each task](plot_stream.png)\n\n"
                  "![mAP on task j after task i](plot_matrix.png)\n\n"
                  "![final mAP per class group](plot_groups.png)\n")
    md += [f"![{what}]({name})\n" for name, what in figures]
    text = "\n".join(md)
    (out / "leaderboard.md").write_text(text)
    (out / "leaderboard.tex").write_text("\n".join(to_latex(t, m) for t, m in zip(tables, all_marks)))
    return text


def _notes(runs: RunSet, old: list[str]) -> list[str]:
    """The leaderboard's closing notes: configs told apart, runs left out and why, unchecked runs."""
    notes = []
    for (bench, strategy), labels in sorted(runs.differing.items()):
        parts = [f"`{label}`: " + ", ".join(f"{k}={v}" for k, v in values.items())
                 for label, values in labels.items()]
        notes.append(f"{bench} / {strategy}: runs of {len(labels)} configurations, never averaged together; "
                     f"they differ in " + "; ".join(parts) + "\n")
    if old:
        notes.append(f"Ignored {len(old)} older run(s) of a (strategy, config, seed) that has a newer run: "
                     + ", ".join(f"`{r}`" for r in old) + "\n")
    if runs.damaged:
        notes.append(f"Left out {len(runs.damaged)} damaged run(s): {_listing(runs.damaged)}\n")
    if runs.legacy:
        notes.append(f"{len(runs.legacy)} run(s) have no checksum of their metrics.csv in a manifest (written "
                     f"before cml_bench recorded one, or not by cml_bench): read unchecked.\n")
    return notes


def run_files(root: Path, df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The newest runs' ``name`` files (``anytime.csv``, ``memory.csv``) concatenated, with a ``run``
    column; empty when no run has one (runs from before they existed, or without replay / anytime)."""
    runs = sorted(set(latest_runs(df)["run"]))
    frames = [pd.read_csv(root / r / name).assign(run=r) for r in runs if (root / r / name).is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _campaign_figures(root: Path, df: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    """anytime.csv + plot_anytime.png and memory_shares.csv + plot_memory_<benchmark>.png, where the
    runs recorded them; returns (file, caption) of each figure drawn."""
    from cml_bench import plots

    figures = []
    anytime = run_files(root, df, ANYTIME_FILE)
    if len(anytime):
        anytime.to_csv(out / "anytime.csv", index=False)
        plots.plot_anytime(anytime_curve(anytime), out / "plot_anytime.png", strategy_order(anytime["strategy"]))
        figures.append(("plot_anytime.png", "mAP during training (anytime evaluation)"))
    memory = run_files(root, df, MEMORY_FILE)
    if len(memory):
        shares = memory_shares(memory)
        shares.to_csv(out / "memory_shares.csv", index=False)
        for bench, sub in shares.groupby("benchmark"):
            name = f"plot_memory_{re.sub(r'[^A-Za-z0-9_.-]', '_', bench)}.png"
            plots.plot_memory(sub, out / name, strategy_order(sub["strategy"]))
            figures.append((name, f"{bench}: replay memory composition"))
    return figures


def _anytime_markdown(df: pd.DataFrame, alpha: float, against: str | None) -> str:
    """A_auc (anytime subsets) next to final mAP (full test sets), with the same significance marks."""
    rows = df[df["strategy"].isin(set(df.loc[df["metric"] == AUC_METRIC, "strategy"]))]
    columns = ((AUC_METRIC, "mAP"), ("all",))
    seeds = per_seed_table(rows, *columns)
    # no bootstrap here (A_auc cannot be recomputed from scores.npz): the CI columns say "not available"
    marks, _ = significance.add_bootstrap(significance.compare_to_reference(seeds, alpha, against), seeds, None, 0)
    return ("## Anytime evaluation\n\nA_auc_mAP: area under the mAP-vs-samples curve of the anytime "
            "evaluation (Koh et al., ICLR 2022; the seen tasks' test subsets of `eval.anytime_subset` "
            "images), next to the final mAP on the full test sets.\n\n"
            + to_markdown(final_table(rows, *columns), marks=marks))


def _scores(root: Path, run: str) -> "significance.TestScores | None":
    path = root / run / SCORES_FILE
    return load_scores(path) if path.is_file() else None


def _mark_columns(marks: pd.DataFrame) -> pd.DataFrame:
    """Columns ``<group>_<metric>_mark`` and ``_p`` (the paired test's p) for the "mean" rows of the CSV."""
    wide = marks.assign(col=marks["group"] + "_" + marks["metric"]).pivot(
        index=["benchmark", "strategy"], columns="col", values=["mark", "p_value"])
    order = list(dict.fromkeys(marks["group"] + "_" + marks["metric"]))
    wide.columns = [f"{c}_{'mark' if kind == 'mark' else 'p'}" for kind, c in wide.columns]
    wide = wide[[f"{c}_{k}" for c in order for k in ("mark", "p")]]
    return wide.reset_index().assign(row="mean")


def _against_table(marks: pd.DataFrame) -> str:
    """Per benchmark, the headline overall column against its reference row: difference, paired
    test, bootstrap interval over test images (Markdown)."""
    metric = "mA" if "mA" in set(marks["metric"]) else "mAP"
    out = []
    for bench, m in marks[(marks["group"] == "all") & (marks["metric"] == metric)].groupby("benchmark", sort=False):
        m = m[m["against"].notna()]
        if m.empty:
            continue
        ref = m["against"].iloc[0]
        level = 100 * (1 - 0.05)
        lines = [f"#### {bench}: overall {metric} against {ref}", "",
                 f"| strategy | difference (paired seeds) | paired test (pairs) | p | bootstrap {level:.0f}% CI (seeds) |",
                 "|---|---:|---|---:|---|"]
        rank = {s: i for i, s in enumerate(strategy_order(m["strategy"]))}
        for r in sorted(m.itertuples(), key=lambda r: rank[r.strategy]):
            if r.strategy == ref:
                continue
            ci = ("not available" if r.ci_seeds == 0 else
                  f"[{r.ci_low:+.1f}, {r.ci_high:+.1f}] ({r.ci_seeds})")
            p = "" if np.isnan(r.p_value) else f"{r.p_value:.3g}"
            diff = "" if np.isnan(r.diff) else f"{r.diff:+.1f}"
            lines.append(f"| {r.strategy} | {diff} | {TEST_NAMES.get(r.test, '-')} ({r.n_pairs}) | {p} | {ci} |")
        out.append("\n".join(lines))
    return "".join("\n\n" + block for block in out)


def _family(rows: pd.DataFrame, kinds: Mapping[str, str]) -> str:
    """One benchmark's metric family: the kind its runs' manifests record (``BenchmarkMeta.kind``).
    Runs written before manifests recorded it (every run up to this change) fall back to the guess
    from their metric names (:func:`~cml_bench.results.metric_family`): the benchmark registry knows
    a kind only by building the benchmark, i.e. reading its data, which a leaderboard must not need.
    Runs that disagree (a plugin that changed its kind) get the guess too."""
    recorded = {kinds[run] for run in rows["run"].unique() if run in kinds}
    if len(recorded) == 1 and next(iter(recorded)) in FAMILY_COLUMNS:
        return next(iter(recorded))
    return metric_family(rows)


def _by_family(df: pd.DataFrame, kinds: Mapping[str, str] | None = None) -> list[tuple[str, pd.DataFrame]]:
    """The rows of each metric family present (continual first), a benchmark's runs all in one;
    ``kinds``: run -> recorded kind (:attr:`RunSet.kinds`)."""
    family = {b: _family(rows, kinds or {}) for b, rows in df.groupby("benchmark")}
    return [(f, df[df["benchmark"].map(family) == f]) for f in FAMILY_COLUMNS if f in family.values()]
