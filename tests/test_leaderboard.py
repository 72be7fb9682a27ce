"""The leaderboard: loading run folders, aggregation over seeds, rendering, paper rows, plots."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cml_bench import leaderboard as lb
from cml_bench import plots
from cml_bench.results import CSV_COLUMNS

BENCH = "synth-cocoseq"
TASKS = 4
BASE = {"finetune": 10.0, "prs": 40.0, "multitask": 50.0, "ewc": 20.0}
SEED_OFFSET = {0: 0.0, 1: 2.0, 2: 7.0}  # mean 3, sample std sqrt(13)
GROUP_OFFSET = {"majority": 10.0, "moderate": 0.0, "minority": -10.0, "all": 1.0}
METRIC_OFFSET = {"CF1": -2.0, "OF1": -1.0, "mAP": 0.0, "CP": 0.5}
STAMP = "20250101-120000"


def value(strategy: str, seed: int, i: int, j: int | None, group: str, metric: str) -> float:
    """Known metric value: task j after task i loses 5 points per later task; seen is not decayed."""
    decay = 0.0 if j is None else 5.0 * (i - j)
    return BASE[strategy] + SEED_OFFSET[seed] + GROUP_OFFSET[group] + METRIC_OFFSET[metric] - decay


def make_run(root: Path, strategy: str, seed: int, stamp: str = STAMP, suffix: str = "",
             shift: float = 0.0, bench: str = BENCH, parent: str = "") -> Path:
    """A finished run folder in the exact layout of cml_bench.results.finish_run (metrics only)."""
    folder = root / parent / bench / strategy / f"seed{seed}-{stamp}{suffix}"
    folder.mkdir(parents=True)
    rows = []
    steps = [TASKS - 1] if strategy == "multitask" else range(TASKS)  # joint: evaluated once
    for i in steps:
        for eval_on, j in [(f"task{j}", j) for j in range(i + 1)] + [("seen", None)]:
            for group in GROUP_OFFSET:
                for metric in METRIC_OFFSET:
                    rows.append([bench, strategy, seed, i, eval_on, group, metric,
                                 value(strategy, seed, i, j, group, metric) + shift])
    if strategy != "multitask":
        rows.append([bench, strategy, seed, TASKS - 1, "seen", "all", "forgetting_mAP", 7.5])
    pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(folder / "metrics.csv", index=False)
    for name in ("config.yaml", "manifest.json", "summary.md"):
        (folder / name).write_text("{}\n")
    return folder


@pytest.fixture
def results(tmp_path) -> Path:
    """finetune / prs / multitask x seeds 0-2, ewc seed 0 only, older duplicates, a partial run."""
    root = tmp_path / "results"
    for strategy in ("finetune", "prs", "multitask"):
        for seed in SEED_OFFSET:
            make_run(root, strategy, seed, suffix="-1" if (strategy, seed) == ("prs", 2) else "")
    make_run(root, "ewc", 0)
    # older runs of the same (strategy, seed), which must be ignored: an earlier timestamp (in
    # another campaign folder, deeper) and the same timestamp without the clash suffix "-1"
    make_run(root, "prs", 1, stamp="20241231-235959", shift=100.0, parent="old/campaign")
    make_run(root, "prs", 2, shift=100.0)
    partial = root / BENCH / "prs" / ".partial-seed0-20250102-000000-4242"
    partial.mkdir()
    (partial / "metrics.csv").write_text(",".join(CSV_COLUMNS)  # half written, with a bogus value
                                         + f"\n{BENCH},prs,0,3,seen,all,mAP,999\n{BENCH},pr")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_load_results_reads_finished_runs_only(results):
    df = lb.load_results(results)
    assert {"run", *CSV_COLUMNS} <= set(df.columns)
    assert df["run"].nunique() == 12  # 9 + ewc + 2 older; the partial run is skipped
    assert f"{BENCH}/prs/seed2-{STAMP}-1" in set(df["run"])
    assert "old/campaign/" + f"{BENCH}/prs/seed1-20241231-235959" in set(df["run"])
    assert not df["run"].str.contains("partial").any() and (df["value"] < 999).all()


def test_final_table_mean_std_n_by_hand(results):
    table = lb.final_table(lb.load_results(results))
    assert sorted(table.index) == [(BENCH, s) for s in ("ewc", "finetune", "multitask", "prs")]
    assert table.columns.names == ["group", "metric", "stat"]
    prs = table.loc[(BENCH, "prs")]
    # seed offsets 0, 2, 7: mean 3, sample std sqrt(((-3)^2 + (-1)^2 + 4^2) / 2) = sqrt(13)
    assert prs[("all", "mAP", "mean")] == pytest.approx(40 + 1 + 3)
    assert prs[("minority", "CF1", "mean")] == pytest.approx(40 - 10 - 2 + 3)
    assert prs[("majority", "OF1", "std")] == pytest.approx(math.sqrt(13))
    assert prs[("moderate", "mAP", "n")] == 3
    ewc = table.loc[(BENCH, "ewc")]
    assert ewc[("all", "mAP", "n")] == 1 and np.isnan(ewc[("all", "mAP", "std")])
    # multitask's only evaluation is after the last task: it is its final result
    assert table.loc[(BENCH, "multitask"), ("all", "CF1", "mean")] == pytest.approx(50 + 1 - 2 + 3)
    narrow = lb.final_table(lb.load_results(results), metrics=("CP",), groups=("all",))
    assert list(narrow.columns) == [("all", "CP", s) for s in ("mean", "std", "n")]


def test_newest_run_of_a_seed_wins(results):
    df = lb.load_results(results)
    assert lb.superseded_runs(df) == [f"old/campaign/{BENCH}/prs/seed1-20241231-235959",
                                      f"{BENCH}/prs/seed2-{STAMP}"]
    seeds = lb.per_seed_table(df).xs((BENCH, "prs"))
    assert list(seeds.index.get_level_values("seed")) == [0, 1, 2]
    assert seeds[("all", "mAP")].tolist() == [41.0, 43.0, 48.0]  # none of the +100 runs
    assert seeds.index.get_level_values("run")[2].endswith(f"seed2-{STAMP}-1")


def test_accuracy_matrix_means_over_seeds(results):
    m = lb.accuracy_matrix(lb.load_results(results))
    assert list(m.columns) == ["benchmark", "strategy", "trained_through_task", "task",
                               "mAP_mean", "mAP_std", "n"]
    cell = m[(m.strategy == "prs") & (m.trained_through_task == 3) & (m.task == 0)].iloc[0]
    assert cell.mAP_mean == pytest.approx(40 + 1 + 3 - 15) and cell.n == 3
    assert cell.mAP_std == pytest.approx(math.sqrt(13))
    assert len(m[m.strategy == "finetune"]) == 10  # lower triangle of 4 x 4
    assert set(m[m.strategy == "multitask"].trained_through_task) == {3}


def test_markdown_bold_best_pm_cells_and_n(results):
    table = lb.final_table(lb.load_results(results))
    md = lb.to_markdown(table)
    # the paper's row order: multitask, finetune, ewc, ..., prs
    assert re.findall(r"^\| (\w+) \|", md, re.M)[1:] == ["multitask", "finetune", "ewc", "prs"]
    header = next(line for line in md.splitlines() if line.startswith("| strategy"))
    assert "overall mAP" in header and header.rstrip().endswith("| n |")  # n differs: ewc has 1
    multitask = next(line for line in md.splitlines() if line.startswith("| multitask"))
    assert "**54.0 ± 3.6**" in multitask and multitask.endswith("| 3 |")
    ewc = next(line for line in md.splitlines() if line.startswith("| ewc"))
    assert "| 21.0 |" in ewc and "±" not in ewc and ewc.endswith("| 1 |")
    assert md.count("**") == 2 * 12  # exactly one best cell per column
    equal = lb.to_markdown(table.drop(index=(BENCH, "ewc")))
    assert "n = 3 seed(s) for every strategy" in equal and "| n |" not in equal
    assert "| n |" in lb.to_markdown(table.drop(index=(BENCH, "ewc")), n_note=False)


def test_latex_booktabs_textbf_pm(results):
    tex = lb.to_latex(lb.final_table(lb.load_results(results)))
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"\multicolumn{3}{c}{overall}",
                  r"\textbf{54.0 $\pm$ 3.6}", "$n$"):
        assert piece in tex
    assert "±" not in tex


# PROTOCOL.md, "Numbers the papers report": overall C-F1 / O-F1 / mAP after the last task
PROTOCOL_OVERALL = {
    "cocoseq": {"Finetune": (8.5, 18.4, 16.4), "EWC": (38.9, 40.0, 46.6), "CRS": (47.5, 46.6, 50.2),
                "PRS": (53.2, 50.3, 55.3), "PRS*": (56.1, 52.9, 61.2),
                "Ours + PRS": (68.7, 68.8, 73.4), "Multitask": (51.2, 52.1, 53.9)},
    "nuswideseq": {"Finetune": (4.2, 5.1, 7.1), "EWC": (17.1, 11.4, 20.7), "CRS": (16.8, 15.0, 20.1),
                   "PRS": (24.8, 21.7, 25.5), "PRS*": (25.6, 29.3, 33.4),
                   "Ours + PRS": (40.1, 40.9, 44.9)},
}
PAPER_ROWS = ["Multitask", "Finetune", "EWC", "CRS", "GSS", "ExStream", "PRS", "PRS*", "Ours + PRS"]


def test_paper_numbers_match_protocol_overall():
    for bench, rows in PROTOCOL_OVERALL.items():
        assert list(lb.PAPER_RESULTS[bench]) == PAPER_ROWS
        assert all(len(v) == 12 for v in lb.PAPER_RESULTS[bench].values())
        for strategy, overall in rows.items():
            assert lb.PAPER_RESULTS[bench][strategy][9:] == overall, (bench, strategy)


def test_paper_numbers_match_the_shared_files(shared_dir):
    protocol = (shared_dir / "PROTOCOL.md").read_text()
    for name, bench in (("COCOseq", "cocoseq"), ("NUS-WIDEseq", "nuswideseq")):
        line = re.search(rf"^{name}: (.*?)(?=^\S+seq:|^Per-group)", protocol, re.M | re.S).group(1)
        for strategy, numbers in re.findall(r"(Finetune|EWC|CRS|PRS \+ SSCA|PRS|Multitask) "
                                            r"(\d+\.\d / \d+\.\d / \d+\.\d)", line):
            row = "Ours + PRS" if strategy == "PRS + SSCA" else strategy
            assert lb.PAPER_RESULTS[bench][row][9:] == tuple(map(float, numbers.split(" / ")))
        rerun = re.search(r"re-run\D*(\d+\.\d) / (\d+\.\d) / (\d+\.\d)", line).groups()
        assert lb.PAPER_RESULTS[bench]["PRS*"][9:] == tuple(map(float, rerun))
    paper = (shared_dir / "reference" / "dlfl-paper.md").read_text()
    for table, bench in (("TABLE 7", "cocoseq"), ("TABLE 8", "nuswideseq")):
        rows = [line.split("\t") for line in paper[paper.index(table):].splitlines()
                if line.count("\t") == 12 and "C-F1" not in line and "majority" not in line][:9]
        assert [re.sub(r"\s*\[\d+\]", "", r[0]) for r in rows] == PAPER_ROWS
        for r in rows:
            numbers = tuple(float(re.sub(r"</?b>", "", x)) for x in r[1:])
            assert lb.PAPER_RESULTS[bench][re.sub(r"\s*\[\d+\]", "", r[0])] == numbers


@pytest.mark.parametrize("name", ["cocoseq", "NUS-WIDEseq", "nuswideseq"])
def test_compare_rows_for_the_paper_benchmarks(name):
    rows = lb.compare_rows(name)
    assert len(rows) == 9 and set(rows.index.get_level_values("benchmark")) == {name}
    assert rows.index.get_level_values("strategy")[-2] == "paper: PRS*"
    assert rows[("all", "mAP", "n")].eq(5).all() and rows[("all", "mAP", "std")].isna().all()


@pytest.mark.parametrize("name", [BENCH, "voc", "cocoseq2"])
def test_compare_rows_empty_for_other_benchmarks(name):
    assert lb.compare_rows(name).empty


CORRUPTIONS = {
    "truncated": (lambda t: t[: len(t) // 2], "does not end with a newline"),
    "cut line": (lambda t: t + f"{BENCH},prs,0,3\n", "line 227 has 4 field(s), expected 8"),
    "no value column": (lambda t: "\n".join(l.rsplit(",", 1)[0] for l in t.splitlines()) + "\n",
                        "missing column(s) value"),
    "empty": (lambda t: "", "empty"),
    "header only": (lambda t: t.splitlines()[0] + "\n", "no rows"),
    "text in value": (lambda t: t.replace(",41.0\n", ",n/a%\n", 1), "'value' has non-numeric"),
    "quote": (lambda t: t + '"unterminated\n', "line 227 has 1 field(s)"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupted_metrics_csv_raises_naming_the_file(results, kind):
    corrupt, message = CORRUPTIONS[kind]
    target = results / BENCH / "prs" / f"seed0-{STAMP}" / "metrics.csv"
    target.write_text(corrupt(target.read_text()))
    before = snapshot(results)
    with pytest.raises(ValueError) as err:
        lb.load_results(results)
    text = str(err.value)
    assert str(target) in text and message in text and "\n" not in text
    assert snapshot(results) == before  # nothing modified, nothing written


def test_binary_metrics_csv_raises(results):
    target = results / BENCH / "prs" / f"seed0-{STAMP}" / "metrics.csv"
    target.write_bytes(b"\x89PNG\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        lb.load_results(results)


def test_empty_or_missing_root(tmp_path):
    (tmp_path / "results" / ".partial-seed0-x").mkdir(parents=True)
    (tmp_path / "results" / ".partial-seed0-x" / "metrics.csv").write_text("junk")
    with pytest.raises(ValueError, match=r"No finished runs found under .*python -m cml_bench run"):
        lb.load_results(tmp_path / "results")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lb.load_results(tmp_path / "nowhere")


def test_plots_are_nonempty_pngs(results, tmp_path):
    df = lb.load_results(results)
    order = lb.strategy_order(df["strategy"])
    for draw, table in ((plots.plot_stream, lb.stream_curve(df)), (plots.plot_matrix, lb.accuracy_matrix(df)),
                        (plots.plot_groups, lb.group_results(df))):
        path = tmp_path / "figs" / f"{draw.__name__}.png"
        draw(table, path, order)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        with pytest.raises(ValueError, match="Nothing to plot"):
            draw(table.iloc[:0], path, order)


def test_stream_and_anytime_figures_have_a_panel_per_head_and_a_colour_per_base_strategy():
    """24 strategies in one panel need 24 colours that no palette keeps apart: the figures put each
    head in its own panel and give prs, prs+cos and prs+ssca the colour of prs."""
    names = ["multitask", "prs", "prs+cos", "prs+ssca [1a2b3c]", "finetune+ssca"]
    d, bases, heads = plots._split_heads(pd.DataFrame({"strategy": names}), names)
    assert list(d["base"]) == ["multitask", "prs", "prs", "prs [1a2b3c]", "finetune"]
    assert list(d["head"]) == ["pooled", "pooled", "+cos", "+ssca", "+ssca"]
    assert bases == ["multitask", "prs", "prs [1a2b3c]", "finetune"] and heads == ["pooled", "+cos", "+ssca"]


def test_tables_the_plots_draw(results):
    df = lb.load_results(results)
    curve = lb.stream_curve(df)
    assert set(curve["eval_on"]) == {"seen"} and set(curve["group"]) == {"all"} and set(curve["metric"]) == {"mAP"}
    assert curve[(curve.strategy == "prs") & (curve.seed == 1)]["value"].max() < 100  # the newest run only
    final = lb.group_results(df)
    assert list(dict.fromkeys(final["group"])) == ["majority", "moderate", "minority", "overall"]
    assert set(final["trained_through_task"]) == {TASKS - 1} and set(final["metric"]) == {"mAP"}


def test_plots_and_tables_import_one_way():
    """plots draws what the leaderboard computes (no cycle); results and the leaderboard need no
    evaluator (no torch model code to read a results folder)."""
    code = ("import sys, cml_bench.plots; assert 'cml_bench.leaderboard' not in sys.modules; "
            "import cml_bench.leaderboard, cml_bench.results; assert 'cml_bench.evaluator' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_family_comes_from_the_manifest(results, tmp_path):
    """The kind a run's manifest records picks its table's columns; runs without one (older runs)
    are guessed from their metric names."""
    df_before = lb.write_leaderboard(results, tmp_path / "guessed")
    assert "| strategy | majority CF1 |" in df_before  # continual by the metric names
    for manifest in results.rglob("manifest.json"):
        if "/prs/" in manifest.as_posix():
            manifest.write_text('{"benchmark_kind": "generic"}\n')  # one run recording it is enough
            break
    text = lb.write_leaderboard(results, tmp_path / "recorded")
    assert "| strategy | overall mAP | overall CF1 | overall OF1 | overall CF1@3 | overall OF1@3 |" in text
    assert "| strategy | majority CF1 |" not in text and not (tmp_path / "recorded" / "plot_stream.png").exists()
    for manifest in results.rglob("manifest.json"):
        if "/finetune/" in manifest.as_posix():
            manifest.write_text('{"benchmark_kind": "attribute"}\n')  # runs that disagree: guessed
    assert "| strategy | majority CF1 |" in lb.write_leaderboard(results, tmp_path / "disagree")


def test_write_leaderboard_writes_everything(results, tmp_path):
    make_run(results, "prs", 0, bench="cocoseq")
    make_run(results, "finetune", 0, bench="cocoseq")
    out = tmp_path / "board"
    md = lb.write_leaderboard(results, out, compare=True)
    names = {"leaderboard.csv", "leaderboard.md", "leaderboard.tex", "accuracy_matrix.csv",
             "all_metrics.csv", "forgetting.csv", "plot_stream.png", "plot_matrix.png", "plot_groups.png",
             "significance.csv"}
    assert {p.name for p in out.iterdir()} == names and all((out / n).stat().st_size for n in names)
    assert (out / "leaderboard.md").read_text() == md
    assert "### cocoseq" in md and f"### {BENCH}" in md and "Ignored 2 older run(s)" in md
    ours = next(line for line in md.splitlines() if line.startswith("| prs |") and "43.0" not in line)
    paper = next(line for line in md.splitlines() if line.startswith("| paper: Ours + PRS"))
    assert "**41.0**" in ours and "73.4" in paper and "**" not in paper  # references never bold
    assert md.count("| paper:") == 9  # only for cocoseq, not for synth-cocoseq
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board.columns) == ["benchmark", "strategy", "row", "seed", "run", "config", "reference"] + [
        f"{g}_{m}" for g in ("majority", "moderate", "minority", "all") for m in ("CF1", "OF1", "mAP")] + [
        f"{g}_{m}_{k}" for g in ("majority", "moderate", "minority", "all") for m in ("CF1", "OF1", "mAP")
        for k in ("mark", "p")]
    assert set(board["row"]) == {"seed", "mean", "std", "n"}
    assert board.loc[board.reference, "strategy"].str.startswith("paper: ").all()
    mean = board[(board.row == "mean") & (board.strategy == "prs") & (board.benchmark == BENCH)]
    assert mean["all_mAP"].item() == pytest.approx(44.0)
    assert len(board[(board.row == "seed") & (board.benchmark == BENCH)]) == 10
    tex = (out / "leaderboard.tex").read_text()
    assert "paper: PRS*" in tex and r"\textbf{" in tex and tex.count(r"\begin{tabular}") == 2
    # default output folder: the results root itself; without compare no paper rows
    assert "paper:" not in lb.write_leaderboard(results)
    assert (results / "leaderboard.md").is_file()


def test_anytime_table_with_paired_seeds(results, tmp_path):
    """Runs with A_auc rows and several seeds: the anytime table is tested by seed like the others
    (its bootstrap interval "not available": A_auc is not recomputable from scores.npz)."""
    for path in results.rglob("metrics.csv"):
        if path.parent.name.startswith(".") or path.parts[-3] not in ("prs", "finetune"):
            continue
        frame = pd.read_csv(path)
        last = frame[(frame.trained_through_task == TASKS - 1) & (frame.eval_on == "seen") & (frame.group == "all")
                     & (frame.metric == "mAP")]
        pd.concat([frame, last.assign(metric="A_auc_mAP", value=last.value + 1)]).to_csv(path, index=False)
    md = lb.write_leaderboard(results, tmp_path / "board")
    anytime = md[md.index("## Anytime evaluation"):]
    assert "| prs | **45.0 ± 3.6** |" in anytime and "| finetune |" in anytime
    assert "paired t-test (3) | " in anytime and anytime.rstrip().count("not available") >= 1


def test_forgetting_table_and_long_export(results, tmp_path):
    table = lb.forgetting_table(lb.load_results(results))
    prs = table[(table.strategy == "prs") & (table.task == "mean") & (table.metric == "mAP")]
    assert prs["mean"].item() == pytest.approx(7.5) and prs["n"].item() == 3  # newest run per seed
    assert "multitask" not in set(table.strategy)
    out = tmp_path / "board"
    lb.write_leaderboard(results, out)
    everything = pd.read_csv(out / "all_metrics.csv")
    assert list(everything.columns) == CSV_COLUMNS + ["run", "config"]
    assert len(everything) == len(lb.load_results(results))


ROOT = Path(__file__).resolve().parents[1]
REFERENCES = sorted(p.parent.name for p in (ROOT / "results" / "reference").glob("*/leaderboard.md"))


@pytest.mark.parametrize("name", REFERENCES)
def test_committed_reference_matches_what_the_command_regenerates(name, tmp_path, monkeypatch):
    """Each committed results/reference/<name> is exactly what `leaderboard` writes from its runs."""
    monkeypatch.chdir(ROOT)  # the README's command runs from the root
    reference = Path("results/reference") / name
    markdown = lb.write_leaderboard(reference / "runs", out_dir=tmp_path)
    assert markdown == (reference / "leaderboard.md").read_text()
    for file in ("leaderboard.csv", "leaderboard.tex", "accuracy_matrix.csv", "forgetting.csv"):
        assert (tmp_path / file).read_text() == (reference / file).read_text(), file


def test_reference_campaign_is_complete_or_says_how_far_it_is():
    """The README states how many of the embedded default's 102 reference runs are done while the
    campaign is unfinished; once it is, every paper row has 5 seeds."""
    reference = ROOT / "results" / "reference" / "synth-cocoseq"
    board = pd.read_csv(reference / "leaderboard.csv")
    done = int((board.row == "seed").sum())
    status = re.search(r"Campaign status: (\d+) of (\d+) runs done", (ROOT / "README.md").read_text())
    if status is not None:
        assert int(status.group(1)) == done < int(status.group(2))
    else:
        counts = board[board.row == "n"].set_index("strategy")
        paper_rows = [f"{s}{h}" for s in ("multitask", "finetune", "ewc", "reservoir", "prs")
                      for h in ("", "+cos", "+ssca")]
        assert (counts.loc[paper_rows, "all_mAP"] == 5).all()  # every paper row over 5 seeds
    for file in ("plot_stream.png", "plot_matrix.png", "plot_groups.png"):
        assert (reference / file).stat().st_size > 10_000


def test_readme_reference_table_is_the_committed_leaderboard():
    """The README's reference table is the committed leaderboard's, not an older copy of it."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- reference-table -->\n(.*?)\n<!-- /reference-table -->", readme, flags=re.S)
    assert block is not None, "the README lost its reference-table markers"
    board = (ROOT / "results" / "reference" / "synth-cocoseq" / "leaderboard.md").read_text()
    table = board[board.index("| strategy |"):]
    table = table[:table.index("\n\n")]
    assert block.group(1).startswith(table + "\n\n")


def test_readme_variant_table_is_the_committed_leaderboards():
    """The README's variant table (default, busier, smaller) gives the committed leaderboards' means
    over seeds and their seed counts, so a regenerated variant cannot leave it stale."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- variant-status -->\n(.*?)<!-- /variant-status -->", readme, flags=re.S)
    assert block is not None, "the README lost its variant-status markers"
    cells = [line.split(" | ") for line in block.group(1).splitlines()
             if line.startswith(("| default", "| busier", "| smaller"))]
    assert [c[0] for c in cells] == ["| default", "| busier (`clutter` 5, `noise` 20)",
                                     "| smaller (`scale` 0.2, sprites 8-11 px)"]
    heads = ("", "+cos", "+ssca")
    done = 0
    for cell, name in zip(cells, ("synth-cocoseq", "synth-cocoseq-busier", "synth-cocoseq-smaller")):
        seeds = pd.read_csv(ROOT / "results" / "reference" / name / "leaderboard.csv")
        seeds = seeds[seeds.row == "seed"]
        mean, n = seeds.groupby("strategy")[["all_mAP", "minority_mAP"]].mean(), seeds.groupby("strategy").size()
        three = lambda base, col="all_mAP": " / ".join(f"{mean.loc[base + h, col]:.1f}" for h in heads)
        for i, base in enumerate(("reservoir", "prs", "multitask"), start=1):
            assert cell[i] == f"{three(base)} ({'/'.join(str(n[base + h]) for h in heads)})", (name, base)
            done += int(sum(n[base + h] for h in heads)) if name != "synth-cocoseq" else 0
        assert cell[4] == f"{three('prs', 'minority_mAP')} against {three('reservoir', 'minority_mAP')} |", name
    assert f"**Variant status: {done} of 54 runs done**" in block.group(1)


def test_memory_figure_draws_identical_memories_once():
    """Heads of a label-only buffer keep identical memories: one curve, all their names on it."""
    rows = [{"benchmark": "b", "strategy": s, "seed": 0, "point": "task", "task": 0, "iteration": 5,
             "samples": n, "group": g, "memory": m + (5.0 if s == "ocdm" else 0.0), "stream": 40.0, "target": 30.0}
            for s in ("prs", "prs+cos", "ocdm") for n, m in ((50, 20.0), (100, 30.0))
            for g in ("majority", "minority")]
    shares, labels = plots._merge_identical_memories(pd.DataFrame(rows), ["prs", "prs+cos", "ocdm"])
    assert labels == ["prs, prs+cos", "ocdm"]
    assert sorted(set(shares["strategy"])) == ["ocdm", "prs, prs+cos"] and len(shares) == 8
