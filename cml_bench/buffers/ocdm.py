"""Optimizing Class Distribution in Memory (OCDM; Liang and Li, "Optimizing Class Distribution in
Memory for Multi-Label Online Continual Learning", arXiv 2209.11469, 2022).

The memory update as an optimisation problem: when a batch of r stream samples arrives at a full
memory of B samples, keep the B of the B + r candidates (memory and batch together) whose label
distribution is closest to a target distribution, solved greedily: r times, drop the candidate
whose removal leaves the smallest divergence. Incoming samples that survive take the slots of the
stored samples that were dropped. Labels only; no model.

- Label distribution of a set: q_c = C_c / L, C_c = samples of the set carrying class c,
  L = sum_c C_c (label occurrences), as PRS counts them (a sample with k labels counts k times).
- Target: p_c = n_c^rho / sum_k n_k^rho over the classes seen in the stream so far (n_c > 0), n_c
  counting the incoming batch too; rho = 0 is uniform over seen classes, rho < 0 favours rare
  classes. The strategy uses the benchmark's rho (``BenchmarkMeta.memory_rho``) by default, so OCDM
  and PRS aim at the same target and differ only in how they reach it.
- Divergence: KL(q || p) = sum_c q_c log(q_c / p_c) (finite: every class in memory was seen).
- Ties (candidates with the same label set leave the same divergence): one is drawn uniformly with
  the buffer's generator (the paper does not say; always the first would age the low slots).
- While the memory has free slots every sample is stored in the next one, as in the paper.
- The rows of one ``offer_batch`` call are decided together (``decides_per_batch``): this is the
  paper's batch update; ``offer`` is the same with r = 1.

Multi-label adaptation: none needed; the method is designed for multi-label streams.

Cost per batch: one matrix-vector product over the B + r candidates and M classes, then r greedy
steps of O(B + r) each. The divergence after removing candidate j is (S - T - Y_j . d) / L_j' -
log L_j', with S = sum C log C, T = sum C log p, d_c the fall of C_c log C_c - C_c log p_c when C_c
drops by one, L_j' = L - |Y_j|; removing a sample changes d only for its own classes, so Y . d is
updated from those columns. ``tests/bench_prs_buffer.py`` prints
the figure per sample on the COCOseq label stream next to PRS.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from cml_bench.buffers.base import ReplayBuffer, label_lists

TIE_RTOL = 1e-12
"""Divergences within this relative distance of the minimum count as tied."""


def xlogx(x: np.ndarray) -> np.ndarray:
    """x log x elementwise, 0 for x <= 0 (counts)."""
    out = np.zeros_like(x, dtype=float)
    pos = x > 0
    out[pos] = x[pos] * np.log(x[pos])
    return out


def target_distribution(n_c: Any, rho: float) -> np.ndarray:
    """float [M]: p_c = n_c^rho / sum_k n_k^rho over the classes seen so far (n_c > 0), 0 elsewhere;
    the target of OCDM and PRS (PRS restricts the sum to the classes present in its memory)."""
    n = np.asarray(n_c, dtype=float)
    p = np.zeros(len(n))
    seen = n > 0
    if seen.any():
        w = n[seen] ** rho
        p[seen] = w / w.sum()
    return p


def check_rho(rho: Any) -> float:
    if isinstance(rho, (bool, np.bool_)) or not isinstance(rho, (int, float, np.integer, np.floating)):
        raise ValueError(f"Expected argument `rho` to be a real number, but got {rho!r}.")
    if not math.isfinite(rho):
        raise ValueError(f"Expected argument `rho` to be finite, but got {rho}.")
    return float(rho)


class OCDMBuffer(ReplayBuffer):
    """OCDM replay buffer over multi-hot labels (see the module docstring).

    Args:
        capacity: number of slots B.
        num_classes: number of classes M.
        seed: seed of the generator that breaks ties.
        rho: power of the target distribution n_c^rho (0: uniform over the seen classes).
    """

    decides_per_batch = True

    def __init__(self, capacity: int, num_classes: int, seed: int = 0, rho: float = -0.03) -> None:
        super().__init__(capacity, num_classes, seed)
        self.rho = check_rho(rho)
        self._cols = np.zeros((num_classes, capacity))  # the slot labels as floats, class-major
        self._sizes = np.zeros(capacity)  # labels per slot

    def _extra_state(self) -> dict[str, Any]:
        return {"rho": self.rho}

    def target(self) -> np.ndarray:
        """float [M]: the target distribution p over the classes seen so far (0 elsewhere)."""
        return target_distribution(self._n, self.rho)

    def _offer_rows(self, rows: np.ndarray) -> list[int | None]:
        labels = label_lists(rows)
        out: list[int | None] = []
        i = 0
        while i < len(rows) and self._filled < self._capacity:  # free slots: store in order
            slot = self._filled
            self._write(slot, rows[i], labels[i])
            self._count(labels[i])
            out.append(slot)
            i += 1
        if i == len(rows):
            return out
        rest, rest_labels = rows[i:], labels[i:]
        for lab in rest_labels:  # the batch is part of the stream the target is computed from
            self._count(lab)
        dropped = self._greedy_removal(rest)
        freed = sorted(j for j in dropped if j < self._capacity)
        kept = [k for k in range(len(rest)) if self._capacity + k not in dropped]
        assert len(freed) == len(kept), (freed, kept)
        decisions: list[int | None] = [None] * len(rest)
        for slot, k in zip(freed, kept):
            self._write(slot, rest[k], rest_labels[k])
            decisions[k] = slot
        return out + decisions

    def _count(self, labels: list[int]) -> None:
        self._n_seen += 1
        for c in labels:
            self._n[c] += 1

    def _write(self, slot: int, row: np.ndarray, labels: list[int]) -> None:
        super()._write(slot, row, labels)
        self._cols[:, slot] = row
        self._sizes[slot] = len(labels)

    def _after_load(self) -> None:
        self._cols[:] = self._slots.T
        self._sizes[:] = self._slots.sum(1)

    def _greedy_removal(self, incoming: np.ndarray) -> set[int]:
        """Indices (0..B-1 slots, B + k incoming row k) of the len(incoming) candidates to drop."""
        b = self._capacity
        y_in = incoming.astype(float)
        sizes = np.concatenate([self._sizes, y_in.sum(1)])
        counts = self._class_counts + y_in.sum(0)
        total = float(counts.sum())
        p = self.target()
        logp = np.zeros_like(p)
        logp[p > 0] = np.log(p[p > 0])
        xl = xlogx(counts)
        d = xl - xlogx(counts - 1) - logp  # how much S - T falls when one sample carrying c leaves
        s_minus_t = float(xl.sum() - counts.dot(logp))
        cols_in = y_in.T.copy()
        v = np.concatenate([d @ self._cols, d @ cols_in])  # the fall of S - T per candidate
        alive = np.ones(len(sizes), dtype=bool)
        dropped: set[int] = set()
        for _ in range(len(incoming)):
            left = total - sizes
            if total == 0:  # no labels at all: every removal leaves the same (empty) distribution
                kl = np.where(alive, 0.0, np.inf)
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    kl = (s_minus_t - v) / left - np.log(left)  # dropped ones: v = -inf, so +inf
                if sizes.max() >= total:
                    kl[left <= 0] = np.inf  # removing the last labels leaves no distribution
            best = float(kl.min())
            tied = np.flatnonzero(kl <= best + TIE_RTOL * max(1.0, abs(best)))
            j = int(tied[0] if len(tied) == 1 else tied[self.rng.integers(len(tied))])
            assert alive[j], "at least B + 1 candidates are alive at every step"
            alive[j] = False
            dropped.add(j)
            v[j] = -np.inf
            # removing j changes the counts, hence d, of its own classes only
            classes = (self._cols[:, j] if j < b else cols_in[:, j - b]).nonzero()[0]
            if len(classes):
                s_minus_t -= float(d[classes].sum())
                total -= float(len(classes))
                counts[classes] -= 1
                new_xl = xlogx(counts[classes])
                new_d = new_xl - xlogx(counts[classes] - 1) - logp[classes]
                change = new_d - d[classes]
                d[classes] = new_d
                v[:b] += change @ self._cols[classes]
                v[b:] += change @ cols_in[classes]
        return dropped

    def divergence(self) -> float:
        """KL(q || p) of the memory's label distribution q from the target p (nan if no labels)."""
        counts = self._class_counts
        if counts.sum() == 0:
            return float("nan")
        q = counts / counts.sum()
        p = self.target()
        held = q > 0
        return float((q[held] * np.log(q[held] / p[held])).sum())
