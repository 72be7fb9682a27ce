"""Significance in leaderboards: the paired seed test, the marks, the bootstrap over test images,
and the scores.npz they read, on constructed cases with known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cml_bench import leaderboard as lb
from cml_bench import significance as sg
from cml_bench.metrics import family_metrics
from cml_bench.scores import TestScores, expected_size, load_scores, save_scores

COLUMNS = [(g, m) for g in ("majority", "moderate", "minority", "all") for m in ("CF1", "OF1", "mAP")]


def test_identical_rows_are_not_significant():
    for n in (3, 5, 6, 8):  # t-test and Wilcoxon
        x = np.linspace(40, 60, n)
        r = sg.paired_test(x, x.copy())
        assert r.p_value == 1.0 and r.mean_diff == 0.0 and r.n == n
        assert r.test == ("wilcoxon" if n >= 6 else "t-test")


def test_a_constant_shift_is_significant():
    x = np.array([61.0, 55.0, 70.0, 58.0, 66.0])
    assert sg.paired_test(x - 3.0, x).p_value == 0.0  # no spread in the differences: p = 0
    noisy = x - 3.0 + np.array([0.2, -0.1, 0.3, -0.2, 0.0])
    assert sg.paired_test(noisy, x).p_value < 1e-4
    # Wilcoxon, 6 pairs all of one sign: the exact two-sided p is 2 / 2^6
    six = np.arange(6.0)
    assert sg.paired_test(six + [1, 2, 3, 4, 5, 6], six).p_value == pytest.approx(2 / 64)


def test_t_test_by_hand_and_untested():
    # d = 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3) = 3.464 with 2 df: two-sided p = 0.07418
    r = sg.paired_test([11, 12, 13], [10, 10, 10])
    assert r.test == "t-test" and r.p_value == pytest.approx(0.07418, abs=1e-4) and r.mean_diff == 2.0
    assert sg.paired_test([1.0], [0.0]).test == "none"
    assert np.isnan(sg.paired_test([1.0, np.nan], [0.0, 1.0]).p_value)  # one pair left


def _per_seed(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [("b", s, seed, f"b/{s}/seed{seed}") for s, v in values.items() for seed in range(len(v))]
    index = pd.MultiIndex.from_tuples(rows, names=["benchmark", "strategy", "seed", "run"])
    data = [v for vals in values.values() for v in vals]
    return pd.DataFrame({("all", "mAP"): data}, index=index)


def test_marks_against_the_best_and_a_chosen_row():
    base = [60.0, 52.0, 71.0, 66.0, 58.0]
    per_seed = _per_seed({"best": base, "twin": [x + d for x, d in zip(base, (-1.0, 0.8, -0.9, 0.6, 0.2))],
                          "worse": [x - 5 + 0.1 * i for i, x in enumerate(base)], "one": [10.0]})
    marks = sg.compare_to_reference(per_seed).set_index("strategy")
    assert marks.loc["best", "mark"] == "best" and (marks["against"] == "best").all()
    assert marks.loc["twin", "mark"] == "same" and marks.loc["worse", "mark"] == "worse"
    assert marks.loc["one", "mark"] == "untested" and marks.loc["worse", "test"] == "t-test"
    chosen = sg.compare_to_reference(per_seed, against="worse").set_index("strategy")
    assert chosen.loc["worse", "mark"] == "best" and chosen.loc["best", "mark"] == "better"
    assert chosen["chosen"].all()
    with pytest.raises(ValueError, match="alpha"):
        sg.compare_to_reference(per_seed, alpha=1.5)


def test_forgetting_is_better_when_lower():
    """The reference of a forgetting column is its lowest mean, and more forgetting is worse."""
    low, high = [1.0, 2.0, 1.5, 1.2], [9.0, 11.0, 10.2, 9.7]
    index = pd.MultiIndex.from_tuples([("b", s, seed, f"b/{s}/seed{seed}") for s in ("low", "high") for seed in range(4)],
                                      names=["benchmark", "strategy", "seed", "run"])
    per_seed = pd.DataFrame({("all", "forgetting_mAP"): low + high, ("all", "mAP"): low + high}, index=index)
    marks = sg.compare_to_reference(per_seed).set_index(["metric", "strategy"])
    assert marks.loc[("forgetting_mAP", "low"), "mark"] == "best"
    assert marks.loc[("forgetting_mAP", "high"), "mark"] == "worse"
    assert marks.loc[("mAP", "high"), "mark"] == "best" and marks.loc[("mAP", "low"), "mark"] == "worse"


def _scores(rng: np.random.Generator, n: int = 300, m: int = 12, boost: float = 0.0) -> TestScores:
    targets = (rng.random((n, m)) < 0.2).astype(np.uint8)
    targets[0] = 1  # every class has a positive
    scores = np.clip(rng.random((n, m)) * 0.7 + targets * (0.15 + boost), 0, 1).astype(np.float32)
    groups = {"all": list(range(m)), "majority": [0, 1, 2, 3], "moderate": [4, 5, 6, 7], "minority": [8, 9, 10, 11]}
    return TestScores(scores, targets, np.repeat([0, 1], n // 2), np.tile(np.arange(n // 2), 2), groups, 0.5,
                      "continual")


def test_bootstrap_identical_runs_give_zero_and_shifted_runs_exclude_zero():
    rng = np.random.default_rng(0)
    a = _scores(rng)
    idx = [None, *sg.replicate_indices(len(a.task), 100, seed=1)]
    va = sg.replicate_values(a, COLUMNS, idx)
    full = family_metrics("continual", a.scores, a.targets, {}, 0.5, classes=a.groups["all"])["all"]
    assert va[0, COLUMNS.index(("all", "mAP"))] == pytest.approx(full["mAP"])  # row 0: the evaluator's value
    same = sg.bootstrap_differences([va], [va.copy()])
    assert all(ci.estimate == 0 and ci.low == 0 and ci.high == 0 for ci in same)
    # the same images, the positives' scores raised by 0.2: every resample's mAP is higher
    better = TestScores(np.clip(a.scores + 0.2 * a.targets, 0, 1), a.targets, a.task, a.index, a.groups, 0.5,
                        "continual")
    vb = sg.replicate_values(better, COLUMNS, idx)
    ci = sg.bootstrap_differences([va], [vb])[COLUMNS.index(("all", "mAP"))]
    assert ci.high < 0 and ci.low <= ci.estimate <= ci.high
    assert ci.estimate == pytest.approx(va[0, -1] - vb[0, -1])


def test_scores_npz_round_trip_size_and_no_pickles(tmp_path):
    s = _scores(np.random.default_rng(2), n=200, m=70)
    path = tmp_path / "scores.npz"
    save_scores(path, s)
    back = load_scores(path)
    assert back.same_images(s) and back.groups == s.groups and back.kind == "continual"
    assert np.abs(back.scores - s.scores).max() < 1e-3  # float16
    assert 0 < path.stat().st_size - expected_size(200, 70) < 4096  # arrays + headers
    assert expected_size(6366, 70) == 6366 * (140 + 9 + 6)  # COCOseq's test set
    planted = tmp_path / "planted.npz"
    np.savez(planted, scores=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="not a readable scores.npz"):
        load_scores(planted)


def test_leaderboard_with_scores_shows_intervals(tmp_path):
    """Runs with scores.npz get bootstrap intervals; a run without one degrades to 'not available'."""
    from test_leaderboard import make_run

    rng = np.random.default_rng(3)
    root = tmp_path / "results"
    test = _scores(rng)  # one test set: the targets are the same for every run
    for seed in range(3):
        noise = rng.random(test.scores.shape) * 0.3
        for strategy, boost in (("prs", 0.0), ("multitask", 0.25)):
            folder = make_run(root, strategy, seed)
            s = TestScores(np.clip(test.scores * 0.7 + noise + boost * test.targets, 0, 1), test.targets,
                           test.task, test.index, test.groups, 0.5, "continual")
            save_scores(folder / "scores.npz", s)
    make_run(root, "finetune", 0)
    md = lb.write_leaderboard(root, tmp_path / "board", bootstrap=50)
    sig = pd.read_csv(tmp_path / "board" / "significance.csv")
    prs = sig[(sig.strategy == "prs") & (sig.group == "all") & (sig.metric == "mAP")].iloc[0]
    assert prs.against == "multitask" and prs.ci_seeds == 3 and prs.ci_high < 0
    assert "#### synth-cocoseq: overall mAP against multitask" in md
    assert "bootstrap over test images not available for 1 of 7 run(s)" in md
    finetune = next(line for line in md.splitlines() if line.startswith("| finetune | -"))
    assert finetune.endswith("| not available |")


def test_bootstrap_in_worker_processes_equals_this_process_bit_for_bit():
    """The leaderboard spreads the bootstrap over processes: only where each run is computed may
    change, never its arrays (or their order)."""
    rng = np.random.default_rng(3)
    runs = [_scores(rng, boost=0.05 * i) for i in range(5)]
    n_boot = sg.PARALLEL_MIN_REPLICATES // len(runs)  # just enough to take the worker path
    assert len(runs) * n_boot >= sg.PARALLEL_MIN_REPLICATES
    here = sg.replicate_runs(runs, COLUMNS, n_boot, seed=2, workers=1)
    spread = sg.replicate_runs(runs, COLUMNS, n_boot, seed=2, workers=2)
    idx = [None, *sg.replicate_indices(len(runs[0].task), n_boot, seed=2)]
    assert len(spread) == len(runs)
    for i, s in enumerate(runs):
        assert np.array_equal(spread[i], here[i], equal_nan=True)
        assert np.array_equal(here[i], sg.replicate_values(s, COLUMNS, idx), equal_nan=True)
