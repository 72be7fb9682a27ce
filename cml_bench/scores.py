"""A run's final per-image test scores (``scores.npz``): what the leaderboard's bootstrap resamples.

After the last task the evaluator scores the union of every task's test set on all seen classes
(``eval_on = seen``); :class:`TestScores` keeps those scores with everything needed to recompute
the run's metrics on a resampled test set without the benchmark: the targets, which test set and
row each image came from (so two runs can be checked to hold the same images in the same order
before they are paired), the columns of each class group as evaluated, the threshold, the metric
family and the evaluation ignore mask (VOC's difficult pairs), if any.

File format (``numpy.savez``, uncompressed so its size is known in advance; loaded with
``allow_pickle=False``, so a planted file cannot run code):

- ``scores``: float16 ``[N, M]`` sigmoid scores;
- ``targets``: uint8 ``[N, ceil(M / 8)]``, the 0/1 targets packed along the classes
  (``numpy.packbits(axis=1)``); ``ignore``: the same for the ignore mask (only when there is one);
- ``task``: int16 ``[N]``, the test task of each image; ``index``: int32 ``[N]``, its row in that
  task's test set;
- ``group_names``: str ``[G]``; ``group_<name>``: int16 column indices of each group (``all`` first);
- ``threshold``: float64 scalar; ``kind``: str scalar (``continual`` | ``generic`` | ``attribute``).

Size: ``N * (2 M + ceil(M / 8) + 6)`` bytes plus a few kB of headers and group lists
(:func:`expected_size`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

SCORES_FILE = "scores.npz"


@dataclass
class TestScores:
    """The final per-image scores of one run on the union of its test sets (see the module docstring)."""

    __test__ = False  # not a pytest test class, whatever its name

    scores: np.ndarray  # float [N, M]
    targets: np.ndarray  # uint8 0/1 [N, M]
    task: np.ndarray  # int [N]
    index: np.ndarray  # int [N]
    groups: dict[str, list[int]]  # group name -> evaluated columns ("all" first)
    threshold: float
    kind: str
    ignore: np.ndarray | None = None  # bool [N, M] or None

    def same_images(self, other: "TestScores") -> bool:
        """True when ``other`` holds the same test images, in the same order, with the same targets."""
        return (self.scores.shape == other.scores.shape and np.array_equal(self.task, other.task)
                and np.array_equal(self.index, other.index) and np.array_equal(self.targets, other.targets))


def from_evaluation(scores: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                    ignore: Sequence[np.ndarray | None], tasks: Sequence[int],
                    groups: Mapping[str, Sequence[int]], threshold: float, kind: str) -> TestScores:
    """Assemble :class:`TestScores` from one evaluation's per-task arrays (in test-task order)."""
    task = np.concatenate([np.full(len(s), t, dtype=np.int16) for s, t in zip(scores, tasks)])
    index = np.concatenate([np.arange(len(s), dtype=np.int32) for s in scores])
    union_ignore = None if all(m is None for m in ignore) else np.concatenate(
        [np.zeros(t.shape, dtype=bool) if m is None else m for m, t in zip(ignore, targets)])
    return TestScores(np.concatenate(scores), np.concatenate(targets).astype(np.uint8), task, index,
                      {name: [int(c) for c in cols] for name, cols in groups.items()}, float(threshold),
                      kind, union_ignore)


def save_scores(path: str | Path, s: TestScores) -> None:
    """Write ``s`` to ``path`` in the format of the module docstring."""
    arrays = {"scores": s.scores.astype(np.float16), "targets": np.packbits(s.targets.astype(bool), axis=1),
              "task": s.task.astype(np.int16), "index": s.index.astype(np.int32),
              "group_names": np.array(list(s.groups)), "threshold": np.float64(s.threshold),
              "kind": np.array(s.kind)}
    arrays.update({f"group_{name}": np.asarray(cols, dtype=np.int16) for name, cols in s.groups.items()})
    if s.ignore is not None:
        arrays["ignore"] = np.packbits(s.ignore.astype(bool), axis=1)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_scores(path: str | Path) -> TestScores:
    """Read a ``scores.npz``; ValueError naming the file if it is not one (never unpickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            m = z["scores"].shape[1]
            unpack = lambda a: np.unpackbits(a, axis=1, count=m)  # noqa: E731
            names = [str(n) for n in z["group_names"]]
            return TestScores(z["scores"].astype(np.float32), unpack(z["targets"]), z["task"].astype(np.int64),
                              z["index"].astype(np.int64),
                              {n: z[f"group_{n}"].astype(int).tolist() for n in names},
                              float(z["threshold"]), str(z["kind"]),
                              unpack(z["ignore"]).astype(bool) if "ignore" in z.files else None)
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"{path} is not a readable scores.npz ({type(exc).__name__}: {exc}).") from None


def expected_size(n_images: int, n_classes: int) -> int:
    """Bytes of the arrays of a ``scores.npz`` of ``n_images`` x ``n_classes`` (headers excluded)."""
    return n_images * (2 * n_classes + -(-n_classes // 8) + 2 + 4)
