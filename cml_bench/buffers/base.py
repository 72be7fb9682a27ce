"""The replay-buffer interface: a buffer decides which slot an incoming sample goes to.

A buffer sees only multi-hot label vectors. It never holds images: ``offer(labels)`` returns the slot
index where the caller must write the sample's payload (or ``None`` when the sample is not admitted),
and the buffer updates its own bookkeeping as if the sample were stored there. Slots fill in order
0, 1, 2, ... while the buffer is not full; afterwards an admitted sample overwrites the returned slot.

Everything random goes through ``self.rng`` (a PCG64 generator seeded at construction), and
``state_dict()`` captures it, so a restored buffer makes exactly the same future decisions.

Some buffers decide on more than labels (``KeyedBuffer``): the caller also passes one vector per
incoming sample (its "key": backbone features, a loss gradient, ... as ``key_kind`` says) and, where
the buffer asks for them, the keys of stored slots under the current model through a callback. The
buffer still sees only numpy arrays, never a model.
"""
from __future__ import annotations

from abc import ABC
from typing import Any, Callable, ClassVar

import numpy as np


class ReplayBuffer(ABC):
    """Fixed-capacity slot allocator over multi-hot labels.

    Subclasses implement ``_choose_slot`` (or override ``_offer_rows``); the base class validates
    input, keeps the slot-label matrix, per-class slot counts and per-class stream counts, and handles
    sampling and state. While ``_choose_slot`` runs, ``n_seen`` and ``n_c`` do NOT yet include the
    sample being offered; both are incremented right after it returns (whatever it decided).
    Bookkeeping per offer touches only the labels of the incoming sample and of the sample it
    replaces. ``offer`` and ``offer_batch`` validate their input once and hand the bool rows to
    ``_offer_rows``, which a subclass may override with a fused loop (``PRSBuffer`` does) as long as
    the decisions and random draws stay exactly those of offering the rows one by one.

    Args:
        capacity: number of slots B (>= 1).
        num_classes: length M of the label vectors (>= 1).
        seed: seed of the buffer's own random generator (>= 0).
    """

    key_kind: ClassVar[str | None] = None
    """What the buffer decides on besides labels: None (labels only) or a ``KeyedBuffer``'s kind."""

    decides_per_batch: ClassVar[bool] = False
    """True when ``offer_batch`` decides its rows jointly (OCDM, GSS), so it differs from offering
    them one by one; the rows of a batch then compete with each other and with the stored samples."""

    def __init__(self, capacity: int, num_classes: int, seed: int = 0) -> None:
        _check_int("capacity", capacity, minimum=1)
        _check_int("num_classes", num_classes, minimum=1)
        _check_int("seed", seed, minimum=0)
        self._capacity = int(capacity)
        self._num_classes = int(num_classes)
        self.seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self._slots = np.zeros((self._capacity, self._num_classes), dtype=bool)
        # filled slots per class, whole numbers kept as float64 (exact; no cast in float arithmetic)
        self._class_counts = np.zeros(self._num_classes)
        self._total = 0  # label occurrences over the filled slots (== _class_counts.sum())
        self._n = [0] * self._num_classes  # stream samples per class (Python ints: read per offer)
        self._filled = 0
        self._n_seen = 0

    # ------------------------------------------------------------------ what subclasses decide
    def _choose_slot(self, row: np.ndarray, labels: list[int]) -> int | None:
        """Slot for a validated bool label row, or None (``n_seen``/``n_c`` exclude it yet).

        ``labels`` lists the row's class indices. While the buffer is not full the slot must be
        ``len(self)`` (the next free one); once full, any slot in ``range(capacity)``. Called by the
        base class's ``_offer_rows``; a subclass that overrides ``_offer_rows`` need not define it.
        """
        raise NotImplementedError(f"{type(self).__name__} must define _choose_slot or _offer_rows")

    def _after_load(self) -> None:
        """Hook at the end of ``load_state_dict`` (rebuild subclass caches)."""

    def _extra_state(self) -> dict[str, Any]:
        """Subclass constructor options to store in ``state_dict`` (checked on load)."""
        return {}

    # ------------------------------------------------------------------ offering samples
    def offer(self, labels: np.ndarray) -> int | None:
        """Offer one stream sample; return the slot to write it to, or None if not admitted.

        Args:
            labels: 0/1 (or bool) vector of length ``num_classes``.
        """
        return self._offer_rows(self._validate_labels(labels, ndim=1)[None])[0]

    def offer_batch(self, labels: np.ndarray) -> list[int | None]:
        """Offer the rows of a [N, num_classes] 0/1 matrix one after the other.

        Returns one slot (or None) per row, exactly what ``offer`` would return row by row, with the
        same random draws; the input is validated and converted once for the whole batch.
        """
        return self._offer_rows(self._validate_labels(labels, ndim=2))

    def _offer_rows(self, rows: np.ndarray) -> list[int | None]:
        """Offer the rows of a validated bool [N, num_classes] matrix in order."""
        out: list[int | None] = []
        n = self._n
        for row, labels in zip(rows, label_lists(rows)):
            slot = self._choose_slot(row, labels)
            if slot is not None:
                slot = int(slot)
                self._write(slot, row, labels)
            self._n_seen += 1
            for c in labels:
                n[c] += 1
            out.append(slot)
        return out

    def _write(self, slot: int, row: np.ndarray, labels: list[int]) -> None:
        assert 0 <= slot <= self._filled and slot < self._capacity, (slot, self._filled)
        counts = self._class_counts
        if slot == self._filled:
            self._filled += 1
        else:
            old = self._slots[slot].nonzero()[0].tolist()
            for c in old:
                counts[c] -= 1
            self._total -= len(old)
        for c in labels:
            counts[c] += 1
        self._total += len(labels)
        self._slots[slot] = row

    def _validate_labels(self, labels: np.ndarray, ndim: int) -> np.ndarray:
        arr = np.asarray(labels)
        if arr.ndim != ndim or arr.shape[-1] != self._num_classes:
            shape = "[num_classes]" if ndim == 1 else "[N, num_classes]"
            raise ValueError(
                f"Expected labels of shape {shape} with num_classes={self._num_classes}, "
                f"but got shape {arr.shape}."
            )
        if arr.dtype == bool:
            return arr
        as_bool = arr.astype(bool)
        if not np.array_equal(as_bool, arr):
            raise ValueError("Expected a 0/1 (or bool) multi-hot label vector, but got other values.")
        return as_bool

    # ------------------------------------------------------------------ reading the buffer
    def __len__(self) -> int:
        return self._filled

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def n_seen(self) -> int:
        """Stream samples offered so far (admitted or not)."""
        return self._n_seen

    @property
    def n_c(self) -> np.ndarray:
        """int [num_classes]: stream samples offered so far carrying each class."""
        return np.array(self._n, dtype=np.int64)

    @property
    def slot_labels(self) -> np.ndarray:
        """bool [len(self), num_classes]: labels of the filled slots 0..len-1 (a copy)."""
        return self._slots[: self._filled].copy()

    @property
    def class_counts(self) -> np.ndarray:
        """int [num_classes]: filled slots carrying each class (== ``slot_labels.sum(0)``)."""
        return self._class_counts.astype(np.int64)

    def sample(self, k: int) -> np.ndarray:
        """Draw min(k, len(self)) filled-slot indices uniformly without replacement (int64)."""
        _check_int("k", k, minimum=0)
        k = min(int(k), self._filled)
        return self.rng.choice(self._filled, size=k, replace=False).astype(np.int64)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically: numpy arrays and plain Python values."""
        return {
            "type": type(self).__name__,
            "capacity": self._capacity,
            "num_classes": self._num_classes,
            "seed": self.seed,
            "options": self._extra_state(),
            "slot_labels": self._slots[: self._filled].copy(),
            "n_seen": self._n_seen,
            "n_c": self.n_c,
            "rng_state": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``; the buffer must have been built with the same options."""
        expected = {
            "type": type(self).__name__,
            "capacity": self._capacity,
            "num_classes": self._num_classes,
            "options": self._extra_state(),
        }
        for key in [*expected, "seed", "slot_labels", "n_seen", "n_c", "rng_state"]:
            if key not in state:
                raise ValueError(f"Buffer state is missing '{key}'; was it made by state_dict()?")
        for key, value in expected.items():
            if state[key] != value:
                raise ValueError(
                    f"Buffer state has {key}={state[key]!r} but this buffer has {key}={value!r}; "
                    f"build the buffer with the options it was saved with."
                )
        slots = np.asarray(state["slot_labels"], dtype=bool)
        n_c = np.asarray(state["n_c"], dtype=np.int64)
        if slots.ndim != 2 or slots.shape[1] != self._num_classes or len(slots) > self._capacity:
            raise ValueError(f"Buffer state has slot_labels of bad shape {slots.shape}.")
        if n_c.shape != (self._num_classes,):
            raise ValueError(f"Buffer state has n_c of bad shape {n_c.shape}.")
        self._filled = len(slots)
        self._slots[:] = False
        self._slots[: self._filled] = slots
        self._class_counts[:] = self._slots.sum(0)
        self._total = int(self._class_counts.sum())
        self._n = n_c.tolist()
        self._n_seen = int(state["n_seen"])
        self.seed = int(state["seed"])
        self.rng.bit_generator.state = state["rng_state"]
        self._after_load()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self._capacity}, num_classes={self._num_classes}, "
            f"filled={self._filled}, n_seen={self._n_seen})"
        )


SlotKeys = Callable[[np.ndarray], np.ndarray]
"""``slot_keys(slots)`` -> float [len(slots), D]: the keys of stored slots under the current model."""


class KeyedBuffer(ReplayBuffer):
    """A buffer that decides on a key vector per sample besides its labels.

    ``offer(labels, key, slot_keys)`` / ``offer_batch(labels, keys, slot_keys)``: ``keys`` is a float
    [N, D] array (D fixed by the first call), ``slot_keys`` a callback giving the keys of stored
    slots now (``SlotKeys``), needed by buffers whose stored keys go stale (GSS's gradients).
    Subclasses implement ``_offer_keyed(rows, keys, slot_keys)``; ``key_kind`` names what the keys
    are, so the caller (``cml_bench/replay.py``'s plugin, through the strategy) computes the right ones.
    """

    key_kind: ClassVar[str | None] = "features"

    def offer(self, labels: np.ndarray, key: np.ndarray | None = None,  # type: ignore[override]
              slot_keys: SlotKeys | None = None) -> int | None:
        """Offer one sample with its key vector [D]; return its slot or None."""
        row = self._validate_labels(labels, ndim=1)[None]
        keys = None if key is None else np.asarray(key)[None]
        return self._offer_keyed(row, self._validate_keys(keys, 1), slot_keys)[0]

    def offer_batch(self, labels: np.ndarray, keys: np.ndarray | None = None,  # type: ignore[override]
                    slot_keys: SlotKeys | None = None) -> list[int | None]:
        """Offer the rows of [N, num_classes] labels with their keys [N, D]; one slot (or None) each."""
        rows = self._validate_labels(labels, ndim=2)
        return self._offer_keyed(rows, self._validate_keys(keys, len(rows)), slot_keys)

    def _offer_keyed(self, rows: np.ndarray, keys: np.ndarray,
                     slot_keys: SlotKeys | None) -> list[int | None]:
        raise NotImplementedError(f"{type(self).__name__} must define _offer_keyed")

    def _validate_keys(self, keys: np.ndarray | None, n: int) -> np.ndarray:
        if keys is None:
            raise ValueError(
                f"{type(self).__name__} decides on per-sample {self.key_kind}: pass keys= (float [N, D]) "
                f"with the labels."
            )
        arr = np.asarray(keys, dtype=np.float64)
        if arr.ndim != 2 or len(arr) != n or arr.shape[1] < 1:
            raise ValueError(f"Expected keys of shape [{n}, D] (one vector per sample), but got shape {arr.shape}.")
        if not np.isfinite(arr).all():
            raise ValueError("Expected finite keys, but got NaN or infinite values.")
        return arr


def label_lists(rows: np.ndarray) -> list[list[int]]:
    """The class indices of each row of a bool [N, M] matrix, in increasing order (one pass)."""
    m = rows.shape[1]
    out: list[list[int]] = [[] for _ in range(len(rows))]
    for k in rows.ravel().nonzero()[0].tolist():
        out[k // m].append(k % m)
    return out


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"Expected argument `{name}` to be an integer, but got {value!r}.")
    if value < minimum:
        raise ValueError(f"Expected argument `{name}` to be an integer >= {minimum}, but got {value}.")
