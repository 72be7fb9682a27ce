"""ExStream (Hayes, Cahill, Kanan, "Memory Efficient Experience Replay for Streaming Learning",
ICRA 2019): per-class buffers of fixed capacity; when a class's buffer is full, its two closest
points are merged into their count-weighted mean, so near-duplicates collapse first and the
buffer covers the class's feature space with prototypes.

The original stores prototypes in the feature space of a fixed network and replays prototypes. An
image-replay method needs images, so here (the adaptation for this platform):

- A point is a stored sample: its slot holds an image (the caller's payload) and the buffer holds
  the point's position in feature space (the key: the backbone's pooled features of the image when
  it arrived; ``strategies/exstream.py``) and its count (how many stream samples it stands for).
- Merging points a and b sets the position to (n_a x_a + n_b x_b) / (n_a + n_b) and the count to
  n_a + n_b; the merged point keeps the image and labels of the heavier member (ties: the one
  already stored, else the lower slot); the other member's slot is freed. Positions are not
  recomputed as the backbone trains (the paper's network is fixed).

Multi-label adaptation: a sample belongs to ONE class buffer, that of its rarest label (fewest
stream samples so far; ties: the lowest index), so a rare label's samples are not merged away
under a frequent co-occurring label. Samples without labels are stored only while the buffer
fills and are the first to go (a group of capacity 0).

Capacities: all B slots are shared; a class's capacity is B // (number of classes seen so far), at
least 1, so it shrinks as classes arrive, and classes above it give back slots lazily:

1. while the buffer has free slots, every sample is stored in the next one (count 1);
2. once full, a sample of class y with fewer points than its capacity takes a slot from the group
   furthest above its capacity (count minus capacity; ties: the lowest class), which merges its
   two closest points (or gives up its only point); label-less points go before any class's;
3. a sample of class y at or above capacity is merged: among y's points and the new one, the two
   closest are merged; if the new one is among them it joins a stored point (no slot, ``None``),
   otherwise it takes the slot the merge freed.

Cost per sample: the pairwise distances of the points of one group (O(k^2 D) for k points, k about
B / classes once the buffer is balanced; more while one class still holds most of the buffer).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cml_bench.buffers.base import KeyedBuffer, SlotKeys, label_lists


def closest_pair(points: np.ndarray) -> tuple[int, int]:
    """Indices (a < b) of the two closest rows (Euclidean; ties: the first pair in row order)."""
    sq = (points * points).sum(1)
    dist = sq[:, None] + sq[None, :] - 2.0 * points @ points.T
    dist[np.tril_indices(len(points))] = np.inf
    a, b = np.unravel_index(int(np.argmin(dist)), dist.shape)
    return int(a), int(b)


class ExStreamBuffer(KeyedBuffer):
    """ExStream replay buffer; keys are per-sample feature vectors (see the module docstring).

    Args:
        capacity: number of slots B.
        num_classes: number of classes M.
        seed: seed of the buffer's random generator (ExStream itself draws nothing; used by ``sample``).
    """

    key_kind = "features"

    def __init__(self, capacity: int, num_classes: int, seed: int = 0) -> None:
        super().__init__(capacity, num_classes, seed)
        self._points: np.ndarray | None = None  # [B, D] positions, allocated on the first key
        self._weight = np.zeros(capacity)  # stream samples each point stands for
        self._group = np.full(capacity, -1, dtype=np.int64)  # class of each point; M: no labels

    # ------------------------------------------------------------------ reading
    @property
    def weights(self) -> np.ndarray:
        """float [len(self)]: the count of each filled slot's point."""
        return self._weight[: self._filled].copy()

    @property
    def groups(self) -> np.ndarray:
        """int [len(self)]: the class buffer of each filled slot (num_classes: no labels)."""
        return self._group[: self._filled].copy()

    @property
    def points(self) -> np.ndarray:
        """float [len(self), D]: the feature-space position of each filled slot's point."""
        if self._points is None:
            return np.zeros((0, 0))
        return self._points[: self._filled].copy()

    def class_capacity(self) -> int:
        """Slots per class now: B // classes seen so far, at least 1."""
        return max(1, self._capacity // max(1, sum(n > 0 for n in self._n)))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "points": self.points, "weights": self.weights, "groups": self.groups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        points = np.asarray(state.get("points", np.zeros((0, 0))), dtype=float)
        weights = np.asarray(state.get("weights", ()), dtype=float)
        groups = np.asarray(state.get("groups", ()), dtype=np.int64)
        f = self._filled
        if weights.shape != (f,) or groups.shape != (f,) or (f and (points.ndim != 2 or len(points) != f)):
            raise ValueError("Buffer state has points / weights / groups that do not match its slots.")
        self._points = None
        if f:
            self._points = np.zeros((self._capacity, points.shape[1]))
            self._points[:f] = points
        self._weight[:] = 0.0
        self._weight[:f] = weights
        self._group[:] = -1
        self._group[:f] = groups

    # ------------------------------------------------------------------ deciding
    def _offer_keyed(self, rows: np.ndarray, keys: np.ndarray,
                     slot_keys: SlotKeys | None) -> list[int | None]:
        if self._points is None:
            self._points = np.zeros((self._capacity, keys.shape[1]))
        elif keys.shape[1] != self._points.shape[1]:
            raise ValueError(f"Expected keys of dimension {self._points.shape[1]} (as before), got {keys.shape[1]}.")
        out: list[int | None] = []
        for row, labels, key in zip(rows, label_lists(rows), keys):
            group = min(labels, key=lambda c: (self._n[c], c)) if labels else self._num_classes
            for c in labels:  # the capacity counts this sample's classes as seen
                self._n[c] += 1
            slot = self._decide(group, key)
            if slot is not None:
                self._write(slot, row, labels)
                self._points[slot] = key
                self._weight[slot] = 1.0
                self._group[slot] = group
            self._n_seen += 1
            out.append(slot)
        return out

    def _decide(self, group: int, key: np.ndarray) -> int | None:
        if self._filled < self._capacity:
            return self._filled
        if group == self._num_classes:
            return None  # a sample without labels never displaces a labelled one
        cap = self.class_capacity()
        counts = np.bincount(self._group[: self._filled], minlength=self._num_classes + 1)
        if counts[group] >= cap:
            members = np.flatnonzero(self._group == group)
            a, b = closest_pair(np.vstack([self._points[members], key]))
            if b == len(members):  # the new sample is one of the two: it joins a stored point
                slot = int(members[a])
                w = self._weight[slot]
                self._points[slot] = (w * self._points[slot] + key) / (w + 1.0)
                self._weight[slot] = w + 1.0
                return None
            return self._merge(int(members[a]), int(members[b]))
        if counts[self._num_classes]:
            donor = self._num_classes  # label-less points go first
        else:
            excess = counts - cap
            excess[group] = np.iinfo(np.int64).min
            donor = int(np.argmax(excess))
            # the buffer is full, so some class is above its capacity, unless there are more classes
            # than slots (capacity 1): then a class with one point gives it up
            assert excess[donor] >= 0
        members = np.flatnonzero(self._group == donor)
        if len(members) == 1:
            return int(members[0])
        a, b = closest_pair(self._points[members])
        return self._merge(int(members[a]), int(members[b]))

    def _merge(self, a: int, b: int) -> int:
        """Merge the points in slots a < b into the heavier one's slot; return the freed slot."""
        keep, free = (b, a) if self._weight[b] > self._weight[a] else (a, b)
        wk, wf = self._weight[keep], self._weight[free]
        self._points[keep] = (wk * self._points[keep] + wf * self._points[free]) / (wk + wf)
        self._weight[keep] = wk + wf
        return free
