"""Reservoir sampling (CRS in the PRS paper): a uniform random sample of the stream so far.

While the buffer has free slots every sample goes to the next slot. Once it is full, stream sample
number n (0-based: n samples were seen before it) is admitted with probability B / (n + 1) and
overwrites a slot chosen uniformly at random (Vitter's Algorithm R). One draw j ~ U{0..n} does both:
admit iff j < B, and then slot j. Labels play no part in the decision.
"""
from __future__ import annotations

import numpy as np

from cml_bench.buffers.base import ReplayBuffer


class ReservoirBuffer(ReplayBuffer):
    """Classic reservoir sampling over slots; every stream sample ends up kept with prob. B / N."""

    def _choose_slot(self, row: np.ndarray, labels: list[int]) -> int | None:
        if self._filled < self._capacity:
            return self._filled
        j = int(self.rng.integers(0, self._n_seen + 1))
        return j if j < self._capacity else None
