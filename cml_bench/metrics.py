"""Multi-label and pedestrian-attribute metrics, and continual summaries: pure numpy functions.

Conventions shared by every function (see ``PROTOCOL.md``, section "Metrics"):

- ``scores``: float array ``[N, M]`` (N images, M classes), sigmoid probabilities for the
  thresholded metrics; any finite real values for :func:`average_precision` and the top-k metrics.
- ``targets``: array ``[N, M]`` of 0/1 (int, float or bool).
- ``ignore`` (optional): bool array ``[N, M]``; a True (image, class) pair is left out of every
  count, as if that image did not exist for that class (VOC's "difficult" labels: ML-GCN's AP
  skips them). Its image still counts for the other classes.
- A label is predicted positive iff ``score >= threshold`` (default 0.5).
- Every returned metric value is a PERCENT (0-100), as in the papers' tables.
- Torch tensors are accepted (detached and converted with numpy); this module imports no torch.
- Bad inputs raise ``ValueError`` saying what was expected and what was received.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "average_precision",
    "multilabel_metrics",
    "topk_metrics",
    "attribute_metrics",
    "group_metrics",
    "forgetting",
    "average_incremental",
    "area_under_curve",
]

# ----------------------------------------------------------------------------- validation helpers


def _to_numpy(x: Any) -> np.ndarray:
    """Convert an array-like (numpy, list, or a torch tensor, by duck typing) to numpy."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_inputs(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``scores`` / ``targets`` and return them as float64 ``[N, M]`` and bool ``[N, M]``."""
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


def _drop_ignored(s: np.ndarray, y: np.ndarray, ignore: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Ranking inputs with ignored pairs removed: an ignored pair becomes a negative ranked below
    every real score, where it changes no precision at any positive (so AP is exactly that of the
    column without it)."""
    if ignore is None or not ignore.any():
        return s, y
    return np.where(ignore, -np.inf, s), y & ~ignore


def _check_matrix(matrix: Any) -> np.ndarray:
    m = _to_numpy(matrix).astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"Expected `matrix` to be a square T x T array with T >= 1, but got shape {m.shape}.")
    return m


# ----------------------------------------------------------------------------- small arithmetic


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with 0 where ``den == 0`` (the numerators here are then 0 too)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _f1(p: float, r: float) -> float:
    """Harmonic mean of two numbers; 0 when both are 0."""
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


def _prf(pred: np.ndarray, y: np.ndarray, suffix: str = "", ignore: np.ndarray | None = None) -> dict[str, float]:
    """Macro (CP, CR, CF1) and micro (OP, OR, OF1) scores of bool predictions ``pred`` vs ``y``;
    ``ignore``d pairs are neither predictions nor positives."""
    if ignore is not None:
        pred, y = pred & ~ignore, y & ~ignore
    tp = np.count_nonzero(pred & y, axis=0)
    n_pred, n_pos = np.count_nonzero(pred, axis=0), np.count_nonzero(y, axis=0)
    cp = float(_safe_div(tp, n_pred).mean()) * 100
    cr = float(_safe_div(tp, n_pos).mean()) * 100
    op = float(_safe_div(tp.sum(), n_pred.sum())) * 100
    orec = float(_safe_div(tp.sum(), n_pos.sum())) * 100
    values = {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": orec, "OF1": _f1(op, orec)}
    return {k + suffix: v for k, v in values.items()}


# ----------------------------------------------------------------------------- ranking metrics


def _ap(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-column AP (fraction, NaN without positives) of validated float ``s`` and bool ``y``."""
    n = s.shape[0]
    st = np.ascontiguousarray(s.T)  # [M, N]: sort along the contiguous axis
    order = np.argsort(st, axis=1)[:, ::-1]  # descending; order inside ties is irrelevant below
    ss = np.take_along_axis(st, order, axis=1)
    yy = np.take_along_axis(np.ascontiguousarray(y.T), order, axis=1)
    tp = np.cumsum(yy, axis=1, dtype=np.int32)
    # A threshold is a distinct score: the last position of each run of equal scores ends a block.
    is_end = np.ones(ss.shape, dtype=bool)
    is_end[:, :-1] = ss[:, 1:] != ss[:, :-1]
    if is_end.all():  # no ties: every position is a threshold
        precision_at_end = tp / np.arange(1.0, n + 1.0)
    else:  # each position's block end = the first end at or after it (reverse running minimum)
        end_idx = np.where(is_end, np.arange(n), n)
        block_end = np.minimum.accumulate(end_idx[:, ::-1], axis=1)[:, ::-1]
        precision_at_end = np.take_along_axis(tp, block_end, axis=1) / (block_end + 1.0)
    # sum_k (R_k - R_{k-1}) P_k: recall rises at a block end by (positives in the block) / P.
    n_pos = tp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision_at_end * yy).sum(axis=1) / n_pos
    ap[n_pos == 0] = np.nan
    return ap


def average_precision(scores: Any, targets: Any) -> np.ndarray:
    """Per-class average precision, in percent.

    Args:
        scores: ``[N, M]`` finite real scores (higher = more likely positive).
        targets: ``[N, M]`` 0/1 labels.

    Returns:
        ``[M]`` float array. Equal to ``100 * sklearn.metrics.average_precision_score`` on each
        column, ties included (precision is taken at each distinct score, i.e. a tied group of
        images enters the ranking at once). NaN for a class with no positive.

    Vectorised over classes: one ``argsort`` of the ``[M, N]`` transposed scores, O(N M log N).

    >>> scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    >>> targets = np.array([[1, 0], [0, 1], [1, 0]])
    >>> average_precision(scores, targets).round(2)
    array([ 83.33, 100.  ])
    """
    s, y = _check_inputs(scores, targets)
    return _ap(s, y) * 100


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
        threshold: a label is predicted positive iff ``score >= threshold``.
        ignore_empty: mAP policy for classes with no positive in ``targets``: True (as PRS does)
            leaves them out of the mean; False counts their AP as 0. If no selected class has a
            positive, mAP is NaN either way.
        ignore: optional bool ``[N, M]``: pairs left out of every metric (see the module docstring).

    Returns:
        ``{"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"}``. CP / CR: mean over the selected classes
        of per-class precision / recall, a 0/0 counting as 0 (sklearn ``zero_division=0``,
        ``average="macro"``). CF1 = 2 CP CR / (CP + CR), the harmonic mean of the means (as PRS;
        NOT the mean of per-class F1), 0 when both are 0. OP / OR / OF1: micro-averaged over all
        (image, class) pairs of the selected classes.

    >>> scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    >>> targets = np.array([[1, 0], [0, 1], [1, 0]])
    >>> {k: round(v, 2) for k, v in multilabel_metrics(scores, targets).items()}
    {'mAP': 91.67, 'CP': 75.0, 'CR': 75.0, 'CF1': 75.0, 'OP': 66.67, 'OR': 66.67, 'OF1': 66.67}
    """
    s, y = _check_inputs(scores, targets)
    _check_probabilities(s, threshold)
    mask = _check_ignore(ignore, s.shape)
    if classes is not None:
        idx = _check_classes(classes, s.shape[1])
        s, y = s[:, idx], y[:, idx]
        mask = None if mask is None else mask[:, idx]
    ap = _ap(*_drop_ignored(s, y, mask))
    has_pos = ~np.isnan(ap)
    if not has_pos.any():
        m_ap = float("nan")
    elif ignore_empty:
        m_ap = float(ap[has_pos].mean()) * 100
    else:
        m_ap = float(np.where(has_pos, ap, 0.0).mean()) * 100
    return {"mAP": m_ap, **_prf(s >= threshold, y, ignore=mask)}


def topk_metrics(scores: Any, targets: Any, k: int = 3, classes: Sequence[int] | None = None,
                 ignore: Any = None) -> dict[str, float]:
    """Macro / micro scores when each image's ``k`` highest-scoring labels are its predictions.

    The common "top-3" protocol (no threshold). The top k are chosen among ALL M columns, so an
    image's predictions do not depend on ``classes``; the metrics are then computed on the
    ``classes`` columns only. Equal scores are broken in favour of the lower column index.
    ``ignore``d pairs do not change which labels are predicted; they are then left out of the counts.

    Returns:
        ``{"CP@k", "CR@k", "CF1@k", "OP@k", "OR@k", "OF1@k"}`` in percent, with the same
        definitions and 0/0 policy as :func:`multilabel_metrics`.

    >>> scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.7]])
    >>> targets = np.array([[1, 0, 0], [0, 1, 1]])
    >>> {k: round(v, 2) for k, v in topk_metrics(scores, targets, k=1).items()}
    {'CP@1': 66.67, 'CR@1': 66.67, 'CF1@1': 66.67, 'OP@1': 100.0, 'OR@1': 66.67, 'OF1@1': 80.0}
    """
    s, y = _check_inputs(scores, targets)
    n, m = s.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= m:
        raise ValueError(f"Expected argument `k` to be an integer in [1, {m}] (the number of classes), but got {k!r}.")
    idx = _check_classes(classes, m)
    mask = _check_ignore(ignore, s.shape)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    pred = np.zeros(s.shape, dtype=bool)
    pred[np.arange(n)[:, None], top] = True
    return _prf(pred[:, idx], y[:, idx], suffix=f"@{k}", ignore=None if mask is None else mask[:, idx])


def attribute_metrics(scores: Any, targets: Any, threshold: float = 0.5) -> dict[str, float]:
    """Pedestrian-attribute metrics: label-based mA and example-based Accu, Prec, Recall, F1.

    Predictions are ``score >= threshold`` (the common PAR code uses ``>``; equal only on ties).

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
    pred = s >= threshold
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


def group_metrics(
    scores: Any, targets: Any, groups: Mapping[str, Sequence[int]], threshold: float = 0.5
) -> dict[str, dict[str, float]]:
    """:func:`multilabel_metrics` on all columns (key ``"all"``) and on each group's columns.

    Args:
        groups: group name -> column indices, e.g. ``{"majority": [...], "minority": [...]}``.
            A group may not be called ``"all"``. mAP ignores classes with no positive (PRS policy).

    >>> scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    >>> targets = np.array([[1, 0], [0, 1], [1, 0]])
    >>> res = group_metrics(scores, targets, {"rare": [1]})
    >>> sorted(res), round(res["rare"]["mAP"], 2), round(res["all"]["mAP"], 2)
    (['all', 'rare'], 100.0, 91.67)
    """
    if "all" in groups:
        raise ValueError(f"Expected group names other than 'all' (reserved for all classes), but got {list(groups)}.")
    out = {"all": multilabel_metrics(scores, targets, threshold=threshold)}
    for name, idx in groups.items():
        out[name] = multilabel_metrics(scores, targets, classes=idx, threshold=threshold)
    return out


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


def average_incremental(matrix: Any) -> float:
    """Average incremental metric: mean over steps i of the mean of ``matrix[i, :i+1]``.

    Same convention for ``matrix`` as :func:`forgetting`; the last step's term is the final
    average over all tasks. NaN among the entries used propagates.

    >>> m = np.array([[80.0, np.nan], [60.0, 70.0]])
    >>> average_incremental(m)
    72.5
    """
    m = _check_matrix(matrix)
    rows = np.tril(np.ones(m.shape, dtype=bool))
    step_means = np.where(rows, m, 0.0).sum(axis=1) / rows.sum(axis=1)
    return float(step_means.mean())


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
