"""Tests of cml_bench.metrics against scikit-learn and hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score

from cml_bench.metrics import (
    CLASSES_DROPPED,
    FAMILY_METRICS,
    attribute_metrics,
    average_precision,
    family_metrics,
    forgetting,
    group_columns,
    group_metrics,
    multilabel_metrics,
    topk_metrics,
)


def _random(seed: int, n: int = 200, m: int = 12, empty: tuple[int, ...] = (), ties: bool = False):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, m)) < rng.uniform(0.02, 0.5, size=m)).astype(int)
    targets[:, list(empty)] = 0
    if ties:  # integer-valued scores in {0..4}, many ties; scaled into [0, 1]
        scores = rng.integers(0, 5, size=(n, m)) / 4.0
    else:
        scores = np.clip(0.35 * targets + rng.random((n, m)) * 0.7, 0.0, 1.0)
    return scores, targets


def _sklearn_ap(scores, targets):
    return np.array(
        [
            100 * average_precision_score(targets[:, j], scores[:, j]) if targets[:, j].any() else np.nan
            for j in range(targets.shape[1])
        ]
    )


# ----------------------------------------------------------------------------- average precision


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(seed, ties):
    scores, targets = _random(seed, empty=(3, 7), ties=ties)
    ap = average_precision(scores, targets)
    assert ap.shape == (targets.shape[1],)
    expected = _sklearn_ap(scores, targets)
    np.testing.assert_allclose(ap, expected, rtol=1e-12, atol=1e-10, equal_nan=True)
    assert np.isnan(ap[[3, 7]]).all()


def test_average_precision_integer_scores_with_ties():
    rng = np.random.default_rng(5)
    scores = rng.integers(-3, 3, size=(60, 6))  # raw ints, not probabilities: allowed for AP
    targets = (rng.random((60, 6)) < 0.3).astype(int)
    np.testing.assert_allclose(average_precision(scores, targets), _sklearn_ap(scores, targets), rtol=1e-12)


def test_average_precision_all_tied_and_single_sample():
    targets = np.array([[1, 0], [0, 0], [1, 1], [0, 0]])
    scores = np.full((4, 2), 0.5)  # one threshold: AP = prevalence
    np.testing.assert_allclose(average_precision(scores, targets), [50.0, 25.0])
    np.testing.assert_allclose(average_precision([[0.3]], [[1]]), [100.0])


def test_average_precision_accepts_bool_and_float_targets_and_tensors():
    scores, targets = _random(3)
    ref = average_precision(scores, targets)
    np.testing.assert_array_equal(average_precision(scores, targets.astype(bool)), ref)
    np.testing.assert_array_equal(average_precision(scores.tolist(), targets.astype(float)), ref)
    torch = pytest.importorskip("torch")
    got = average_precision(torch.tensor(scores, requires_grad=True), torch.tensor(targets))
    np.testing.assert_array_equal(got, ref)


# ----------------------------------------------------------------------------- multilabel metrics


@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_metrics_match_sklearn(seed):
    scores, targets = _random(seed, empty=(4,))
    res = multilabel_metrics(scores, targets)
    assert list(res) == ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", CLASSES_DROPPED]
    assert all(isinstance(v, float) for v in res.values())
    assert res[CLASSES_DROPPED] == 1.0
    kept = [j for j in range(targets.shape[1]) if j != 4]  # the class without a positive is dropped (PRS)
    scores, targets = scores[:, kept], targets[:, kept]
    pred = (scores > 0.5).astype(int)
    cp = 100 * precision_score(targets, pred, average="macro", zero_division=0)
    cr = 100 * recall_score(targets, pred, average="macro", zero_division=0)
    op = 100 * precision_score(targets, pred, average="micro", zero_division=0)
    orec = 100 * recall_score(targets, pred, average="micro", zero_division=0)
    assert res["CP"] == pytest.approx(cp)
    assert res["CR"] == pytest.approx(cr)
    assert res["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert res["OP"] == pytest.approx(op)
    assert res["OR"] == pytest.approx(orec)
    assert res["OF1"] == pytest.approx(2 * op * orec / (op + orec))
    assert res["mAP"] == pytest.approx(np.nanmean(_sklearn_ap(scores, targets)))


def test_threshold_is_strict_as_prs():
    """A model that outputs exactly 0.5 predicts nothing (PRS: ``probs > 0.5``): CR = OR = 0, not 100."""
    targets = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    res = multilabel_metrics(np.full((4, 3), 0.5), targets)
    assert (res["CP"], res["CR"], res["CF1"], res["OP"], res["OR"], res["OF1"]) == (0.0,) * 6
    assert res["mAP"] == pytest.approx(100 * targets.mean(axis=0).mean())  # ranking metrics: all tied
    res = multilabel_metrics([[0.5], [0.51]], [[1], [0]])
    assert res["CP"] == 0.0 and res["CR"] == 0.0 and res["OP"] == 0.0
    res = multilabel_metrics([[0.5], [0.49]], [[1], [0]], threshold=0.49)
    assert res["CP"] == 100.0 and res["CR"] == 100.0 and res["OF1"] == 100.0
    assert attribute_metrics(np.full((4, 3), 0.5), targets)["Recall"] == 0.0  # the same rule for attributes
    assert attribute_metrics(np.full((4, 3), 0.5), targets)["mA"] == pytest.approx(50.0)  # TPR 0, TNR 1


def test_cf1_is_harmonic_mean_of_means_not_mean_of_f1():
    # class 0: P = 1, R = 1/2 (F1 = 2/3); class 1: P = 1/2, R = 1 (F1 = 2/3).
    scores = np.array([[0.9, 0.9], [0.1, 0.9], [0.1, 0.1]])
    targets = np.array([[1, 1], [1, 0], [0, 0]])
    res = multilabel_metrics(scores, targets)
    assert res["CP"] == pytest.approx(75.0) and res["CR"] == pytest.approx(75.0)
    assert res["CF1"] == pytest.approx(75.0)  # the mean of per-class F1 would be 66.67
    # micro: TP = 2, predicted = 3, positives = 3
    assert res["OP"] == pytest.approx(200 / 3) and res["OR"] == pytest.approx(200 / 3)


def test_a_class_without_positives_is_dropped_from_every_metric():
    """PRS keeps only the columns with a positive (``ncats > 0``) for CP, CR, OP, OR, OF1 and mAP."""
    scores = np.array([[0.9, 0.8, 0.7], [0.2, 0.6, 0.1]])
    targets = np.array([[1, 0, 0], [0, 0, 1]])
    # class 0: AP 100, predicted once, TP 1; class 1: no positive, predicted twice; class 2: AP 50, TP 1 of 1
    # prediction, 1 of 1 positive... predicted for image 0 (a negative) only: TP 0
    res = multilabel_metrics(scores, targets)
    assert res["mAP"] == pytest.approx(75.0) and res[CLASSES_DROPPED] == 1.0
    assert res["CP"] == pytest.approx(50.0) and res["CR"] == pytest.approx(50.0)  # classes 0 and 2 only
    assert res["OP"] == pytest.approx(100 * 1 / 2) and res["OR"] == pytest.approx(100 * 1 / 2)  # not 1 / 4
    assert res == pytest.approx(multilabel_metrics(scores[:, [0, 2]], targets[:, [0, 2]]) | {CLASSES_DROPPED: 1.0})
    # ignore_empty=False keeps it: AP 0 in mAP, precision 0 (predicted, no TP), recall 0/0 = 0
    kept = multilabel_metrics(scores, targets, ignore_empty=False)
    assert kept["mAP"] == pytest.approx(50.0) and kept[CLASSES_DROPPED] == 0.0
    assert kept["CP"] == pytest.approx(100 / 3) and kept["OP"] == pytest.approx(25.0)
    # nothing left: every metric NaN (PRS reports NaN for an empty group), the count recorded
    only_empty = multilabel_metrics(scores, targets, classes=[1])
    assert all(np.isnan(v) for k, v in only_empty.items() if k != CLASSES_DROPPED)
    assert only_empty[CLASSES_DROPPED] == 1.0
    kept = multilabel_metrics(scores, targets, classes=[1], ignore_empty=False)
    assert np.isnan(kept["mAP"]) and kept["CR"] == 0.0 and kept["OR"] == 0.0


def test_class_subset_equals_metrics_on_sliced_columns():
    scores, targets = _random(7, m=10, empty=(2,))
    subset = [8, 2, 5, 0]
    got = multilabel_metrics(scores, targets, classes=subset)
    want = multilabel_metrics(scores[:, subset], targets[:, subset])
    assert got == pytest.approx(want)
    kept = [8, 5, 0]  # class 2 has no positive: dropped
    pred = (scores[:, kept] > 0.5).astype(int)
    assert got["OP"] == pytest.approx(100 * precision_score(targets[:, kept], pred, average="micro"))
    assert got["CR"] == pytest.approx(
        100 * recall_score(targets[:, kept], pred, average="macro", zero_division=0)
    )
    assert got[CLASSES_DROPPED] == 1.0
    assert multilabel_metrics(scores, targets, classes=np.array(subset)) == got


def test_group_metrics():
    scores, targets = _random(8, m=6)
    groups = {"majority": [0, 1], "moderate": [2, 3], "minority": (4, 5)}
    res = group_metrics(scores, targets, groups)
    assert list(res) == ["all", "majority", "moderate", "minority"]
    assert res["all"] == multilabel_metrics(scores, targets)
    assert res["minority"] == multilabel_metrics(scores, targets, classes=[4, 5])
    with pytest.raises(ValueError, match="other than 'all'"):
        group_metrics(scores, targets, {"all": [0]})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_metrics_equals_the_per_group_calls_and_sklearn(seed):
    """The evaluator's suite (each column's statistics computed once, shared by the groups) equals one
    call per group, and sklearn on the kept columns; with ties, scores exactly at 0.5, an empty class,
    a class subset (one task's classes), ignored pairs and the top-3 metrics."""
    scores, targets = _random(seed, n=300, m=12, empty=(5,), ties=seed == 2)
    scores[::7, 2] = 0.5
    ignore = np.random.default_rng(seed).random(scores.shape) < (0.1 if seed else 0.0)
    groups = {"majority": [0, 1, 2, 3], "moderate": [4, 5, 6, 7], "minority": [11, 10, 9, 8], "none": [3]}
    classes = [0, 2, 4, 5, 6, 8, 9, 10, 11]
    res = group_metrics(scores, targets, groups, classes=classes, ignore=ignore, top_k=3)
    assert list(res) == ["all", "majority", "moderate", "minority"]  # "none" has no evaluated class
    for name, cols in group_columns(groups, 12, classes).items():
        want = multilabel_metrics(scores, targets, cols, ignore=ignore) | topk_metrics(
            scores, targets, 3, cols, ignore=ignore)
        assert res[name] == pytest.approx(want, rel=1e-12, abs=1e-12)
        no_positive = ~(targets.astype(bool) & ~ignore)[:, cols].any(axis=0)
        assert res[name][CLASSES_DROPPED] == no_positive.sum() >= (5 in cols)
    if seed == 0:  # nothing ignored: sklearn directly on the kept columns
        kept = [c for c in classes if c != 5]
        pred = (scores[:, kept] > 0.5).astype(int)
        y = targets[:, kept]
        assert res["all"]["CP"] == pytest.approx(100 * precision_score(y, pred, average="macro", zero_division=0))
        assert res["all"]["OR"] == pytest.approx(100 * recall_score(y, pred, average="micro", zero_division=0))
        assert res["all"]["mAP"] == pytest.approx(np.mean(_sklearn_ap(scores[:, kept], y)))


def test_family_metrics_is_the_suite_of_each_kind():
    """What the evaluator writes and the bootstrap recomputes: one suite per ``BenchmarkMeta.kind``."""
    scores, targets = _random(3, n=80, m=6)
    groups, classes = {"common": [0, 1], "rare": [5, 4]}, [0, 1, 2, 4, 5]
    plain = group_metrics(scores, targets, groups, classes=classes)
    assert family_metrics("continual", scores, targets, groups, 0.5, classes) == plain
    assert family_metrics("mlcil", scores, targets, groups, 0.5, classes) == plain
    generic = family_metrics("generic", scores, targets, groups, 0.5, classes)
    assert generic == group_metrics(scores, targets, groups, classes=classes, top_k=3)
    assert set(generic["rare"]) == {*FAMILY_METRICS["generic"], CLASSES_DROPPED}
    two = family_metrics("generic", scores[:, :2], targets[:, :2], {}, 0.5)  # fewer columns than the top 3
    assert set(two["all"]) == {*FAMILY_METRICS["continual"], CLASSES_DROPPED}
    attribute = family_metrics("attribute", scores, targets, groups, 0.3, classes)
    assert list(attribute) == ["all", "common", "rare"]
    assert attribute["rare"] == attribute_metrics(scores[:, [5, 4]], targets[:, [5, 4]], threshold=0.3)
    assert attribute["all"] == attribute_metrics(scores[:, classes], targets[:, classes], threshold=0.3)
    with pytest.raises(ValueError, match="metric family .* 'weird' \\(benchmark 'b'\\)"):
        family_metrics("weird", scores, targets, groups, 0.5, benchmark="b")
    with pytest.raises(ValueError, match="Benchmark 'pa' gives an evaluation ignore mask"):
        family_metrics("attribute", scores, targets, groups, 0.5, ignore=np.zeros(scores.shape, bool), benchmark="pa")


def test_group_columns():
    assert {k: v.tolist() for k, v in group_columns({"a": [3, 0], "b": [], "c": [1]}, 4).items()} == {
        "all": [0, 1, 2, 3], "a": [3, 0], "c": [1]}
    assert list(group_columns({"a": [3, 0], "c": [1]}, 4, classes=[2, 3])) == ["all", "a"]
    with pytest.raises(ValueError, match="argument `classes`"):
        group_columns({"a": [7]}, 4)


def test_a_group_whose_classes_have_no_positive_is_nan_with_its_count():
    scores, targets = _random(4, m=6, empty=(4, 5))
    res = group_metrics(scores, targets, {"minority": [4, 5], "majority": [0, 1]})
    assert all(np.isnan(v) for k, v in res["minority"].items() if k != CLASSES_DROPPED)
    assert res["minority"][CLASSES_DROPPED] == 2.0 and res["all"][CLASSES_DROPPED] == 2.0
    assert not np.isnan(res["majority"]["CF1"]) and res["majority"][CLASSES_DROPPED] == 0.0


# ----------------------------------------------------------------------------- top-k


def test_topk_hand_case():
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.1, 0.0],  # top-3: 0, 1, 2
            [0.1, 0.2, 0.3, 0.4, 0.5],  # top-3: 2, 3, 4
        ]
    )
    targets = np.array([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]])
    res = topk_metrics(scores, targets, ignore_empty=False)
    assert list(res) == ["CP@3", "CR@3", "CF1@3", "OP@3", "OR@3", "OF1@3", CLASSES_DROPPED]
    # per class (TP / predicted / positives): 0: 1/1/1, 1: 0/1/0, 2: 1/2/1, 3: 0/1/1, 4: 0/1/0
    cp = 100 * (1 + 0 + 0.5 + 0 + 0) / 5
    cr = 100 * (1 + 0 + 1 + 0 + 0) / 5
    assert res["CP@3"] == pytest.approx(cp) and res["CR@3"] == pytest.approx(cr)
    assert res["CF1@3"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert res["OP@3"] == pytest.approx(100 * 2 / 6) and res["OR@3"] == pytest.approx(100 * 2 / 3)
    assert res["OF1@3"] == pytest.approx(2 * (2 / 6) * (2 / 3) / (2 / 6 + 2 / 3) * 100)
    # by default classes 1 and 4 (no positive) are dropped, as from the thresholded metrics
    res = topk_metrics(scores, targets)
    assert res["CP@3"] == pytest.approx(100 * 1.5 / 3) and res["CR@3"] == pytest.approx(100 * 2 / 3)
    assert res["OP@3"] == pytest.approx(100 * 2 / 4) and res[CLASSES_DROPPED] == 2.0
    # subset: predictions still chosen among all columns
    sub = topk_metrics(scores, targets, classes=[3])
    assert sub["CP@3"] == 0.0 and sub["CR@3"] == 0.0
    assert "CP@2" in topk_metrics(scores, targets, k=2)


def test_topk_ties_prefer_lower_index_and_k_validation():
    res = topk_metrics([[0.5, 0.5, 0.5]], [[1, 0, 0]], k=1)
    assert res["OP@1"] == 100.0
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="argument `k`"):
            topk_metrics([[0.5, 0.5, 0.5]], [[1, 0, 0]], k=bad)


# ----------------------------------------------------------------------------- attributes


def test_attribute_metrics_hand_case():
    scores = np.array([[0.9, 0.6, 0.2, 0.1], [0.1, 0.2, 0.8, 0.3], [0.7, 0.1, 0.1, 0.2]])
    targets = np.array([[1, 0, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]])
    # pred = [[1,1,0,0],[0,0,1,0],[1,0,0,0]]
    res = attribute_metrics(scores, targets)
    assert list(res) == ["mA", "Accu", "Prec", "Recall", "F1"]
    # attr 0: TPR 2/2, TNR 1/1 -> 1; attr 1: no positive -> TNR 2/3; attr 2: 1, 1 -> 1;
    # attr 3: TPR 0/1, TNR 2/2 -> 1/2
    assert res["mA"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0.5) / 4)
    # per image (inter / union / pred / true): (1/2/2/1), (1/2/1/2), (1/1/1/1)
    assert res["Accu"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)
    prec, rec = (0.5 + 1 + 1) / 3, (1 + 0.5 + 1) / 3
    assert res["Prec"] == pytest.approx(100 * prec) and res["Recall"] == pytest.approx(100 * rec)
    assert res["F1"] == pytest.approx(100 * 2 * prec * rec / (prec + rec))


def test_attribute_metrics_empty_denominators_count_zero():
    scores = np.array([[0.1, 0.2], [0.9, 0.1]])
    targets = np.array([[0, 0], [1, 0]])  # image 0: nothing true, nothing predicted
    res = attribute_metrics(scores, targets)
    assert res["Accu"] == pytest.approx(50.0)
    assert res["Prec"] == pytest.approx(50.0) and res["Recall"] == pytest.approx(50.0)
    assert res["mA"] == pytest.approx(100.0)  # attr 1 has no positive: its TNR (1) only


# ----------------------------------------------------------------------------- continual summaries


def test_forgetting_hand_matrix():
    nan = np.nan
    m = np.array(
        [
            [50.0, nan, nan, nan],
            [70.0, 40.0, nan, nan],
            [60.0, 55.0, 30.0, nan],
            [45.0, 50.0, 35.0, 80.0],
        ]
    )
    np.testing.assert_allclose(forgetting(m), [25.0, 5.0, -5.0, nan], equal_nan=True)
    # upper-triangle values are ignored, whatever they hold
    m2 = np.where(np.isnan(m), 1e9, m)
    np.testing.assert_allclose(forgetting(m2), [25.0, 5.0, -5.0, nan], equal_nan=True)
    np.testing.assert_allclose(forgetting([[3.0]]), [nan], equal_nan=True)


def test_forgetting_rejects_non_square():
    with pytest.raises(ValueError, match="square T x T"):
        forgetting(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="square T x T"):
        forgetting(np.zeros(3))


# ----------------------------------------------------------------------------- validation


def test_shape_mismatch_message():
    with pytest.raises(ValueError) as err:
        multilabel_metrics(np.zeros((10, 5)), np.zeros((10, 4)))
    assert str(err.value) == (
        "Expected `scores` and `targets` to have the same shape, but got (10, 5) and (10, 4)."
    )


@pytest.mark.parametrize(
    "scores, targets, match",
    [
        (np.zeros(5), np.zeros(5), "2-D array"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "at least one sample"),
        (np.array([[0.2, np.nan]]), np.array([[0, 1]]), "finite"),
        (np.array([[0.2, np.inf]]), np.array([[0, 1]]), "finite"),
        (np.array([[0.2, 0.3]]), np.array([[0, 2]]), "only 0 and 1"),
        (np.array([[0.2, 0.3]]), np.array([[0.5, 1.0]]), "only 0 and 1"),
        (np.array([["a", "b"]]), np.array([[0, 1]]), "real-valued"),
    ],
)
def test_input_validation(scores, targets, match):
    for fn in (average_precision, multilabel_metrics, topk_metrics, attribute_metrics):
        with pytest.raises(ValueError, match=match):
            fn(scores, targets)


def test_thresholded_metrics_reject_logits_and_bad_threshold():
    logits, targets = np.array([[2.0, -1.0]]), np.array([[1, 0]])
    average_precision(logits, targets)  # ranking metrics accept any real scores
    topk_metrics(logits, targets, k=1)
    for fn in (multilabel_metrics, attribute_metrics):
        with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
            fn(logits, targets)
        with pytest.raises(ValueError, match="argument `threshold`"):
            fn(np.array([[0.2, 0.3]]), targets, threshold=1.5)


@pytest.mark.parametrize("classes", [[], [0, 5], [-1], [1, 1], [0.5], [[0, 1]]])
def test_classes_validation(classes):
    with pytest.raises(ValueError, match="argument `classes`"):
        multilabel_metrics(np.full((2, 3), 0.5), np.zeros((2, 3)), classes=classes)


# ----------------------------------------------------------------------------- ignored pairs (VOC difficult)


def test_ignored_pair_is_left_out_of_ap_and_counts_hand_case():
    # one class: a high-scoring negative is "difficult"; ignoring it puts the positive first
    scores = np.array([[0.9], [0.8], [0.7], [0.2]])
    targets = np.array([[0], [1], [0], [1]])
    ignore = np.array([[True], [False], [False], [False]])
    plain = multilabel_metrics(scores, targets)
    assert plain["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 4) / 2)
    res = multilabel_metrics(scores, targets, ignore=ignore)
    assert res["mAP"] == pytest.approx(100 * (1 / 1 + 2 / 3) / 2)
    # predictions > 0.5: rows 0, 1, 2; row 0 ignored -> 1 TP of 2 predictions, 1 of 2 positives
    assert (res["CP"], res["CR"], res["OP"], res["OR"]) == pytest.approx((50.0, 50.0, 50.0, 50.0))
    assert plain["CP"] == pytest.approx(100 / 3)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ties", [False, True])
def test_ignore_equals_dropping_the_pairs(seed, ties):
    """Every metric with a mask equals the same metric computed column by column without those rows."""
    scores, targets = _random(seed, ties=ties)
    ignore = np.random.default_rng(seed + 10).random(scores.shape) < 0.15
    ignore[:, 3] = targets[:, 3] == 1  # a class whose every positive is ignored: no AP, like an empty class
    res = multilabel_metrics(scores, targets, ignore=ignore)
    aps, tp, n_pred, n_pos = [], [], [], []
    for j in range(scores.shape[1]):
        keep = ~ignore[:, j]
        s, y = scores[keep, j], targets[keep, j]
        if y.any():
            aps.append(100 * average_precision_score(y, s))
        pred = s > 0.5
        tp.append(int((pred & (y == 1)).sum()))
        n_pred.append(int(pred.sum()))
        n_pos.append(int(y.sum()))
    tp, n_pred, n_pos = (np.delete(np.array(a), 3) for a in (tp, n_pred, n_pos))  # class 3: no positive left
    assert len(aps) == scores.shape[1] - 1 and res["mAP"] == pytest.approx(np.mean(aps))
    assert res[CLASSES_DROPPED] == 1.0
    cp = 100 * np.mean(np.divide(tp, n_pred, out=np.zeros(len(tp)), where=n_pred > 0))
    cr = 100 * np.mean(np.divide(tp, n_pos, out=np.zeros(len(tp)), where=n_pos > 0))
    assert (res["CP"], res["CR"]) == pytest.approx((cp, cr))
    assert (res["OP"], res["OR"]) == pytest.approx((100 * tp.sum() / n_pred.sum(), 100 * tp.sum() / n_pos.sum()))
    # a class subset slices the mask with the scores
    sub = multilabel_metrics(scores, targets, classes=[5, 1], ignore=ignore)
    assert sub == pytest.approx(multilabel_metrics(scores[:, [5, 1]], targets[:, [5, 1]], ignore=ignore[:, [5, 1]]))
    assert multilabel_metrics(scores, targets, ignore=np.zeros_like(ignore)) == multilabel_metrics(scores, targets)


def test_topk_ignore_keeps_predictions_and_drops_counts():
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.7]])
    targets = np.array([[1, 0, 0], [0, 1, 1]])
    ignore = np.array([[False, True, False], [False, False, False]])
    # top-2: image 0 predicts {0, 1} (1 ignored), image 1 predicts {1, 2}: 3 TP of 3 counted predictions
    res = topk_metrics(scores, targets, k=2, ignore=ignore)
    assert (res["OP@2"], res["OR@2"]) == pytest.approx((100.0, 100.0))
    assert topk_metrics(scores, targets, k=2)["OP@2"] == pytest.approx(75.0)


def test_ignore_validation():
    scores, targets = _random(0, n=5, m=3)
    with pytest.raises(ValueError, match=r"`ignore` to have the shape of `scores` \(5, 3\), but got \(5, 2\)"):
        multilabel_metrics(scores, targets, ignore=np.zeros((5, 2), bool))
    with pytest.raises(ValueError, match="`ignore` to contain only 0 and 1"):
        topk_metrics(scores, targets, ignore=np.full((5, 3), 2))
