"""Leaderboard: the final results of many runs, aggregated over seeds, as CSV, Markdown, LaTeX, plots.

Reads every finished run folder below a results root (the layout of :mod:`cml_bench.results`:
``<benchmark>/<strategy>/seed<k>-<timestamp>[-n]/metrics.csv``, at any depth; hidden ``.partial-*``
folders are runs still being written and are skipped). A run's *final results* are its rows after its
last task (``trained_through_task`` = its maximum) on the union of all test sets (``eval_on = seen``).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from cml_bench import mlcil
from cml_bench.evaluator import ATTRIBUTE_METRICS
from cml_bench.results import CSV_COLUMNS, GROUP_ORDER, metric_family

METRICS = ("CF1", "OF1", "mAP")
GROUPS = tuple(GROUP_ORDER)  # majority, moderate, minority, all ("overall" in tables and plots)
STATS = ("mean", "std", "n")
GROUP_LABELS = {"majority": "majority", "moderate": "moderate", "minority": "minority", "all": "overall"}
# Leaderboard columns (metrics, groups) of each metric family (see cml_bench.evaluator): single-task
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


def load_results(root: str | Path) -> pd.DataFrame:
    """Every finished run's metrics.csv below ``root`` (any depth), with a ``run`` column.

    ``run`` is the run folder relative to ``root`` (POSIX form). Folders whose name starts with
    "." (unfinished ``.partial-*`` runs) are skipped with everything below them. Raises
    FileNotFoundError if ``root`` is not a folder, ValueError if no finished run is found or a
    metrics.csv is corrupted (naming the file). Nothing is written.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Results folder {root} does not exist.")
    files = sorted(p for p in root.rglob("metrics.csv")
                   if not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise ValueError(f"No finished runs found under {root} (no <benchmark>/<strategy>/seed<k>-*/"
                         f"metrics.csv). Make one with `python -m cml_bench run --out {root} ...`.")
    frames = [_read_metrics(p).assign(run=p.parent.relative_to(root).as_posix()) for p in files]
    return pd.concat(frames, ignore_index=True)


def _run_age(run: str) -> str:
    # seed<k>-<YYYYmmdd-HHMMSS>[-n]: the timestamp, then the clash suffix n, order runs by age;
    # a folder renamed by hand sorts as the oldest.
    name = PurePosixPath(run).name
    m = _RUN_NAME.match(name)
    return f"{m.group(1)}|{int(m.group(2) or 0):06d}|{name}" if m else f"|000000|{name}"


def latest_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the newest run of each (benchmark, strategy, seed), by run folder timestamp."""
    runs = df[["benchmark", "strategy", "seed", "run"]].drop_duplicates()
    runs = runs.assign(age=runs["run"].map(_run_age)).sort_values("age")
    newest = runs.groupby(["benchmark", "strategy", "seed"])["run"].last()
    return df[df["run"].isin(set(newest))]


def superseded_runs(df: pd.DataFrame) -> list[str]:
    """Runs ignored because a newer run of the same (benchmark, strategy, seed) exists."""
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
        base = name.split("+")[0]
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


def _render(table: pd.DataFrame, tex: bool, n_note: bool = True) -> str:
    """Markdown or LaTeX body of :func:`to_markdown` / :func:`to_latex` (shared layout rules)."""
    pm, dash, blocks = (r" $\pm$ ", "--", []) if tex else (" ± ", "–", [])
    esc = (lambda s: re.sub(r"([&%$#_{}])", r"\\\1", s)) if tex else (lambda s: s)
    pairs = list(dict.fromkeys((g, m) for g, m, _ in table.columns))
    for bench in table.index.unique("benchmark"):
        sub = _sorted_rows(table.loc[[bench]]).loc[bench]
        ours = [s for s in sub.index if not s.startswith(REFERENCE_PREFIX)]
        best = {}
        for p in pairs:  # by the displayed (rounded) mean: ties are all bold, unless all tie
            means = sub.loc[ours, (*p, "mean")].round(1).dropna()
            low = p[1].startswith("forgetting_")  # forgetting: lower is better
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
                if strategy in ours and best[(g, m)] is not None and round(mean, 1) == best[(g, m)]:
                    text = rf"\textbf{{{text}}}" if tex else f"**{text}**"
                cells.append(text)
            n = "" if pd.isna(row_n[strategy]) else str(int(row_n[strategy]))
            lines.append([esc(strategy), *cells] + ([n] if n_col or tex else []))
        notes = ["Final results (after the last task, on the union of all tasks' test sets): mean"
                 f"{pm}sample std over seeds; bold: best mean per column."]
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
                      else _md_block(bench, pairs, lines, n_col, notes))
    return "\n\n".join(blocks) + "\n"


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


def to_markdown(table: pd.DataFrame, n_note: bool = True) -> str:
    """A :func:`final_table` in the paper's layout, one Markdown table per benchmark.

    Rows: strategies; columns: majority / moderate / minority / overall x metrics. Cells "mean ± std"
    (one decimal; "mean" alone when n = 1 or std is unknown); the best mean per column (rows
    labelled ``"paper: ..."`` excluded; none when all rows tie) in bold. The number of
    seeds is a note when every strategy has the same n and ``n_note``, otherwise an "n" column.
    """
    return _render(table, tex=False, n_note=n_note)


def to_latex(table: pd.DataFrame) -> str:
    """A :func:`final_table` as booktabs LaTeX tables (one per benchmark), same rules as
    :func:`to_markdown`: best per column in \\textbf{}, ± as $\\pm$, an n column."""
    return _render(table, tex=True)


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


def write_leaderboard(root: str | Path, out_dir: str | Path | None = None,
                      compare: bool = False) -> str:
    """Load the runs under ``root`` and write the leaderboard into ``out_dir`` (default: ``root``).

    Writes all_metrics.csv (every row of every run, long format), forgetting.csv (see
    :func:`forgetting_table`), leaderboard.csv (column ``row``: "seed" for one run's final values, "mean" / "std" / "n"
    over seeds; column ``reference`` True for published rows), leaderboard.md, leaderboard.tex,
    accuracy_matrix.csv, plot_stream.png, plot_matrix.png and plot_groups.png. With ``compare``, the
    paper's rows (see :func:`compare_rows`) are added for COCOseq / NUS-WIDEseq benchmarks, marked
    and never ranked. Benchmarks of each metric family (:data:`FAMILY_COLUMNS`) get their own
    tables; the plots are drawn for continual streams only. Returns the Markdown text.
    """
    from cml_bench import plots  # matplotlib only when plots are drawn

    root = Path(root)
    df = load_results(root)
    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    tables, flats = [], []
    for family, rows in _by_family(df):  # one table per metric family: its own columns
        table = final_table(rows, *FAMILY_COLUMNS[family])
        if compare and family in ("continual", mlcil.KIND):
            refs = [compare_rows(b).reindex(columns=table.columns) if family == "continual"
                    else mlcil_compare_rows(b, table.columns) for b in table.index.unique(0)]
            table = pd.concat([table] + [r for r in refs if len(r)]).sort_index()
        parts = [_flat(per_seed_table(rows, *FAMILY_COLUMNS[family]), "seed")]
        parts += [_flat(table.xs(s, axis=1, level="stat"), s) for s in STATS]
        tables.append(table)
        flats.append(pd.concat(parts, ignore_index=True))
    flat = pd.concat(flats, ignore_index=True)
    flat = flat.assign(reference=flat["strategy"].str.startswith(REFERENCE_PREFIX),
                       seed=flat["seed"].astype("Int64"), order=flat["row"].map(["seed", *STATS].index))
    flat = _sorted_rows(flat.set_index(["benchmark", "strategy", "order", "seed"])).reset_index()
    lead = ["benchmark", "strategy", "row", "seed", "run", "reference"]
    flat = flat[lead + [c for c in flat.columns if c not in lead + ["order"]]]
    flat.to_csv(out / "leaderboard.csv", index=False, float_format="%.10g")  # n as 3, not 3.0
    accuracy_matrix(df).to_csv(out / "accuracy_matrix.csv", index=False)
    df.to_csv(out / "all_metrics.csv", index=False)  # the tidy long format of every run, with `run`
    forgetting_table(df).to_csv(out / "forgetting.csv", index=False)
    continual = dict(_by_family(df)).get("continual")
    if continual is not None:  # the plots follow mAP over a stream of tasks and class groups
        plots.plot_stream(continual, out / "plot_stream.png")
        plots.plot_matrix(continual, out / "plot_matrix.png")
        plots.plot_groups(continual, out / "plot_groups.png")

    old = superseded_runs(df)
    md = [f"# Leaderboard: {df['run'].nunique() - len(old)} runs under `{root}`", ""]
    md += [to_markdown(table) for table in tables]
    if old:
        md.append(f"Ignored {len(old)} older run(s) of a (strategy, seed) that has a newer run: "
                  + ", ".join(f"`{r}`" for r in old) + "\n")
    if continual is not None:
        md.append("![mAP on all seen tasks after each task](plot_stream.png)\n\n"
                  "![mAP on task j after task i](plot_matrix.png)\n\n"
                  "![final mAP per class group](plot_groups.png)\n")
    text = "\n".join(md)
    (out / "leaderboard.md").write_text(text)
    (out / "leaderboard.tex").write_text("\n".join(to_latex(table) for table in tables))
    return text


def _by_family(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The rows of each metric family present (continual first), a benchmark's runs all in one."""
    family = {b: metric_family(rows) for b, rows in df.groupby("benchmark")}
    return [(f, df[df["benchmark"].map(family) == f]) for f in FAMILY_COLUMNS if f in family.values()]
