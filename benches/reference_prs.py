"""A deliberately plain PRS, written from shared/PROTOCOL.md with Python lists, dicts and loops.

It is the reference the vectorised ``cml_bench.buffers.PRSBuffer`` is checked against: every
quantity is computed from scratch, per class and per candidate slot, the way the protocol says it.
It makes the same interpretation choices as ``cml_bench/buffers/prs.py`` (see that docstring):
n_c excludes the sample being offered; "present" = carried by at least one buffer slot; an unseen
label contributes 1 to the admission sum; the distance after a removal uses the recomputed L and
the classes present before the removal; ties within 1e-9 (relative) go to the lowest slot; random
draws: one uniform for admission once full, one uniform for the class to evict from; nothing is
admitted once full by a sample without labels or while no class is in the buffer.
"""
from __future__ import annotations

import math

import numpy as np

TIE_RTOL = 1e-9


class ReferencePRS:
    """Slow PRS with the buffer interface the tests need: offer, slot_labels, class_counts."""

    def __init__(self, capacity: int, num_classes: int, seed: int = 0, rho: float = -0.03) -> None:
        self.capacity = capacity
        self.num_classes = num_classes
        self.rho = rho
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.slots: list[set[int]] = []  # slot index -> set of classes of the sample stored there
        self.n = {c: 0 for c in range(num_classes)}  # stream samples carrying c so far
        self.n_seen = 0

    # --------------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.slots)

    def slots_of_class(self) -> dict[int, int]:
        counts = {c: 0 for c in range(self.num_classes)}
        for labels in self.slots:
            for c in labels:
                counts[c] += 1
        return counts

    @property
    def class_counts(self) -> np.ndarray:
        counts = self.slots_of_class()
        return np.array([counts[c] for c in range(self.num_classes)], dtype=np.int64)

    @property
    def slot_labels(self) -> np.ndarray:
        out = np.zeros((len(self.slots), self.num_classes), dtype=bool)
        for i, labels in enumerate(self.slots):
            for c in labels:
                out[i, c] = True
        return out

    # --------------------------------------------------------------------- the algorithm
    def target_shares(self, counts: dict[int, int]) -> dict[int, float]:
        """p_c = n_c^rho / sum over present classes k of n_k^rho, for every seen class c."""
        z = 0.0
        for c in range(self.num_classes):
            if counts[c] > 0:
                z += self.n[c] ** self.rho
        shares = {}
        for c in range(self.num_classes):
            if self.n[c] > 0:
                shares[c] = self.n[c] ** self.rho / z
        return shares

    def offer(self, labels) -> int | None:
        label_set = [c for c in range(self.num_classes) if labels[c]]
        slot = self.decide(label_set)
        self.n_seen += 1
        for c in label_set:
            self.n[c] += 1
        return slot

    def decide(self, label_set: list[int]) -> int | None:
        if len(self.slots) < self.capacity:
            self.slots.append(set(label_set))
            return len(self.slots) - 1

        counts = self.slots_of_class()
        u = self.rng.random()
        if not label_set:
            return None
        if all(counts[c] == 0 for c in range(self.num_classes)):
            return None  # no class in the buffer: nothing could be evicted
        shares = self.target_shares(counts)

        # admission probability s = sum_k w_k * min(1, B p_k / n_k), w = softmax(-n_k)
        smallest = min(self.n[k] for k in label_set)
        weights = [math.exp(-(self.n[k] - smallest)) for k in label_set]
        s = 0.0
        for k, weight in zip(label_set, weights):
            if self.n[k] == 0:
                term = 1.0
            else:
                term = min(1.0, self.capacity * shares[k] / self.n[k])
            s += weight / sum(weights) * term
        if not u < s:
            return None

        # excess of each present class over its target
        total = sum(counts.values())
        present = [c for c in range(self.num_classes) if counts[c] > 0]
        delta = {c: counts[c] - shares[c] * total for c in present}

        # class y ~ softmax(delta)
        top = max(delta.values())
        exps = [math.exp(delta[c] - top) for c in present]
        v = self.rng.random() * sum(exps)
        y = present[-1]
        running = 0.0
        for c, e in zip(present, exps):
            running += e
            if v < running:
                y = c
                break

        # slots carrying y with the fewest under-represented classes
        under = {c for c in present if delta[c] <= 0}
        candidates = [i for i, labels in enumerate(self.slots) if y in labels]
        fewest = min(len(self.slots[i] & under) for i in candidates)
        candidates = [i for i in candidates if len(self.slots[i] & under) == fewest]

        # remove each candidate in turn and measure the distance to the targets
        distances = []
        for i in candidates:
            removed = self.slots[i]
            new_total = total - len(removed)
            distance = 0.0
            for c in present:
                after = counts[c] - (1 if c in removed else 0)
                distance += abs(after - shares[c] * new_total)
            distances.append(distance)
        best = min(distances)
        for i, distance in zip(candidates, distances):
            if distance <= best + TIE_RTOL * max(1.0, abs(best)):
                self.slots[i] = set(label_set)
                return i
        raise AssertionError("unreachable: the minimum is always within tolerance of itself")
