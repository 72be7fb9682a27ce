"""Multi-label and pedestrian-attribute metrics, and continual summaries: pure numpy functions.

Conventions shared by every function (see ``PROTOCOL.md``, section "Metrics"):

- ``scores``: float array ``[N, M]`` (N images, M classes), sigmoid probabilities for the
  thresholded metrics; any finite real values for :func:`average_precision` and the top-k metrics.
- ``targets``: array ``[N, M]`` of 0/1 (int, float or bool).
- ``ignore`` (optional): bool array ``[N, M]``; a True (image, class) pair is left out of every
  count, as if that image did not exist for that class (VOC's "difficult" labels: ML-GCN's AP
  skips them). Its image still counts for the other classes.
- A label is predicted positive iff ``score > threshold`` (strictly; default 0.5), as PRS's released
  code does (github.com/cdjkim/PRS: ``predict > 0.5`` in ``code/eval.py``, ``validate``, and
  ``probs_total > 0.5`` in ``code/data.py``,
  ``MSCOCO._eval_model`` / ``NUSWIDE._eval_model``) and as the common pedestrian-attribute code does.
- Classes with no positive in the evaluated set (after ``ignore``) are dropped from EVERY metric,
  thresholded ones included, as PRS does: both functions above compute ``ncats =
  targets.sum(axis=0)``, keep ``cats_in_task_idx = ncats > 0`` and evaluate CP, CR, OP, OR, OF1 and
  mAP on those columns only; a class group is the intersection of its classes with the kept ones,
  and a group left empty gets NaN for every metric (``eval.py``, ``validate``). The number dropped
  is returned as ``classes_dropped`` (:data:`CLASSES_DROPPED`). ``ignore_empty=False`` keeps them
  (AP 0, recall 0) instead. :func:`attribute_metrics` is the exception: the pedestrian protocol
  keeps every attribute (its mA has its own policy for an attribute without positives).
- Every returned metric value is a PERCENT (0-100), as in the papers' tables; ``classes_dropped``
  is a count.
- Torch tensors are accepted (detached and converted with numpy); this module imports no torch.
- Bad inputs raise ``ValueError`` saying what was expected and what was received.

Which metrics a benchmark gets is its metric family, named by ``BenchmarkMeta.kind``
(:data:`FAMILY_METRICS`, :func:`family_metrics`): what the evaluator writes, what the leaderboard's
bootstrap recomputes, and what the result tables show all come from here.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "average_precision",
    "multilabel_metrics",
    "topk_metrics",
    "attribute_metrics",
    "group_columns",
    "group_metrics",
    "forgetting",
    "CLASSES_DROPPED",
    "area_under_curve",
    "MAIN_METRICS",
    "TOP_K",
    "ATTRIBUTE_METRICS",
    "FAMILY_METRICS",
    "HEADLINE_METRIC",
    "family_metrics",
]

CLASSES_DROPPED = "classes_dropped"  # the count of classes without a positive that an evaluation left out

# Metric families, keyed by ``BenchmarkMeta.kind``: ``continual`` streams get mAP and the
# thresholded macro / micro scores; ``generic`` single-task streams add the top-3 variants;
# ``attribute`` streams (pedestrian attributes) get the attribute metrics; ``mlcil`` streams get the
# continual ones (plus ``avg_mAP``, an average over sessions that ``cml_bench.mlcil`` adds).
MAIN_METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
TOP_K = 3  # the generic protocol's top-3 predictions per image
ATTRIBUTE_METRICS = ("mA", "Accu", "Prec", "Recall", "F1")
FAMILY_METRICS = {
    "continual": MAIN_METRICS,
    "generic": MAIN_METRICS + tuple(f"{m}@{TOP_K}" for m in ("CP", "CR", "CF1", "OP", "OR", "OF1")),
    "attribute": ATTRIBUTE_METRICS,
    "mlcil": MAIN_METRICS,
}
def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is the better one (forgetting); every other metric here
    is better when higher.

    >>> lower_is_better("forgetting_mAP"), lower_is_better("mAP")
    (True, False)
    """
    return metric.startswith("forgetting_")


HEADLINE_METRIC = {"continual": "mAP", "generic": "mAP", "attribute": "mA", "mlcil": "mAP"}
"""The metric a progress line shows, per family."""

# ----------------------------------------------------------------------------- validation helpers


def _to_numpy(x: Any) -> np.ndarray:
    """Convert an array-like (numpy, list, or a torch tensor, by duck typing) to numpy."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_inputs(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``scores`` / ``targets`` and return them as float ``[N, M]`` (float32 kept, any other
    dtype as float64) and bool ``[N, M]``."""
    s, t = _to_numpy(scores), _to_numpy(targets)
    for name, a in (("scores", s), ("targets", t)):
        if a.ndim != 2:
            raise ValueError(f"Expected `{name}` to be a 2-D array of shape [N, M], but got shape {a.shape}.")
    if s.shape != t.shape:
        raise ValueError(
            f"Expected `scores` and `targets` to have the same shape, but got {s.shape} and {t.shape}."
        )
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"Expected at least one sample and one class, but got shape {s.shape}.")
    if s.dtype.kind not in "biuf":
        raise ValueError(f"Expected `scores` to be a real-valued array, but got dtype {s.dtype}.")
    if s.dtype != np.float32:  # float32 (the evaluator's scores) is kept: sorting it is twice as fast
        s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        raise ValueError(
            f"Expected `scores` to be finite, but got {int((~np.isfinite(s)).sum())} NaN or infinite values."
        )
    if t.dtype != np.bool_:
        bad = (t != 0) & (t != 1)
        if bad.any():
            values = np.unique(t[bad])[:5].tolist()
            raise ValueError(f"Expected `targets` to contain only 0 and 1, but got values such as {values}.")
    return s, t.astype(bool, copy=False)


def _check_probabilities(s: np.ndarray, threshold: float) -> None:
    """Thresholded metrics need probabilities: logits here would be a silent, wrong result."""
    if not (isinstance(threshold, (int, float, np.floating)) and 0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"Expected argument `threshold` to be a float in [0, 1], but got {threshold!r}.")
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError(
            "Expected `scores` to be probabilities in [0, 1] (apply a sigmoid to logits first), "
            f"but got values in [{s.min():.4g}, {s.max():.4g}]."
        )


def _check_classes(classes: Sequence[int] | None, num_classes: int) -> np.ndarray:
    """Return ``classes`` as an int index array (all columns when None); non-empty, unique, in range."""
    if classes is None:
        return np.arange(num_classes)
    idx = np.asarray(classes)
    if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
        raise ValueError(
            f"Expected argument `classes` to be a non-empty sequence of integer column indices, but got {classes!r}."
        )
    if idx.min() < 0 or idx.max() >= num_classes or np.unique(idx).size != idx.size:
        raise ValueError(
            f"Expected argument `classes` to hold distinct indices in [0, {num_classes - 1}], "
            f"but got {idx.tolist()}."
        )
    return idx


def _check_ignore(ignore: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """``ignore`` as a bool ``[N, M]`` array (None stays None)."""
    if ignore is None:
        return None
    m = _to_numpy(ignore)
    if m.shape != shape:
        raise ValueError(f"Expected `ignore` to have the shape of `scores` {shape}, but got {m.shape}.")
    if m.dtype != np.bool_ and ((m != 0) & (m != 1)).any():
        raise ValueError("Expected `ignore` to contain only 0 and 1 (or bool).")
    return m.astype(bool, copy=False)


def _check_matrix(matrix: Any) -> np.ndarray:
    m = _to_numpy(matrix).astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"Expected `matrix` to be a square T x T array with T >= 1, but got shape {m.shape}.")
    return m


# ----------------------------------------------------------------------------- small arithmetic


def _predicted(s: np.ndarray, threshold: float) -> np.ndarray:
    """``s > threshold`` compared in float64 whatever the scores' dtype (a float32 comparison would
    round a threshold such as 0.3 first)."""
    return s > np.float64(threshold)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with 0 where ``den == 0`` (the numerators here are then 0 too)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _f1(p: float, r: float) -> float:
    """Harmonic mean of two numbers; 0 when both are 0."""
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


def _prf(tp: np.ndarray, n_pred: np.ndarray, n_pos: np.ndarray, suffix: str = "") -> dict[str, float]:
    """Macro (CP, CR, CF1) and micro (OP, OR, OF1) scores from per-class counts of true positives,
    predictions and positives."""
    cp = float(_safe_div(tp, n_pred).mean()) * 100
    cr = float(_safe_div(tp, n_pos).mean()) * 100
    op = float(_safe_div(tp.sum(), n_pred.sum())) * 100
    orec = float(_safe_div(tp.sum(), n_pos.sum())) * 100
    values = {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": orec, "OF1": _f1(op, orec)}
    return {k + suffix: v for k, v in values.items()}


# ----------------------------------------------------------------------------- per-column statistics


def _ap_rows(st: np.ndarray, yt: np.ndarray, kt: np.ndarray | None) -> np.ndarray:
    """Per-class AP (fraction, NaN without positives) of the TRANSPOSED validated inputs: float
    scores ``st`` and bool labels ``yt`` ``[K, N]`` (one row per class), ``kt``: the pairs that
    count (None: all).

    AP = mean over the positives of the precision at the positive's own score v, i.e. (positives
    scoring >= v) / (images scoring >= v): a block of tied scores enters the ranking at once, as in
    sklearn, whose thresholds are the distinct scores. Both counts are binary searches in the sorted
    scores: one sort per class (of all rows at once when nothing is ignored) plus one of its positives.
    """
    ranked_all = np.sort(st, axis=1) if kt is None else None
    ap = np.full(st.shape[0], np.nan)
    for c in range(st.shape[0]):
        col, pos = st[c], yt[c]
        if kt is None:
            ranked = ranked_all[c]
        else:  # an ignored pair is removed from its class, as if its image did not exist there
            col, pos = col[kt[c]], pos[kt[c]]
            ranked = np.sort(col)
        hits = np.sort(col[pos])
        if hits.size:
            above = ranked.size - np.searchsorted(ranked, hits, side="left")
            hits_above = hits.size - np.searchsorted(hits, hits, side="left")
            precision = hits_above / above
            # np.mean's own arithmetic (pairwise sum / count, bit for bit) without its Python
            # overhead, which the leaderboard's bootstrap pays 70 x 201 times per run
            ap[c] = np.add.reduce(precision) / precision.size
    return ap


def _top_k(s: np.ndarray, k: int) -> np.ndarray:
    """Bool ``[N, M]``: each image's ``k`` highest scores, equal scores broken in favour of the lower
    column index (``argmax`` returns the first maximum; the same choice as a stable sort of ``-s``)."""
    work, rows = s.copy(), np.arange(s.shape[0])
    pred = np.zeros(s.shape, dtype=bool)
    for _ in range(k):
        best = work.argmax(axis=1)
        pred[rows, best] = True
        work[rows, best] = -np.inf
    return pred


def _counts(pred_t: np.ndarray, yt: np.ndarray, kt: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Per-class true positives, predictions and positives of transposed ``[K, N]`` bool arrays
    (``yt`` already masked); ignored pairs are neither predictions nor positives."""
    if kt is not None:
        pred_t = pred_t & kt
    return (np.count_nonzero(pred_t & yt, axis=1), np.count_nonzero(pred_t, axis=1),
            np.count_nonzero(yt, axis=1))


def _summary(rows: np.ndarray, ap: np.ndarray | None, counts: tuple[np.ndarray, ...] | None,
             counts_k: tuple[np.ndarray, ...] | None, k: int | None, ignore_empty: bool) -> dict[str, float]:
    """The metrics of one class set (``rows`` index the per-class statistics), classes without a
    positive dropped from every metric when ``ignore_empty`` (PRS), NaN when none is left."""
    n_pos = (counts or counts_k)[2][rows]
    has_pos = n_pos > 0
    kept = rows[has_pos] if ignore_empty else rows
    values: dict[str, float] = {}
    if ap is not None:
        if not has_pos.any():
            values["mAP"] = float("nan")
        elif ignore_empty:
            values["mAP"] = float(ap[kept].mean()) * 100
        else:
            values["mAP"] = float(np.where(has_pos, ap[rows], 0.0).mean()) * 100
    for stats, suffix in ((counts, ""), (counts_k, f"@{k}")):
        if stats is not None:
            values.update(_prf(*(a[kept] for a in stats), suffix=suffix) if kept.size else
                          {m + suffix: float("nan") for m in ("CP", "CR", "CF1", "OP", "OR", "OF1")})
    values[CLASSES_DROPPED] = float(rows.size - kept.size)
    return values


def _evaluate(s: np.ndarray, y: np.ndarray, mask: np.ndarray | None, sets: Mapping[str, np.ndarray],
              threshold: float | None, top_k: int | None, ignore_empty: bool) -> dict[str, dict[str, float]]:
    """Each class set's metrics from per-class statistics computed once for the union of the sets:
    AP (one sort per class), thresholded counts (when ``threshold`` is given, with mAP) and top-k
    counts (when ``top_k`` is given; the top k chosen among ALL columns)."""
    needed = np.unique(np.concatenate([np.asarray(v, dtype=np.intp) for v in sets.values()]))
    row_of = np.full(s.shape[1], -1, dtype=np.intp)
    row_of[needed] = np.arange(needed.size)
    every = needed.size == s.shape[1]  # then needed == arange(M): no column copy
    st = np.ascontiguousarray(s.T if every else s[:, needed].T)
    yt = np.ascontiguousarray(y.T if every else y[:, needed].T)
    kt = None if mask is None or not mask.any() else ~np.ascontiguousarray(mask.T if every else mask[:, needed].T)
    yt_kept = yt if kt is None else yt & kt
    ap = counts = counts_k = None
    if threshold is not None:
        ap = _ap_rows(st, yt_kept, kt)
        counts = _counts(_predicted(st, threshold), yt_kept, kt)
    if top_k is not None:
        pred = _top_k(s, top_k)
        counts_k = _counts(np.ascontiguousarray(pred.T if every else pred[:, needed].T), yt_kept, kt)
    return {name: _summary(row_of[cols], ap, counts, counts_k, top_k, ignore_empty) for name, cols in sets.items()}


# ----------------------------------------------------------------------------- public metrics


def average_precision(scores: Any, targets: Any) -> np.ndarray:
    """Per-class average precision, in percent.

    Args:
        scores: ``[N, M]`` finite real scores (higher = more likely positive).
        targets: ``[N, M]`` 0/1 labels.

    Returns:
        ``[M]`` float array. Equal to ``100 * sklearn.metrics.average_precision_score`` on each
        column, ties included (precision is taken at each distinct score, i.e. a tied group of
        images enters the ranking at once). NaN for a class with no positive. PRS computes its
        mAP with that sklearn function column by column (``code/utils.py``, ``mean_average_precision``).

    One sort per class, O(N M log N).

    >>> scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    >>> targets = np.array([[1, 0], [0, 1], [1, 0]])
    >>> average_precision(scores, targets).round(2)
    array([ 83.33, 100.  ])
    """
    s, y = _check_inputs(scores, targets)
    return _ap_rows(np.ascontiguousarray(s.T), np.ascontiguousarray(y.T), None) * 100


def multilabel_metrics(
    scores: Any,
    targets: Any,
    classes: Sequence[int] | None = None,
    threshold: float = 0.5,
    ignore_empty: bool = True,
    ignore: Any = None,
) -> dict[str, float]:
    """mAP and the thresholded macro / micro scores of multi-label classification, in percent.

    Args:
        scores: ``[N, M]`` probabilities in [0, 1] (a ValueError if not: logits need a sigmoid).
        targets: ``[N, M]`` 0/1 labels.
        classes: column indices to evaluate (e.g. the minority group); every metric, the micro
            ones included, is computed on those columns only. None: all columns.
        threshold: a label is predicted positive iff ``score > threshold`` (strictly, as PRS).
        ignore_empty: classes with no positive in ``targets`` (after ``ignore``). True (as PRS
            does; see the module docstring): dropped from every metric, and every metric is NaN
            if none is left. False: kept, their AP counting as 0 in mAP and their recall as 0 (mAP
            is NaN if no selected class has a positive).
        ignore: optional bool ``[N, M]``: pairs left out of every metric (see the module docstring).

    Returns:
        ``{"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "classes_dropped"}``. CP / CR: mean over
        the evaluated classes of per-class precision / recall, a 0/0 counting as 0 (sklearn
        ``zero_division=0``, ``average="macro"``; PRS's ``precision_score_per_class`` /
        ``recall_score_per_class`` in ``code/utils.py`` with ``zero_division=0``). CF1 = 2 CP CR /
        (CP + CR), the harmonic mean of the means (as PRS; NOT the mean of per-class F1), 0 when
        both are 0. OP / OR / OF1: micro-averaged over all (image, class) pairs of the evaluated
        classes (PRS's ``precision_score_overall`` / ``recall_score_overall`` / ``f1_score_overall``).
        ``classes_dropped``: how many of the selected classes had no positive and were dropped.

    >>> scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    >>> targets = np.array([[1, 0], [0, 1], [1, 0]])
    >>> {k: round(v, 2) for k, v in multilabel_metrics(scores, targets).items()}  # doctest: +NORMALIZE_WHITESPACE
    {'mAP': 91.67, 'CP': 75.0, 'CR': 75.0, 'CF1': 75.0, 'OP': 66.67, 'OR': 66.67, 'OF1': 66.67,
     'classes_dropped': 0.0}
    """
    s, y = _check_inputs(scores, targets)
    _check_probabilities(s, threshold)
    mask = _check_ignore(ignore, s.shape)
    sets = {"all": _check_classes(classes, s.shape[1])}
    return _evaluate(s, y, mask, sets, threshold, None, ignore_empty)["all"]


def topk_metrics(scores: Any, targets: Any, k: int = 3, classes: Sequence[int] | None = None,
                 ignore: Any = None, ignore_empty: bool = True) -> dict[str, float]:
    """Macro / micro scores when each image's ``k`` highest-scoring labels are its predictions.

    The common "top-3" protocol (no threshold). The top k are chosen among ALL M columns, so an
    image's predictions do not depend on ``classes``; the metrics are then computed on the
    ``classes`` columns only. Equal scores are broken in favour of the lower column index.
    ``ignore``d pairs do not change which labels are predicted; they are then left out of the counts.
    Classes without a positive are dropped as in :func:`multilabel_metrics` (``ignore_empty``), so
    the top-k and the thresholded scores of one evaluation cover the same classes.

    Returns:
        ``{"CP@k", "CR@k", "CF1@k", "OP@k", "OR@k", "OF1@k", "classes_dropped"}`` in percent
        (the last a count), with the same definitions and 0/0 policy as :func:`multilabel_metrics`.

    >>> scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.7]])
    >>> targets = np.array([[1, 0, 0], [0, 1, 1]])
    >>> {k: round(v, 2) for k, v in topk_metrics(scores, targets, k=1).items()}  # doctest: +NORMALIZE_WHITESPACE
    {'CP@1': 66.67, 'CR@1': 66.67, 'CF1@1': 66.67, 'OP@1': 100.0, 'OR@1': 66.67, 'OF1@1': 80.0,
     'classes_dropped': 0.0}
    """
    s, y = _check_inputs(scores, targets)
    _check_k(k, s.shape[1])
    sets = {"all": _check_classes(classes, s.shape[1])}
    return _evaluate(s, y, _check_ignore(ignore, s.shape), sets, None, k, ignore_empty)["all"]


def _check_k(k: Any, num_classes: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
        raise ValueError(f"Expected argument `k` to be an integer in [1, {num_classes}] (the number of classes), "
                         f"but got {k!r}.")


def attribute_metrics(scores: Any, targets: Any, threshold: float = 0.5) -> dict[str, float]:
    """Pedestrian-attribute metrics: label-based mA and example-based Accu, Prec, Recall, F1.

    Predictions are ``score > threshold`` (strictly), the rule of the rest of this module and of
    the common PAR evaluation code (``pred_label = preds_probs > threshold``). The pedestrian
    protocol keeps its own conventions otherwise (PROTOCOL.md); in particular no attribute is dropped:

    - mA: mean over attributes of (TPR + TNR) / 2. Policy: an attribute with no positive (or no
      negative) image uses its defined half only, i.e. its TNR (or TPR). (The common code adds
      an epsilon instead, which counts the undefined half as 0.)
    - Accu = mean over images of |pred & true| / |pred | true|; Prec = mean of |pred & true| / |pred|;
      Recall = mean of |pred & true| / |true|; F1 = 2 Prec Recall / (Prec + Recall) computed from
      the two means (Li et al.'s evaluation; some copies of Jia et al.'s code average per-image F1).
    - An image with an empty denominator contributes 0 to that mean. This is exact division with
      a 0/0 -> 0 rule, not an epsilon; the results equal the epsilon code's up to ~1e-20.

    Returns:
        ``{"mA", "Accu", "Prec", "Recall", "F1"}`` in percent.

    >>> scores = np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.8]])
    >>> targets = np.array([[1, 0, 0], [0, 0, 1]])
    >>> {k: round(v, 2) for k, v in attribute_metrics(scores, targets).items()}
    {'mA': 83.33, 'Accu': 75.0, 'Prec': 75.0, 'Recall': 100.0, 'F1': 85.71}
    """
    s, y = _check_inputs(scores, targets)
    _check_probabilities(s, threshold)
    pred = _predicted(s, threshold)
    n_pos, n_neg = np.count_nonzero(y, axis=0), np.count_nonzero(~y, axis=0)
    tpr = _safe_div(np.count_nonzero(pred & y, axis=0), n_pos)
    tnr = _safe_div(np.count_nonzero(~pred & ~y, axis=0), n_neg)
    halves = (n_pos > 0).astype(np.float64) + (n_neg > 0)  # >= 1 because N >= 1
    m_a = float(((tpr + tnr) / halves).mean()) * 100
    inter = np.count_nonzero(pred & y, axis=1)
    accu = float(_safe_div(inter, np.count_nonzero(pred | y, axis=1)).mean()) * 100
    prec = float(_safe_div(inter, np.count_nonzero(pred, axis=1)).mean()) * 100
    rec = float(_safe_div(inter, np.count_nonzero(y, axis=1)).mean()) * 100
    return {"mA": m_a, "Accu": accu, "Prec": prec, "Recall": rec, "F1": _f1(prec, rec)}


def group_columns(groups: Mapping[str, Sequence[int]], num_classes: int,
                  classes: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The class sets of one evaluation: ``"all"`` = ``classes`` (all columns when None), then each
    group's columns among them, in the group's order; a group with none of them is left out.

    >>> {k: v.tolist() for k, v in group_columns({"rare": [4, 1], "other": [0]}, 5, classes=[1, 2, 4]).items()}
    {'all': [1, 2, 4], 'rare': [4, 1]}
    """
    if "all" in groups:
        raise ValueError(f"Expected group names other than 'all' (reserved for all classes), but got {list(groups)}.")
    cols = _check_classes(classes, num_classes)
    wanted = np.zeros(num_classes, dtype=bool)
    wanted[cols] = True
    out = {"all": cols}
    for name, idx in groups.items():
        if len(idx):
            idx = _check_classes(idx, num_classes)
            if wanted[idx].any():
                out[name] = idx[wanted[idx]]
    return out


def group_metrics(
    scores: Any,
    targets: Any,
    groups: Mapping[str, Sequence[int]],
    threshold: float = 0.5,
    classes: Sequence[int] | None = None,
    ignore: Any = None,
    top_k: int | None = None,
    ignore_empty: bool = True,
) -> dict[str, dict[str, float]]:
    """The metric suite of one evaluation: :func:`multilabel_metrics` (and, with ``top_k``,
    :func:`topk_metrics`) on ``classes`` (key ``"all"``) and on each group's columns among them.

    Args:
        groups: group name -> column indices, e.g. ``{"majority": [...], "minority": [...]}``.
            A group may not be called ``"all"``; a group with no column in ``classes`` is left out
            (:func:`group_columns`).
        classes: the evaluated columns (e.g. one task's classes); None: all columns.
        top_k: also the top-k metrics (the generic protocol's top 3), merged into each group's dict.
        threshold, ignore, ignore_empty: as in :func:`multilabel_metrics`; classes without a
            positive are dropped from every metric of every group (PRS), ``classes_dropped`` per group.

    Each statistic is computed once per column and shared by every group: one sort per column for
    AP, one thresholding, one top-k selection. Results equal the per-group function calls.

    >>> scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    >>> targets = np.array([[1, 0], [0, 1], [1, 0]])
    >>> res = group_metrics(scores, targets, {"rare": [1]})
    >>> sorted(res), round(res["rare"]["mAP"], 2), round(res["all"]["mAP"], 2)
    (['all', 'rare'], 100.0, 91.67)
    """
    s, y = _check_inputs(scores, targets)
    _check_probabilities(s, threshold)
    if top_k is not None:
        _check_k(top_k, s.shape[1])
    sets = group_columns(groups, s.shape[1], classes)
    return _evaluate(s, y, _check_ignore(ignore, s.shape), sets, threshold, top_k, ignore_empty)


def family_metrics(kind: str, scores: Any, targets: Any, groups: Mapping[str, Sequence[int]], threshold: float,
                   classes: Sequence[int] | None = None, ignore: Any = None,
                   benchmark: str = "") -> dict[str, dict[str, float]]:
    """The metrics of family ``kind`` (:data:`FAMILY_METRICS`) on ``classes`` (key ``"all"``) and on
    each group's columns among them (:func:`group_columns`): what the evaluator writes for one
    evaluation, and what the leaderboard's bootstrap recomputes on resampled test sets.

    ``attribute``: :func:`attribute_metrics` per class set (no ``ignore`` mask: a ValueError naming
    ``benchmark``). Otherwise :func:`group_metrics`, with the top-3 metrics for ``generic`` (an
    image's top 3 chosen among all its columns, then scored on the group's columns; none with fewer
    than 3 columns).

    >>> scores = np.array([[0.9, 0.2, 0.6], [0.6, 0.7, 0.1], [0.1, 0.4, 0.8]])
    >>> targets = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    >>> res = family_metrics("generic", scores, targets, {"rare": [1]}, 0.5)
    >>> sorted(res), round(res["rare"]["mAP"], 2), "OF1@3" in res["all"]
    (['all', 'rare'], 100.0, True)
    """
    if kind not in FAMILY_METRICS:
        raise ValueError(f"Expected a metric family among {', '.join(FAMILY_METRICS)}, but got kind {kind!r}"
                         + (f" (benchmark '{benchmark}')." if benchmark else "."))
    if kind == "attribute":
        if ignore is not None:
            raise ValueError(f"Benchmark '{benchmark}' gives an evaluation ignore mask, "
                             f"which the attribute metrics do not take.")
        s, y = _check_inputs(scores, targets)
        return {group: attribute_metrics(s[:, idx], y[:, idx], threshold=threshold)
                for group, idx in group_columns(groups, s.shape[1], classes).items()}
    s = _to_numpy(scores)
    top_k = TOP_K if kind == "generic" and s.shape[-1] >= TOP_K else None
    return group_metrics(s, targets, groups, threshold, classes=classes, ignore=ignore, top_k=top_k)


# ----------------------------------------------------------------------------- continual summaries


def forgetting(matrix: Any) -> np.ndarray:
    """Forgetting of each task from a T x T result matrix.

    Args:
        matrix: ``[T, T]``; ``matrix[i, j]`` = metric on task j's test set after training through
            task i (entries with j > i are ignored; NaN by convention).

    Returns:
        ``[T]`` array: for j < T-1, ``max(matrix[j:T-1, j]) - matrix[T-1, j]`` (the best value
        before the last task minus the final value; same unit as the matrix). NaN for the last
        task. A NaN among the entries used propagates to that task's forgetting.

    >>> m = np.array([[80.0, np.nan, np.nan], [60.0, 70.0, np.nan], [50.0, 65.0, 90.0]])
    >>> forgetting(m)
    array([30.,  5., nan])
    """
    m = _check_matrix(matrix)
    t = m.shape[0]
    out = np.full(t, np.nan)
    if t > 1:
        before = m[: t - 1, : t - 1].copy()
        before[np.triu_indices(t - 1, k=1)] = -np.inf  # rows i < j: task j not yet seen
        out[: t - 1] = before.max(axis=0) - m[t - 1, : t - 1]
    return out


def area_under_curve(samples: Any, values: Any) -> float:
    """A_auc (Koh et al., ICLR 2022, "anytime inference"): the area under a metric-vs-samples curve,
    as a mean over the stream.

    Koh et al. evaluate every Δn stream samples and define A_auc = sum_i f(i Δn) Δn; divided by the
    stream length k Δn it is in the metric's unit. With points at any samples x_1 < ... < x_k (x_0 =
    0) this is sum_i f(x_i) (x_i - x_{i-1}) / x_k: each value stands for the samples since the
    previous point (a right Riemann sum, as in their definition).

    >>> area_under_curve([10, 20, 40], [20.0, 40.0, 60.0])
    45.0
    """
    x, f = _to_numpy(samples).astype(np.float64), _to_numpy(values).astype(np.float64)
    if x.ndim != 1 or x.shape != f.shape or x.size == 0:
        raise ValueError(f"Expected `samples` and `values` to be 1-D of the same non-zero length, "
                         f"but got shapes {x.shape} and {f.shape}.")
    if x[0] <= 0 or (np.diff(x) <= 0).any():
        raise ValueError("Expected `samples` to be positive and strictly increasing.")
    widths = np.diff(np.concatenate([[0.0], x]))
    return float((f * widths).sum() / x[-1])
