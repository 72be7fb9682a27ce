"""Leaderboard plots (PNG): the stream curve, the task x task mAP matrices, the per-group final mAP,
the anytime curve, the replay memory's composition.

Every function draws one table it is given (computed by :mod:`cml_bench.leaderboard`, which
decides which runs count) and writes one PNG; nothing here reads runs or filters them.
``strategies`` is the display order of the strategies (the leaderboard's ``strategy_order``); a
panel shows those of its rows in that order (None: alphabetical). Figures are drawn on a
``matplotlib.figure.Figure`` with the Agg canvas rather than through pyplot, so importing or
calling this module changes no global matplotlib state (backend, open figures) of the caller.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from seaborn.utils import relative_luminance

from cml_bench.registry import row_parts


def _order(strategies: Sequence[str] | None, present: Iterable[str]) -> list[str]:
    """The strategies of ``present`` in the display order ``strategies`` (the ones it lacks last,
    alphabetically)."""
    present = set(present)
    order = [s for s in strategies or () if s in present]
    return order + sorted(present - set(order))


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained", dpi=110)
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(nrows, ncols, squeeze=False).flat)


def _palette(strategies: list[str]) -> dict[str, tuple]:
    # tab20 pairs a dark and a light shade of each hue; taking the dark ones first keeps up to 10
    # strategies in clearly different colours and the next 10 still distinguishable.
    if len(strategies) <= 10:
        colours = sns.color_palette("tab10", len(strategies))
    elif len(strategies) <= 20:
        tab20 = sns.color_palette("tab20", 20)
        colours = (tab20[0::2] + tab20[1::2])[: len(strategies)]
    else:
        colours = sns.color_palette("husl", len(strategies))
    return dict(zip(strategies, colours))


def _save(fig: Figure, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")


HEAD_ORDER = ("pooled", "+cos", "+ssca")
"""Panel order of the heads in the stream and anytime figures (other heads after them, alphabetically)."""


def _split_heads(d: pd.DataFrame, strategies: Sequence[str] | None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """``d`` with ``base`` and ``head`` columns (``"prs+ssca [1a2b3c]"`` -> ``"prs [1a2b3c]"``,
    ``"+ssca"``; no suffix: ``"pooled"``), the bases in display order and the heads present."""
    def split(name: str) -> tuple[str, str]:
        base, head, tag = row_parts(name)  # a second config of a strategy keeps its tag
        return base + (f" [{tag}]" if tag else ""), "pooled" if head == "pooled" else f"+{head}"

    parts = [split(name) for name in d["strategy"]]
    d = d.assign(base=[b for b, _ in parts], head=[h for _, h in parts])
    bases = list(dict.fromkeys(split(name)[0] for name in _order(strategies, d["strategy"])))
    present = set(d["head"])
    heads = [h for h in HEAD_ORDER if h in present] + sorted(present - set(HEAD_ORDER))
    return d, bases, heads


def _head_grid(d: pd.DataFrame, strategies: Sequence[str] | None, width: float, height: float):
    """One row of panels per benchmark and one column per head, the strategies coloured by their
    base (the same colour for ``prs``, ``prs+cos`` and ``prs+ssca``): 24 strategies in one panel
    need 24 colours, which no palette keeps apart; 8 bases in 3 panels read at a glance."""
    d, bases, heads = _split_heads(d, strategies)
    benchmarks = sorted(d["benchmark"].unique())
    fig, axes = _figure(width * len(heads) + 2.2, height * len(benchmarks), len(benchmarks), len(heads))
    for ax in axes[1:]:
        ax.sharey(axes[0])
    panels = [(bench, head, ax) for (bench, head), ax in
              zip(((b, h) for b in benchmarks for h in heads), axes)]
    return d, bases, heads, _palette(bases), fig, panels


def _title(bench: str, head: str, heads: list[str]) -> str:
    return bench if heads == ["pooled"] else f"{bench}: {head} head"


def _legend(ax, handles: list, title: str) -> None:
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), title=title, frameon=False)


def plot_stream(curve: pd.DataFrame, path: str | Path, strategies: Sequence[str] | None = None) -> None:
    """mAP on the union of the seen tasks (all classes) after each task, mean over seeds with +-1 sd
    error bars: one panel per head (pooled, +cos, +ssca) and benchmark, one line per base strategy,
    in the same colour in every panel. Bars rather than bands: overlapping bands hide each other,
    and a strategy evaluated once (multitask) has no band at all; its marker shows its one point.
    ``curve``: rows benchmark, strategy, seed, trained_through_task, value (``leaderboard.stream_curve``)."""
    from matplotlib.lines import Line2D

    if curve.empty:
        raise ValueError("Nothing to plot: no mAP rows with eval_on = seen and group = all.")
    d, bases, heads, colours, fig, panels = _head_grid(curve, strategies, 4.2, 4.0)
    for bench, head, ax in panels:
        sub = d[(d["benchmark"] == bench) & (d["head"] == head)]
        sns.lineplot(data=sub, x="trained_through_task", y="value", hue="base",
                     hue_order=[b for b in bases if b in set(sub["base"])], palette=colours, marker="o",
                     errorbar="sd", err_style="bars", err_kws={"capsize": 3, "elinewidth": 1}, ax=ax, legend=False)
        tasks = sorted(d.loc[d["benchmark"] == bench, "trained_through_task"].unique())
        ax.set_xticks(tasks, [str(t) for t in tasks])
        ax.set(title=_title(bench, head, heads), xlabel="after training through task", ylabel="mAP on all seen tasks (%)")
        ax.grid(alpha=0.3)
    _legend(panels[len(heads) - 1][2], [Line2D([], [], color=colours[b], marker="o", label=b) for b in bases],
            "strategy (mean ± sd)")
    _save(fig, path)


def plot_matrix(matrix: pd.DataFrame, path: str | Path, strategies: Sequence[str] | None = None) -> None:
    """Task x task heatmaps of mAP (mean over seeds) on task j after task i, one small panel per
    (benchmark, strategy), on one shared colour scale. ``matrix``: ``leaderboard.accuracy_matrix``."""
    m = matrix
    if m.empty:
        raise ValueError("Nothing to plot: no per-task mAP rows (eval_on = task<j>, group = all).")
    panels = [(b, s) for b in sorted(m["benchmark"].unique())
              for s in _order(strategies, m.loc[m["benchmark"] == b, "strategy"])]
    tasks = range(int(max(m["task"].max(), m["trained_through_task"].max())) + 1)
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    side = 0.55 * len(tasks) + 1.3
    fig, axes = _figure(side * ncols + 1.0, (side + 0.3) * nrows, nrows, ncols)
    norm = Normalize(0, max(10.0, math.ceil(m["mAP_mean"].max() / 10) * 10))
    for ax, (bench, strategy) in zip(axes, panels):
        sub = m[(m["benchmark"] == bench) & (m["strategy"] == strategy)]
        grid = sub.pivot(index="trained_through_task", columns="task", values="mAP_mean")
        _annotated_heatmap(ax, grid.reindex(index=tasks, columns=tasks), norm)
        ax.set_title(strategy if len({b for b, _ in panels}) == 1 else f"{strategy}\n{bench}", fontsize=9)
        ax.set_xlabel("evaluated on task", fontsize=8)
        ax.set_ylabel("after task", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=axes, shrink=0.8 if nrows > 1 else 1.0,
                 label="mAP (%), mean over seeds")
    _save(fig, path)


def _annotated_heatmap(ax, grid: pd.DataFrame, norm: Normalize, cmap: str = "viridis") -> None:
    """``grid``'s cells coloured on ``norm`` and labelled with their values (one decimal; empty cells
    blank), rows top-down, like ``seaborn.heatmap(annot=True, square=True)``.

    Drawn directly because seaborn's heatmap draws the whole figure once per call (to check its tick
    labels for overlap): with one panel per strategy that is quadratic in the panels. With the
    per-class AP change in :mod:`cml_bench.metrics`, the reference leaderboard went from 47.9 s to
    37.8 s (2 cores, paired).
    """
    values = grid.to_numpy(dtype=float)
    colours = colormaps[cmap](norm(values))
    ax.pcolormesh(np.ma.masked_invalid(values), cmap=cmap, norm=norm, edgecolors="white", linewidth=0.5)
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):  # seaborn's rule: dark text on light cells, white on dark ones
            text = ".15" if relative_luminance(colours[i, j]) > 0.408 else "w"
            ax.text(j + 0.5, i + 0.5, f"{v:.1f}", ha="center", va="center", size=7, color=text)
    ax.set(xlim=(0, values.shape[1]), ylim=(values.shape[0], 0), aspect="equal")
    ax.set_xticks(np.arange(values.shape[1]) + 0.5, [str(c) for c in grid.columns])
    ax.set_yticks(np.arange(values.shape[0]) + 0.5, [str(r) for r in grid.index])
    ax.tick_params(labelsize=8, rotation=0, length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_groups(final: pd.DataFrame, path: str | Path, strategies: Sequence[str] | None = None,
                groups: Sequence[str] | None = None) -> None:
    """Final mAP per class group (majority / moderate / minority / overall) as grouped bars per
    strategy: mean over seeds, +-1 sd error bars (one row of panels per benchmark). ``final``: rows
    benchmark, strategy, seed, group (as displayed), value (``leaderboard.group_results``);
    ``groups``: the bars' order (None: as they come)."""
    d = final
    if d.empty:
        raise ValueError("Nothing to plot: no final mAP rows (last task, eval_on = seen).")
    groups = list(groups) if groups is not None else list(dict.fromkeys(d["group"]))
    benchmarks = sorted(d["benchmark"].unique())
    most = max(d.loc[d["benchmark"] == b, "strategy"].nunique() for b in benchmarks)
    fig, axes = _figure(max(6.0, 0.75 * most + 2.5), 3.8 * len(benchmarks), len(benchmarks), 1)
    for i, (ax, bench) in enumerate(zip(axes, benchmarks)):
        sub = d[d["benchmark"] == bench]
        sns.barplot(data=sub, x="strategy", y="value", order=_order(strategies, sub["strategy"]),
                    hue="group", hue_order=groups, palette="colorblind",
                    errorbar="sd", capsize=0.15, err_kws={"linewidth": 1}, ax=ax, legend=i == 0)
        ax.set(title=bench, xlabel="", ylabel="final mAP (%)")
        ax.grid(axis="y", alpha=0.3)
        for label in ax.get_xticklabels():  # long names like "reservoir+ssca" must not overlap
            label.set(rotation=35, ha="right", rotation_mode="anchor")
    sns.move_legend(axes[0], "upper left", bbox_to_anchor=(1.01, 1), title="classes", frameon=False)
    _save(fig, path)


def _task_lines(ax, ends: list[float]) -> None:
    for x in ends[:-1]:  # where each task but the last ends, in stream samples
        ax.axvline(x, color="0.6", linewidth=0.8, linestyle=":", zorder=0)


def plot_anytime(curve: pd.DataFrame, path: str | Path, strategies: Sequence[str] | None = None) -> None:
    """mAP on the seen tasks' (subsampled) test sets during training, against stream samples seen:
    one panel per head (pooled, +cos, +ssca) and benchmark, one line per base strategy (mean over
    seeds, +-1 sd band), dotted lines at task ends. The x axis spans the stream; a strategy trained
    on more samples than the stream holds (the joint reference's extra passes) is drawn as a dashed
    line at its final value, since its curve has no task ends to compare with. ``curve``: rows
    benchmark, strategy, seed, samples, task_end_samples, value (``leaderboard.anytime_curve``)."""
    from matplotlib.lines import Line2D

    if curve.empty:
        raise ValueError("Nothing to plot: no anytime mAP rows (runs with eval.every set).")
    d, bases, heads, colours, fig, panels = _head_grid(curve, strategies, 4.6, 3.8)
    passes = {}
    for bench, head, ax in panels:
        sub = d[(d["benchmark"] == bench) & (d["head"] == head)]
        stream = d.loc[d["benchmark"] == bench, "task_end_samples"].max()
        longer = sub.groupby("base")["samples"].max().loc[lambda x: x > stream]
        inside = sub[~sub["base"].isin(longer.index)]
        sns.lineplot(data=inside, x="samples", y="value", hue="base",
                     hue_order=[b for b in bases if b in set(inside["base"])], palette=colours,
                     errorbar="sd", ax=ax, legend=False)
        for base, last in longer.items():  # final value, mean over seeds
            rows = sub[sub["base"] == base]
            final = rows[rows["samples"] == rows.groupby("seed")["samples"].transform("max")]["value"].mean()
            ax.axhline(final, color=colours[base], linestyle="--", linewidth=1.4)
            passes[base] = last / stream
        _task_lines(ax, sorted(set(d.loc[d["benchmark"] == bench, "task_end_samples"])))
        ax.set_xlim(0, stream * 1.02)
        ax.set(title=_title(bench, head, heads), xlabel="stream samples seen", ylabel="mAP on the seen tasks (%)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[b], linestyle="--" if b in passes else "-",
                      label=f"{b} (final, {passes[b]:.0f} passes)" if b in passes else b) for b in bases]
    _legend(panels[len(heads) - 1][2], handles, "strategy (mean ± sd)")
    _save(fig, path)


def _merge_identical_memories(shares: pd.DataFrame, strategies: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """One curve for strategies whose memories were identical at every point of every seed (a
    label-only buffer keeps the same samples whatever the head), labelled ``prs, prs+cos``; drawn
    apart, such curves lie exactly on top of each other and hide all but the last."""
    cols = ["seed", "point", "samples", "group"]
    curves: dict[bytes, list[str]] = {}
    for name in strategies:
        rows = shares[shares["strategy"] == name].sort_values(cols)
        key = rows[cols].to_csv(index=False).encode() + rows["memory"].to_numpy().round(9).tobytes()
        curves.setdefault(key, []).append(name)
    label = {name: ", ".join(names) for names in curves.values() for name in names}
    first = {names[0] for names in curves.values()}
    kept = shares[shares["strategy"].isin(first)]
    return kept.assign(strategy=kept["strategy"].map(label)), [label[n] for n in strategies if n in first]


def plot_memory(shares: pd.DataFrame, path: str | Path, strategies: Sequence[str] | None = None) -> None:
    """What the replay memory held over the stream, for one benchmark: per class group (panels), the
    share of the memory's label occurrences for each replay strategy (mean over seeds, +-1 sd band),
    beside the stream's own share so far (dashed) and PRS's target n_c^rho (dotted).
    ``shares``: :func:`cml_bench.recording.memory_shares` rows of one benchmark."""
    if shares.empty:
        raise ValueError("Nothing to plot: no memory.csv rows (replay runs write them).")
    groups = [g for g in ("majority", "moderate", "minority") if g in set(shares["group"])]
    shares, strategies = _merge_identical_memories(shares, _order(strategies, shares["strategy"]))
    fig, axes = _figure(4.2 * len(groups) + 2.4, 3.6, 1, len(groups))
    ends = sorted(shares[shares["point"] == "task"].groupby("task")["samples"].max())
    for i, (ax, group) in enumerate(zip(axes, groups)):
        sub = shares[shares["group"] == group]
        sns.lineplot(data=sub, x="samples", y="memory", hue="strategy", hue_order=strategies,
                     palette=_palette(strategies), errorbar="sd", ax=ax, legend=False)
        # the stream and the target depend on the data order only: the same for every strategy of a seed
        ref = sub.groupby("samples")[["stream", "target"]].mean().reset_index()
        ax.plot(ref["samples"], ref["stream"], color="black", linestyle="--", linewidth=1.2)
        ax.plot(ref["samples"], ref["target"], color="0.45", linestyle=":", linewidth=1.6)
        _task_lines(ax, ends)
        ax.set(title=f"{group} classes", xlabel="stream samples seen", ylabel="share of label occurrences (%)")
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    colours = _palette(strategies)
    handles = [Line2D([], [], color=colours[s], label=f"{s}: memory") for s in strategies]
    handles += [Line2D([], [], color="black", linestyle="--", label="stream so far"),
                Line2D([], [], color="0.45", linestyle=":", linewidth=1.6, label="PRS target n_c^rho")]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.suptitle(f"{shares['benchmark'].iloc[0]}: what the replay memory held (mean ± sd over seeds)")
    _save(fig, path)
