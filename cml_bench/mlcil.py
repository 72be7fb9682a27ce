"""Multi-label class-incremental learning (MLCIL): the stream builder every MLCIL benchmark shares.

The protocol is KRT's (Dong et al., "Knowledge Restore and Transfer for Multi-Label Class-Incremental
Learning", ICCV 2023; code github.com/witdsl/KRT-MLCIL: ``src/helper_functions/IncrementalDataset.py``,
``coco_loader.py``, ``voc_loader.py``, ``MultiLabelIncremental_baseline.py``), read, not copied:

* **Sessions.** The classes, in a fixed order, are cut into a base session and sessions of
  ``increment`` classes. "B<b>-C<c>": a base of b classes, then sessions of c; B0 means no larger
  base, so the first session has c classes too (KRT's B0-C10 on COCO is 8 sessions of 10).
* **Training images of a session**: every training image that carries at least one of the session's
  classes (KRT: the union of ``catToImgs`` over the session's classes). An image can be in several
  sessions.
* **Label absence**: in session t an image's target has only session t's classes; old and future
  classes are 0 even where the image shows them (KRT's loaders keep only ``included`` classes).
* **Test set after session t**: every test image with at least one seen class (sessions 0..t),
  scored on all seen classes (KRT's ``val_dataset_seen``, ``range(0, high_range)``), with its full
  ground truth on those classes. Each image counts once.
* **Per-session rows** (for the task x task matrix and forgetting): test images with at least one
  class of session j, scored on session j's classes (KRT's ``val_dataset_new`` when j is the
  current session).
* **Metrics**: mAP on the seen classes after every session, its mean over the sessions (KRT's
  "average mAP", ``mAP_meter.avg``: the field's headline), the last session's mAP, and CF1 / OF1
  after the last session at threshold 0.8 (KRT's ``calculate_metrics(..., thre=0.8)``).

How it maps onto the platform: test experience j holds the test images with a class of session j
(full labels); ``benchmark.seen_rows[j]`` marks those whose first session is j, so the evaluator's
'seen' union over j <= t is exactly KRT's seen test set, each image once. ``benchmark.joint_train``
is the union of the sessions' images with their full labels: the multitask upper bound trains on it
(not on the masked sessions, which would repeat images with partial labels).

Differences from KRT's code, on purpose: KRT widens the labels of its stored exemplars to every
later session's classes (``_before_task`` sets ``included_cats = range(old_low, num_classes)``), so
its memory gets ground truth that the sessions' data do not have; here a replay memory keeps the
targets a sample was trained with (label absence holds for the memory too). KRT's CF1 averages
per-class F1; ours is the harmonic mean of CP and CR (``cml_bench.metrics``, PROTOCOL.md).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from cml_bench.store import Store
from cml_bench.stream import BenchmarkMeta, MultiLabelBenchmark, MultiLabelTensorDataset, make_benchmark

KIND = "mlcil"
CF1_OF1_THRESHOLD = 0.8  # KRT's calculate_metrics(..., thre=0.8)
AVERAGE_METRIC = "avg_mAP"  # mAP on the seen classes, averaged over the sessions

# Published KRT results (Dong et al., ICCV 2023), the headline number of each stream as the field
# quotes it (COCO: average mAP over sessions; VOC: last mAP). The other cells of KRT's tables are left
# out rather than guessed. Per stream: metric -> percent (``avg_mAP``: average, ``mAP``: last session).
KRT_RESULTS: dict[str, dict[str, float]] = {
    "coco-b0c10": {"avg_mAP": 74.6},
    "coco-b40c10": {"avg_mAP": 77.8},
    "voc-b0c4": {"mAP": 84.2},
    "voc-b10c2": {"mAP": 80.9},
}


def session_classes(class_order: Sequence[int], base: int, increment: int) -> tuple[tuple[int, ...], ...]:
    """The class columns of each session, "B<base>-C<increment>" over ``class_order``.

    >>> session_classes(range(6), 0, 2)
    ((0, 1), (2, 3), (4, 5))
    >>> session_classes([5, 4, 3, 2, 1, 0], 4, 1)
    ((5, 4, 3, 2), (1,), (0,))
    """
    order = [int(c) for c in class_order]
    m = len(order)
    if len(set(order)) != m:
        raise ValueError(f"The class order lists a class twice: {order}.")
    if increment < 1 or base < 0:
        raise ValueError(f"benchmark.options: increment must be >= 1 and base >= 0, got base {base}, "
                         f"increment {increment}.")
    first = base if base > 0 else increment
    if first > m or (m - first) % increment:
        raise ValueError(f"B{base}-C{increment} does not split {m} classes into whole sessions: after a first "
                         f"session of {first}, {m - first} classes are left for sessions of {increment}.")
    cuts = [0, first] + list(range(first + increment, m + 1, increment))
    return tuple(tuple(order[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))


def session_rows(labels: np.ndarray, sessions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per session, the rows of ``labels`` ``[N, M]`` that carry at least one of its classes."""
    y = np.asarray(labels) > 0
    return [np.flatnonzero(y[:, list(cols)].any(axis=1)) for cols in sessions]


def first_session(labels: np.ndarray, sessions: Sequence[Sequence[int]]) -> np.ndarray:
    """int ``[N]``: the first session whose classes a row carries; -1 for a row with none."""
    y = np.asarray(labels) > 0
    first = np.full(len(y), -1, dtype=np.int64)
    for t in reversed(range(len(sessions))):
        first[y[:, list(sessions[t])].any(axis=1)] = t
    return first


def session_targets(labels: np.ndarray, rows: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """uint8 ``[len(rows), M]``: the rows' labels with every column outside ``classes`` set to 0."""
    out = np.zeros((len(rows), np.asarray(labels).shape[1]), dtype=np.uint8)
    cols = list(classes)
    out[:, cols] = np.asarray(labels)[rows][:, cols] > 0
    return out


ImageRows = Callable[[np.ndarray], Any]
"""``images(rows)`` -> the images of those rows, indexable like ``[len(rows), 3, H, W]`` uint8."""


def build_stream(name: str, class_names: Sequence[str], sessions: Sequence[Sequence[int]], *,
                 train_images: ImageRows, train_labels: np.ndarray, test_images: ImageRows,
                 test_labels: np.ndarray, buffer_size: int, store: Store | None = None) -> MultiLabelBenchmark:
    """The MLCIL benchmark over full-label train and test pools (see the module docstring).

    ``train_labels`` / ``test_labels`` are the complete multi-hot labels ``[N, M]`` of every pool
    image; ``train_images(rows)`` / ``test_images(rows)`` give the images of some rows; ``store`` is
    the prepared store they come from, if any.
    """
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    train_sets, test_sets = session_rows(train_labels, sessions), session_rows(test_labels, sessions)
    for t, (tr, te) in enumerate(zip(train_sets, test_sets)):
        if len(tr) == 0 or len(te) == 0:
            raise ValueError(f"MLCIL stream '{name}': session {t} (classes {list(sessions[t])}) has "
                             f"{len(tr)} training and {len(te)} test images; every session needs both.")
    train = [MultiLabelTensorDataset(train_images(rows), session_targets(train_labels, rows, cols))
             for rows, cols in zip(train_sets, sessions)]
    test = [MultiLabelTensorDataset(test_images(rows), (test_labels[rows] > 0).astype(np.uint8))
            for rows in test_sets]
    first = first_session(test_labels, sessions)
    seen_rows = [np.flatnonzero(first[rows] == t) for t, rows in enumerate(test_sets)]
    union = np.flatnonzero(first_session(train_labels, sessions) >= 0)
    joint = MultiLabelTensorDataset(train_images(union), (train_labels[union] > 0).astype(np.uint8))
    meta = BenchmarkMeta(
        name=name,
        class_names=tuple(class_names),
        task_classes=tuple(tuple(int(c) for c in s) for s in sessions),
        groups={},
        task_ids=tuple(range(len(sessions))),
        train_class_counts=tuple(int(c) for c in (train_labels[union] > 0).sum(axis=0)),
        default_buffer_size=int(buffer_size),
        kind=KIND,
    )
    return make_benchmark(train, test, meta, store=store, seen_rows=seen_rows, joint_train=joint)


def session_average(rows: Sequence[dict[str, Any]], num_sessions: int, metric: str = "mAP") -> float:
    """Mean over sessions of ``metric`` on the seen classes (``eval_on="seen"``, all classes) after
    each session; NaN unless there is one value for every session (a joint run has a single one)."""
    per_session = {r["trained_through_task"]: r["value"] for r in rows
                   if r["eval_on"] == "seen" and r["group"] == "all" and r["metric"] == metric}
    if sorted(per_session) != list(range(num_sessions)):
        return float("nan")
    return float(np.mean([per_session[t] for t in range(num_sessions)]))
