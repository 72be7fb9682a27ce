"""Partitioning reservoir sampling (PRS; Kim, Jeong, Kim, "Imbalanced Continual Learning with
Partitioning Reservoir Sampling", ECCV 2020), vectorised over the buffer slots.

The algorithm in words (``shared/PROTOCOL.md``). B = capacity, n_c = stream samples that carried
class c so far, slots_c = buffer slots whose sample carries c, L = sum_c slots_c (total label
occurrences in the buffer), rho = power of allocation (COCOseq -0.03, NUS-WIDEseq 0.02).

1. Target share of class c: p_c = n_c^rho / Z, Z = sum of n_k^rho over the classes present.
2. While the buffer has free slots, every sample is stored in the next free slot.
3. Once full, a sample with label set K is admitted with probability
   s = sum_{k in K} w_k * min(1, B * p_k / n_k), with w = softmax(-n_k over k in K).
4. If admitted, a victim slot is chosen: delta_c = slots_c - p_c * L for the present classes; a class
   y is drawn with probability softmax(delta); among the slots carrying y keep those carrying the
   fewest under-represented classes (delta_c <= 0); among those evict the slot whose removal leaves
   the smallest distance D = sum_c |slots'_c - p_c * L'| (slots' and L' after the removal). The new
   sample takes the evicted slot.
5. After each sample (admitted or not) n_c += 1 for each of its labels; targets are recomputed from
   the new counts at the next offer.

Interpretation choices (identical in ``tests/reference_prs.py``; none changes the algorithm above):

- n_c excludes the sample being offered: steps 1-4 use the counts of the samples seen BEFORE it and
  step 5 adds it afterwards, as the public release does (its multi-label reservoir, ``PRS_mlab`` in
  github.com/cdjkim/PRS, updates the stream statistics after the decision; "the release" below).
- "Present" means present in the buffer (slots_c > 0), as PROTOCOL.md says and as the release does.
  Z, delta, the softmax over delta and the distance D run over these classes. Until the buffer is
  full this is exactly the set of classes seen so far (n_c > 0); the two differ only for a class that
  was evicted completely or that first appears after the buffer filled. A present class always has
  n_c >= 1, so n_c^rho is finite.
- p_k for a label k of the incoming sample that is not present (but seen, n_k > 0) is n_k^rho / Z with
  the same Z (the release kept a stale share from the last time the class was present; we recompute).
  A label never seen before (n_k = 0) contributes min(1, B p_k / n_k) := 1 (it is as rare as can be;
  the release does the same), and its softmax weight uses -n_k = 0.
- D after a removal: L' = L - |labels of the removed slot| is recomputed; the shares p_c stay those of
  step 1 (the victim choice does not change n); the sum runs over the classes present BEFORE the
  removal, so a removal that empties a class pays |0 - p_c * L'| for it (the release dropped such a
  class from the sum, which rewarded emptying it).
- Ties: D values within 1e-9 (relative) of the minimum count as equal and the lowest slot index wins
  (the release kept the first minimum in slot order). Removing one occurrence of an over-represented
  class lowers D by exactly 1, so exact ties between different label sets are common; the tolerance
  keeps rounding noise from deciding them.
- A sample with no labels: stored like any other while the buffer fills; once full, K is empty, s = 0,
  so it is never admitted. An empty slot-label row carries no class, so it can never be evicted (it
  stays until the end); the benchmark streams have no such samples. If no class is present at all
  (every slot holds a label-less sample), nothing can be evicted, so nothing is admitted.
- Random draws, in this order, from ``self.rng`` once the buffer is full: one uniform u for admission
  (admit iff u < s; drawn even when s is 0 or 1); if admitted, one uniform v for the class y (inverse
  CDF of softmax(delta) over present classes in increasing class index). Nothing is drawn while the
  buffer fills. The reference draws identically, so with one seed both make the same decisions.

Cost. Slot counts per class, n_c, n_c^rho and the presence mask are kept incrementally (Python
touches only the labels of the incoming and of the evicted sample). The admission test is one dot
product over the classes plus arithmetic over the sample's own labels. An eviction works on arrays:
softmax over [M]; the slots carrying y (a row of a class-major bool copy of the slot matrix); the
under-represented counts of those slots (one matrix-vector product); and, unless every remaining
slot holds exactly {y}, the distances of all of them at once via
D_i = A(r_i) + x_i . G(r_i) (one matrix product with the [max r + 1, M] table G). No Python loop runs
over candidate slots or over classes. About 6 µs per offer once full on COCOseq with B = 2000,
M = 70 (``tests/bench_prs_buffer.py``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from cml_bench.buffers.base import ReplayBuffer

TIE_RTOL = 1e-9
"""Relative tolerance under which two distances D count as tied (lowest slot then wins)."""


class PRSBuffer(ReplayBuffer):
    """PRS replay buffer over multi-hot labels (see the module docstring for every choice).

    Args:
        capacity: number of slots B.
        num_classes: number of classes M.
        seed: seed of the buffer's random generator.
        rho: power of allocation; negative favours rare classes (COCOseq -0.03, NUS-WIDEseq 0.02).
    """

    def __init__(self, capacity: int, num_classes: int, seed: int = 0, rho: float = -0.03) -> None:
        super().__init__(capacity, num_classes, seed)
        if isinstance(rho, (bool, np.bool_)) or not isinstance(rho, (int, float, np.integer, np.floating)):
            raise ValueError(f"Expected argument `rho` to be a real number, but got {rho!r}.")
        if not math.isfinite(rho):
            raise ValueError(f"Expected argument `rho` to be finite, but got {rho}.")
        self.rho = float(rho)
        # caches kept in step with the base class's slots and counts (rebuilt by _after_load)
        self._powers = np.zeros(num_classes)  # n_c^rho for seen classes, 0 for unseen ones
        self._present = np.zeros(num_classes)  # 1.0 where slots_c > 0, else 0.0
        self._slots_f = np.zeros((capacity, num_classes))  # the slot matrix as float (for BLAS)
        self._slots_t = np.zeros((num_classes, capacity), dtype=bool)  # class -> its slots
        self._sizes_grid = np.arange(num_classes + 1, dtype=float)[:, None]  # label counts r, column
        self._row_index = np.arange(capacity)

    # ------------------------------------------------------------------ cache maintenance
    def _on_write(self, slot: int, old: list[int], new: list[int]) -> None:
        counts = self._class_counts
        for c in old:
            self._slots_f[slot, c] = 0.0
            self._slots_t[c, slot] = False
            if counts[c] == 0:
                self._present[c] = 0.0
        for c in new:
            self._slots_f[slot, c] = 1.0
            self._slots_t[c, slot] = True
            self._present[c] = 1.0

    def _on_counted(self, labels: list[int]) -> None:
        for c in labels:
            self._powers[c] = float(self._n[c]) ** self.rho

    def _after_load(self) -> None:
        # the same scalar power as _on_counted, so a restored buffer computes bit-identical shares
        self._powers[:] = [float(n) ** self.rho if n > 0 else 0.0 for n in self._n]
        self._present[:] = self._class_counts > 0
        self._slots_f[:] = self._slots
        self._slots_t[:] = self._slots.T

    def _extra_state(self) -> dict[str, Any]:
        return {"rho": self.rho}

    def targets(self) -> tuple[np.ndarray, np.ndarray]:
        """(present [M] bool, p [M] float): the classes present and the target shares of step 1.

        ``p`` is n_c^rho / Z for every seen class (present or not) and 0 for unseen classes.
        """
        z = float(self._powers.dot(self._present))
        return self._present > 0, (self._powers / z if z > 0 else self._powers.copy())

    # ------------------------------------------------------------------ the decision
    def _choose_slot(self, row: np.ndarray, labels: list[int]) -> int | None:
        if self._filled < self._capacity:
            return self._filled
        # step 3: admission, s = sum_k w_k min(1, B p_k / n_k) over the sample's own labels K
        u = self.rng.random()
        if not labels:
            return None
        z = float(self._powers.dot(self._present))  # Z = sum of n_k^rho over the present classes
        if z == 0.0:  # no class present: no slot could be evicted
            return None
        n = self._n
        smallest = min([n[c] for c in labels])
        num = den = 0.0
        for c in labels:
            w = math.exp(smallest - n[c])  # softmax(-n_k), shifted for stability
            den += w
            if n[c] == 0:
                num += w  # a label never seen before: min(1, B p_k / n_k) := 1
            else:
                num += w * min(1.0, self._capacity * (float(self._powers[c]) / z) / n[c])
        if not u < num / den:
            return None
        return self._victim(z)

    def _victim(self, z: float) -> int:
        """Step 4: the slot to evict (the buffer is full; Z = sum of n_k^rho over present k)."""
        present = self._present
        p = self._powers * present
        p /= z  # target shares of the present classes, 0 elsewhere
        delta = self._class_counts - p * self._total  # excess over target; 0 for absent classes
        # y ~ softmax(delta) over the present classes, by inverse CDF in increasing class index.
        # Over the present classes delta sums to 0, so max(delta) >= 0 is a present class's.
        e = np.exp(delta - delta[delta.argmax()])
        e *= present
        cdf = np.add.accumulate(e)
        y = int(cdf.searchsorted(self.rng.random() * cdf[-1], side="right"))
        if y >= self._num_classes:  # the draw rounded up to the total: the last present class
            y = int(present.nonzero()[0][-1])
        # slots carrying y; keep those carrying the fewest under-represented classes (delta <= 0;
        # absent classes also pass the test, but no slot carries them)
        cand = self._slots_t[y].nonzero()[0]
        sizes = self._slot_sizes.take(cand)
        r_max = int(sizes[sizes.argmax()])
        if cand.size == 1 or r_max == 1:  # all hold exactly {y}: all equal, the lowest slot wins
            return int(cand[0])
        rows = self._slots_f.take(cand, axis=0)
        n_under = rows.dot((delta <= 0).astype(float))
        keep = n_under == n_under[n_under.argmin()]
        kept_sizes = sizes[keep]
        if kept_sizes[kept_sizes.argmax()] == 1:  # the kept slots all hold exactly {y}: likewise
            return int(cand[keep.argmax()])
        # distance after removing slot i (r_i labels, row x_i), with L' = L - r_i:
        #   D_i = sum_c |slots_c - x_ic - p_c L'| = sum_c |b_c(r_i) - x_ic|,  b_c(r) = delta_c + p_c r
        #       = A(r_i) + x_i . G(r_i),  A(r) = sum_c |b_c(r)|,  G_c(r) = |b_c(r) - 1| - |b_c(r)|
        # (classes not present have b = 0 and are carried by no slot, so they add nothing).
        b = self._sizes_grid[: r_max + 1] * p  # [R, M]: rows r = 0..max r_i
        b += delta
        abs_b = np.abs(b)
        g = np.abs(b - 1.0)
        g -= abs_b
        dist = rows.dot(g.T)[self._row_index[: cand.size], sizes]
        dist += abs_b.sum(axis=1).take(sizes)
        dist[~keep] = np.inf
        best = float(dist[dist.argmin()])
        tied = dist <= best + TIE_RTOL * max(1.0, abs(best))
        return int(cand[tied.argmax()])
