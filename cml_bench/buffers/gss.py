"""Gradient-based Sample Selection, greedy variant (GSS-Greedy; Aljundi, Lin, Goujaud, Bengio,
"Gradient based sample selection for online continual learning", NeurIPS 2019, Algorithm 2).

The buffer keeps samples whose loss gradients are diverse. Each stored sample has a score C_i in
[0, 2]; for an incoming sample with gradient g, compared with the gradients G of n random stored
samples under the current model (``n_compare``), c = max_i cos(g, G_i) + 1:

1. while the buffer has free slots, the sample is stored with score c;
2. once full, only a sample with c < 1 (its gradient points away from every compared one) can
   enter: a stored sample i is drawn with probability C_i / sum_j C_j, and with probability
   C_i / (C_i + c) the incoming sample replaces it and takes score c.

So a sample redundant with the memory (high similarity) neither enters nor stays long, and stored
samples with high scores (redundant when they entered) are the first to be replaced.

Choices the paper leaves open:
- The compared subset is drawn once per ``offer_batch`` call (one mini-batch), before its rows are
  decided, with the buffer's generator; its gradients come from the ``slot_keys`` callback
  (``KeyedBuffer``). The rows of a batch are then decided in order against that same subset
  (``decides_per_batch``).
- With an empty buffer there is nothing to compare: c = 1 (cosine 0). A zero gradient has cosine 0
  with everything. If every stored score is 0 the candidate is drawn uniformly, and
  C_i / (C_i + c) with both 0 counts as 1/2.

Multi-label adaptation: none in the buffer; the gradients are those of the multi-label loss (what
the gradient is taken of is the strategy's choice: ``strategies/gss.py``).

Cost per sample: one cosine against n stored gradients (O(n D)) and, for a sample that passes the
gate, one draw over the B scores (O(B)); plus, in the strategy, the gradients of the incoming batch
and of the n compared samples.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cml_bench.buffers.base import KeyedBuffer, SlotKeys, _check_int, label_lists


def max_cosine(keys: np.ndarray, others: np.ndarray) -> np.ndarray:
    """float [N]: the largest cosine similarity of each row of ``keys`` to the rows of ``others``
    (a zero vector has cosine 0 with everything)."""
    def unit(a: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)

    return (unit(keys) @ unit(others).T).max(1)


class GSSBuffer(KeyedBuffer):
    """GSS-Greedy replay buffer; keys are per-sample loss gradients (see the module docstring).

    Args:
        capacity: number of slots B.
        num_classes: number of classes M.
        seed: seed of the buffer's random generator.
        n_compare: stored samples whose gradients each batch is compared with (the paper's n).
    """

    key_kind = "gradients"
    decides_per_batch = True

    def __init__(self, capacity: int, num_classes: int, seed: int = 0, n_compare: int = 10) -> None:
        super().__init__(capacity, num_classes, seed)
        _check_int("n_compare", n_compare, minimum=1)
        self.n_compare = int(n_compare)
        self._scores = np.zeros(capacity)

    @property
    def scores(self) -> np.ndarray:
        """float [len(self)]: the score C_i of each filled slot (a copy)."""
        return self._scores[: self._filled].copy()

    def _extra_state(self) -> dict[str, Any]:
        return {"n_compare": self.n_compare}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scores": self.scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        scores = np.asarray(state.get("scores", ()), dtype=float)
        if scores.shape != (self._filled,):
            raise ValueError(f"Buffer state has scores of shape {scores.shape}, expected ({self._filled},).")
        self._scores[:] = 0.0
        self._scores[: self._filled] = scores

    def _offer_keyed(self, rows: np.ndarray, keys: np.ndarray,
                     slot_keys: SlotKeys | None) -> list[int | None]:
        k = min(self.n_compare, self._filled)
        if k == 0:
            c = np.ones(len(rows))
        else:
            if slot_keys is None:
                raise ValueError("GSSBuffer compares with stored samples' current gradients: pass slot_keys=.")
            compared = self.rng.choice(self._filled, size=k, replace=False).astype(np.int64)
            others = np.asarray(slot_keys(compared), dtype=np.float64)
            if others.shape != (k, keys.shape[1]):
                raise ValueError(f"slot_keys returned shape {others.shape}, expected {(k, keys.shape[1])}.")
            c = max_cosine(keys, others) + 1.0
        out: list[int | None] = []
        for row, labels, score in zip(rows, label_lists(rows), c.tolist()):
            slot = self._filled if self._filled < self._capacity else self._replace(score)
            if slot is not None:
                self._write(slot, row, labels)
                self._scores[slot] = score
            self._n_seen += 1
            for cls in labels:
                self._n[cls] += 1
            out.append(slot)
        return out

    def _replace(self, score: float) -> int | None:
        if score >= 1.0:
            return None
        scores = self._scores
        total = float(scores.sum())
        if total > 0:
            i = int(np.searchsorted(np.cumsum(scores), self.rng.random() * total, side="right"))
            i = min(i, self._capacity - 1)
        else:
            i = int(self.rng.integers(self._capacity))
        pair = scores[i] + score
        keep_new = scores[i] / pair if pair > 0 else 0.5
        return i if self.rng.random() < keep_new else None
