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
  ``offer_batch`` takes these uniforms from ``rng.random(k)`` blocks, never more than the rows will
  use: k draws at once are the same numbers, and leave the same generator state, as k single draws.

Cost. The production caller (``cml_bench/replay.py``) offers each mini-batch with one
``offer_batch`` call: the [N, M] matrix is validated and converted once, every row's labels are
found in one pass, and the uniforms come in blocks (``_offer_rows``). Everything a decision reads is
kept incrementally, touching only the labels of the incoming and of the evicted sample: n_c, n_c^rho
(a Python list, and an array holding it for the present classes only), slots_c, L, the presence
mask, and the slots grouped by label set (label tuple -> its slots in increasing order; class -> the
label tuples carrying it). The admission test is arithmetic over the sample's own labels with a
running estimate of Z (``Z_SLACK`` says why that never changes a decision); Z itself (one dot
product) is recomputed for every eviction and whenever the estimate could matter. An eviction
computes delta and the softmax CDF over [M] in preallocated arrays; the candidates are then handled
per distinct label set, not per slot (slots with the same labels have the same under-represented
count and the same D, and among tied ones the lowest slot wins): one label set left -> its lowest
slot, no distance needed; otherwise D(K) = A(|K|) + sum_{c in K} G_c(|K|) per label set, with
A(r) = sum_c |b_c(r)| from one [max r + 1, M] array operation. No Python loop runs over slots or
over all classes. Speed: ``tests/bench_prs_buffer.py`` (COCOseq, B = 2000, M = 70) prints the current
figure.
"""
from __future__ import annotations

import math
from bisect import insort
from typing import Any

import numpy as np

from cml_bench.buffers.base import ReplayBuffer, label_lists

TIE_RTOL = 1e-9
"""Relative tolerance under which two distances D count as tied (lowest slot then wins)."""

Z_SLACK = 1e-7
"""Admission is decided from a running estimate of Z only when u < s (1 - Z_SLACK) or
u >= s (1 + Z_SLACK), s computed from the estimate; otherwise Z is recomputed exactly first.

The estimate is an exact Z (recomputed for every eviction) plus at most ``Z_RESYNC`` incremental
changes since: n_c^rho of a present class moving from n to n + 1, and the classes that the
eviction's write brought in or took out (unless those amount to more than half of Z: then Z is
recomputed). Without a write n_c^rho only grows (rho > 0) or only shrinks (rho < 0), so Z moves one
way, and the estimate is not used once it is below half the exact Z it started from. Each change
adds a rounding error of a few units in the last place of the largest value Z took since, which is
at most 3 times the current one: the relative error of Z, and so of s (it depends on Z through
p = n^rho / Z only), stays below 1e-13, far inside Z_SLACK. So every decision is the one the exact
Z gives; ``tests/test_buffers.py`` also checks it with a huge slack, with no resync, and with
extreme rho."""

Z_RESYNC = 64
"""Recompute Z exactly after this many incremental changes of the estimate."""


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
        m = num_classes
        # caches kept in step with the base class's slots and counts (rebuilt by _after_load)
        self._pw = [0.0] * m  # n_c^rho for seen classes, 0.0 for unseen ones (Python floats)
        self._held = [False] * m  # slots_c > 0 (the class is present)
        self._present = np.zeros(m)  # the same as 1.0 / 0.0
        self._ppow = np.zeros(m)  # n_c^rho for the present classes, 0.0 elsewhere
        self._ones = np.ones(m)  # Z = ppow . ones (the same products, hence sum, as pw . present)
        self._z_est = 0.0  # running estimate of Z (see Z_SLACK)
        self._z_floor = 0.0  # half the exact Z it started from: below that it is not used
        self._z_age = Z_RESYNC  # updates since Z was last computed exactly; >= Z_RESYNC: stale
        self._slot_key: list[tuple[int, ...]] = [()] * capacity  # labels of each slot
        self._key_slots: dict[tuple[int, ...], list[int]] = {}  # label tuple -> its slots, sorted
        self._class_keys: list[set[tuple[int, ...]]] = [set() for _ in range(m)]  # c -> tuples with c
        # scratch arrays of the eviction step
        self._p = np.empty(m)
        self._delta = np.empty(m)
        self._e = np.empty(m)
        self._cdf = np.empty(m)
        self._b = np.empty((m + 1, m))
        self._scalar = np.empty(()), np.empty(()), np.empty(())  # 0-d operands: Z, L, max(delta)
        self._sizes_grid = np.arange(m + 1, dtype=float)[:, None]  # label counts r, as a column

    # ------------------------------------------------------------------ cache maintenance
    def _after_load(self) -> None:
        # the same scalar power as _offer_rows, so a restored buffer computes bit-identical shares
        self._pw = [float(n) ** self.rho if n > 0 else 0.0 for n in self._n]
        self._present[:] = self._class_counts > 0
        self._held = (self._class_counts > 0).tolist()
        self._ppow[:] = np.array(self._pw) * self._present
        self._z_age = Z_RESYNC
        self._slot_key = [()] * self._capacity
        self._key_slots = {}
        self._class_keys = [set() for _ in range(self._num_classes)]
        for slot in range(self._filled):
            self._index(slot, tuple(self._slots[slot].nonzero()[0].tolist()))

    def _index(self, slot: int, key: tuple[int, ...]) -> None:
        """Record that ``slot`` now holds label tuple ``key`` (its old tuple already removed)."""
        self._slot_key[slot] = key
        if not key:
            return  # a slot without labels can never be a candidate
        group = self._key_slots.get(key)
        if group is None:
            self._key_slots[key] = [slot]
            for c in key:
                self._class_keys[c].add(key)
        else:
            insort(group, slot)

    def _store(self, slot: int, row: np.ndarray, labels: list[int]) -> tuple[float, float]:
        """Write the sample with bool ``row`` (class indices ``labels``) into ``slot``.

        Returns (sum of n_c^rho over the classes that entered the buffer, the same over those that
        left it): Z changes by their difference.
        """
        counts, present, held = self._class_counts, self._present, self._held
        ppow, pw = self._ppow, self._pw
        gained = lost = 0.0
        if slot == self._filled:
            self._filled += 1
        else:
            old = self._slot_key[slot]
            if old:
                group = self._key_slots[old]
                if group[0] == slot:  # always so for an eviction: the lowest slot of its label set
                    del group[0]
                else:
                    group.remove(slot)
                if not group:
                    del self._key_slots[old]
                    for c in old:
                        self._class_keys[c].discard(old)
                for c in old:
                    left = counts[c] - 1
                    counts[c] = left
                    if left == 0:
                        held[c] = False
                        present[c] = 0.0
                        ppow[c] = 0.0
                        lost += pw[c]
                self._total -= len(old)
        for c in labels:
            counts[c] += 1
            if not held[c]:
                held[c] = True
                present[c] = 1.0
                ppow[c] = pw[c]
                gained += pw[c]
        self._total += len(labels)
        self._slots[slot] = row
        self._index(slot, tuple(labels))
        return gained, lost

    def _extra_state(self) -> dict[str, Any]:
        return {"rho": self.rho}

    def targets(self) -> tuple[np.ndarray, np.ndarray]:
        """(present [M] bool, p [M] float): the classes present and the target shares of step 1.

        ``p`` is n_c^rho / Z for every seen class (present or not) and 0 for unseen classes.
        """
        z = float(self._ppow.dot(self._ones))
        powers = np.array(self._pw)
        return self._present > 0, (powers / z if z > 0 else powers)

    # ------------------------------------------------------------------ the decision
    def _offer_rows(self, rows: np.ndarray) -> list[int | None]:
        """Steps 2-5 for each row in turn (replaces the base class's per-row ``_choose_slot`` loop).

        The decisions and the random draws are exactly those of offering the rows one at a time:
        - uniforms come from ``rng.random(k)`` blocks, never more than are certain to be used (once
          the buffer is full every remaining row draws u, each admitted one also v), and a block of
          k doubles is the same k numbers, leaving the same generator state, as k single draws;
        - the admission test uses the running estimate of Z where that cannot change the decision
          (``Z_SLACK``); Z is computed exactly whenever it could, and for every eviction.
        """
        lists = label_lists(rows)
        todo = len(rows)
        out: list[int | None] = []
        i = 0
        while i < todo and self._filled < self._capacity:  # step 2: the next free slot
            out.append(self._filled)
            self._store(self._filled, rows[i], lists[i])
            self._count(lists[i])
            i += 1
        if i < todo:  # the buffer is full from here on
            out.extend(self._offer_full(rows, lists, i))
        self._n_seen += todo
        return out

    def _offer_full(self, rows: np.ndarray, lists: list[list[int]], start: int) -> list[int | None]:
        """Steps 3-5 for rows ``start:`` of ``rows`` (label lists ``lists``); the buffer is full."""
        out: list[int | None] = []
        append = out.append
        capacity, n, pw, rho = self._capacity, self._n, self._pw, self.rho
        ppow, ones, held = self._ppow, self._ones, self._held
        draw, store, victim = self.rng.random, self._store, self._victim
        admission, exact_test = self._admission, self._exact_admission
        below, above, resync = 1.0 - Z_SLACK, 1.0 + Z_SLACK, Z_RESYNC
        z_est, z_age, z_floor = self._z_est, self._z_age, self._z_floor
        todo = len(rows)
        pool = draw(todo - start).tolist()  # one u per row for sure; more (v) are drawn when needed
        size, at = len(pool), 0
        for i in range(start, todo):
            labels = lists[i]
            slot = None
            if at == size:
                pool = draw(todo - i).tolist()
                size, at = len(pool), 0
            u = pool[at]  # step 3: admit iff u < s
            at += 1
            if labels:
                if z_age < resync and z_est >= z_floor:  # try the estimate of Z first
                    if len(labels) == 1:  # _admission for one label, inlined
                        c = labels[0]
                        nc = n[c]
                        t = 1.0 if nc == 0 else capacity * (pw[c] / z_est) / nc
                        s = t if t < 1.0 else 1.0
                    else:
                        s = admission(labels, z_est)
                    if u >= s * above:
                        admit = False
                    elif u < s * below:
                        admit = True
                        z_est = float(ppow.dot(ones))
                        z_age, z_floor = 0, 0.5 * z_est
                    else:
                        admit, z_est = exact_test(labels, u)
                        z_age, z_floor = 0, 0.5 * z_est
                else:
                    admit, z_est = exact_test(labels, u)
                    z_age, z_floor = 0, 0.5 * z_est
                if admit:  # step 4, with the exact Z
                    if at == size:
                        pool = draw(todo - i).tolist()
                        size, at = len(pool), 0
                    slot = victim(z_est, pool[at])
                    at += 1
                    gained, lost = store(slot, rows[i], labels)
                    if gained > z_floor or lost > z_floor:  # a big change: recompute Z next time
                        z_age = resync
                    elif gained or lost:  # classes entered or left the buffer
                        z_est += gained - lost
                        z_age += 1
                elif z_est == 0.0:
                    z_age = resync  # no class present: nothing to estimate from
                for c in labels:  # step 5 (_count inlined) and the estimate of Z with it
                    k = n[c] + 1
                    n[c] = k
                    x = float(k) ** rho
                    if held[c]:
                        z_est += x - pw[c]
                        z_age += 1
                        ppow[c] = x
                    pw[c] = x
            append(slot)
        self._z_est, self._z_age, self._z_floor = z_est, z_age, z_floor
        return out

    def _count(self, labels: list[int]) -> None:
        """Step 5: n_c += 1 and n_c^rho for the sample's labels (the estimate of Z is left stale)."""
        for c in labels:
            k = self._n[c] + 1
            self._n[c] = k
            x = float(k) ** self.rho
            if self._held[c]:
                self._ppow[c] = x
            self._pw[c] = x
        self._z_age = Z_RESYNC

    def _exact_admission(self, labels: list[int], u: float) -> tuple[bool, float]:
        """(u < s, Z) with Z computed exactly; False if no class is present (Z = 0)."""
        z = float(self._ppow.dot(self._ones))  # Z = sum of n_k^rho over the present classes
        if z == 0.0:  # no class present: no slot could be evicted
            return False, z
        return u < self._admission(labels, z), z

    def _admission(self, labels: list[int], z: float) -> float:
        """Step 3: s = sum_k w_k min(1, B p_k / n_k) over the sample's labels K (non-empty)."""
        n, pw = self._n, self._pw
        smallest = min([n[c] for c in labels])
        num = den = 0.0
        for c in labels:
            w = math.exp(smallest - n[c])  # softmax(-n_k), shifted for stability
            den += w
            if n[c] == 0:
                num += w  # a label never seen before: min(1, B p_k / n_k) := 1
            else:
                num += w * min(1.0, self._capacity * (pw[c] / z) / n[c])
        # one label: w = 1.0, so this is exactly min(1, B p_k / n_k) (or 1.0 for n_k = 0)
        return num / den

    def _victim(self, z: float, v: float) -> int:
        """Step 4: the slot to evict (the buffer is full).

        ``z``: Z, exact (sum of n_k^rho over the present classes); ``v``: the uniform that draws y.
        """
        # (0-d array operands: numpy handles them faster than Python scalars; same arithmetic)
        present = self._present
        z_arr, total_arr, top_arr = self._scalar
        z_arr[()] = z
        total_arr[()] = self._total
        p = np.divide(self._ppow, z_arr, out=self._p)  # shares of the present classes, 0 elsewhere
        delta = np.multiply(p, total_arr, out=self._delta)
        np.subtract(self._class_counts, delta, out=delta)  # excess over target; 0 for absent classes
        # y ~ softmax(delta) over the present classes, by inverse CDF in increasing class index.
        # Over the present classes delta sums to 0, so max(delta) >= 0 is a present class's.
        top_arr[()] = delta.item(delta.argmax())
        e = np.subtract(delta, top_arr, out=self._e)
        np.exp(e, out=e)
        e *= present
        cdf = np.add.accumulate(e, out=self._cdf)
        y = int(cdf.searchsorted(v * cdf.item(-1), side="right"))
        if y >= self._num_classes:  # the draw rounded up to the total: the last present class
            y = int(present.nonzero()[0][-1])
        # The candidates are the slots carrying y, grouped by label set K: slots with the same K
        # have the same under-represented count and the same D, and the lowest slot wins ties.
        key_slots = self._key_slots
        keys = self._class_keys[y]
        if len(keys) == 1:
            for key in keys:
                return key_slots[key][0]
        # keep the label sets with the fewest under-represented classes (delta_c <= 0)
        d = delta.tolist()
        fewest = self._num_classes + 1
        kept: list[tuple[int, ...]] = []
        for key in keys:
            count = 0
            for c in key:
                if d[c] <= 0:
                    count += 1
            if count < fewest:
                fewest = count
                kept = [key]
            elif count == fewest:
                kept.append(key)
        if len(kept) == 1:
            return key_slots[kept[0]][0]
        # distance after removing a slot with label set K (r = |K| labels), with L' = L - r:
        #   D(K) = sum_c |slots_c - [c in K] - p_c L'| = sum_c |b_c(r) - [c in K]|,
        #          b_c(r) = delta_c + p_c r
        #        = A(r) + sum_{c in K} G_c(r),  A(r) = sum_c |b_c(r)|,  G_c(r) = |b_c(r) - 1| - |b_c(r)|
        # (classes not present have b = 0 and are carried by no slot, so they add nothing).
        r_max = max([len(key) for key in kept])
        b = np.multiply(self._sizes_grid[: r_max + 1], p, out=self._b[: r_max + 1])  # r = 0..r_max
        b += delta
        np.abs(b, out=b)
        a = np.add.reduce(b, axis=1).tolist()
        pw = self._pw
        dist = []
        for key in kept:
            r = len(key)
            g = 0.0
            for c in key:
                bc = r * (pw[c] / z) + d[c]
                g += abs(bc - 1.0) - abs(bc)
            dist.append(g + a[r])
        best = min(dist)
        limit = best + TIE_RTOL * max(1.0, abs(best))
        return min([key_slots[key][0] for key, value in zip(kept, dist) if value <= limit])
