"""The contract every replay buffer keeps, as a check anyone can run on a buffer class.

``check_contract(MyBuffer)`` builds the buffer as the replay plugin does
(``MyBuffer(capacity, num_classes, seed=..., **options)``), offers it a long-tailed multi-hot stream
through :class:`Caller` (which plays the replay plugin: it stores each admitted sample's stream
index in its slot and, for a ``KeyedBuffer``, passes key vectors and the keys of stored slots), and
checks the rules of ``cml_bench/buffers/base.py``:

1. capacity: slots fill in order 0, 1, 2, ... while the buffer is not full; afterwards every slot
   returned is in ``range(capacity)`` (or None: not admitted);
2. bookkeeping, no duplicates: every filled slot holds one distinct stream sample, and
   ``slot_labels``, ``class_counts``, ``n_c``, ``n_seen`` agree with what the caller stored;
3. batches: a buffer that does not declare ``decides_per_batch`` decides a mini-batch exactly as
   one offer per row, with the same random draws;
4. state round trip: ``state_dict()`` holds plain values (numpy arrays, numbers, strings), is a
   snapshot, and a buffer built with another seed that loads it makes the same decisions and draws
   from then on;
5. sampling: ``sample(k)`` draws ``min(k, len)`` distinct filled slots.

A broken rule raises :class:`BufferContractError` naming it. :func:`buffer_classes` lists every
buffer class imported so far (plugins included once discovered), which the test suite checks.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from cml_bench.buffers.base import KeyedBuffer, ReplayBuffer


class BufferContractError(AssertionError):
    """A buffer class breaks a rule of the buffer contract; the message names the rule and the class."""


def long_tailed_stream(n: int, num_classes: int, seed: int, tail: float = 1.3) -> np.ndarray:
    """[n, M] bool: class c present with probability 0.6 * (c + 1)^-tail; empty rows get class 0."""
    rng = np.random.default_rng(seed)
    freq = 0.6 * np.arange(1, num_classes + 1) ** -tail
    rows = rng.random((n, num_classes)) < freq
    rows[~rows.any(axis=1), 0] = True
    return rows


def key_of(index: np.ndarray) -> np.ndarray:
    """[N, 3] key of stream sample ``index``: a direction turning slowly along the stream (so late
    samples point away from early ones) plus a small per-sample wobble (no exact ties)."""
    t = np.asarray(index, dtype=float)
    return np.stack([np.cos(0.01 * t), np.sin(0.01 * t), 0.1 * np.sin(1.3 * t)], axis=1)


class Caller:
    """Plays the replay plugin: offers rows (with keys for a keyed buffer), stores what it is told.

    ``stored[slot]`` is the stream index of the sample in that slot (-1: never written).
    """

    def __init__(self, buffer: ReplayBuffer, stored: np.ndarray | None = None, offered: int = 0):
        self.buffer = buffer
        self.stored = np.full(buffer.capacity, -1) if stored is None else stored.copy()
        self.offered = offered

    def offer_batch(self, rows: np.ndarray) -> list[int | None]:
        index = np.arange(self.offered, self.offered + len(rows))
        self.offered += len(rows)
        if self.buffer.key_kind is None:
            slots = self.buffer.offer_batch(rows)
        else:
            slots = self.buffer.offer_batch(rows, keys=key_of(index), slot_keys=lambda s: key_of(self.stored[s]))
        for i, slot in zip(index, slots):
            if slot is not None:
                self.stored[slot] = i
        return slots

    def offer(self, row: np.ndarray) -> int | None:
        return self.offer_batch(np.asarray(row)[None])[0]

    def copy_for(self, buffer: ReplayBuffer) -> "Caller":
        """This caller's payload view, driving ``buffer`` (a restored copy) from here on."""
        return Caller(buffer, self.stored, self.offered)


def _is_concrete(cls: type[ReplayBuffer]) -> bool:
    """Whether ``cls`` decides somehow (an abstract base such as ``KeyedBuffer`` does not)."""
    if issubclass(cls, KeyedBuffer):
        return cls._offer_keyed is not KeyedBuffer._offer_keyed
    return cls._choose_slot is not ReplayBuffer._choose_slot or cls._offer_rows is not ReplayBuffer._offer_rows


def buffer_classes() -> list[type[ReplayBuffer]]:
    """Every concrete ``ReplayBuffer`` subclass imported so far, at any depth, by module and name.

    A buffer defined in a strategy plugin file is a subclass once its file is imported: discover the
    plugins first (``cml_bench.registry.STRATEGIES.discover()``)."""
    found, todo = set(), [ReplayBuffer]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted((c for c in found if _is_concrete(c)), key=lambda c: (c.__module__, c.__qualname__))


def _fills_in_order(make: Callable[[int], ReplayBuffer], stream: np.ndarray) -> None:
    buffer = make(0)
    capacity = buffer.capacity
    caller = Caller(buffer)
    slots = [caller.offer(row) for row in stream]
    _expect(slots[:capacity] == list(range(capacity)), f"the first {capacity} offers got slots {slots[:capacity]}")
    bad = [s for s in slots[capacity:] if s is not None and not 0 <= s < capacity]
    _expect(not bad, f"slots {bad[:5]} once full, outside range({capacity})")
    _expect(len(buffer) == capacity and buffer.n_seen == len(stream),
            f"len {len(buffer)} and n_seen {buffer.n_seen} after {len(stream)} offers")
    _expect(buffer.slot_labels.shape == (capacity, stream.shape[1]), f"slot_labels of shape {buffer.slot_labels.shape}")


def _keeps_books(make: Callable[[int], ReplayBuffer], stream: np.ndarray) -> None:
    buffer = make(3)
    caller = Caller(buffer)
    for lo in range(0, len(stream), 10):  # mini-batches, as the replay plugin offers them
        caller.offer_batch(stream[lo:lo + 10])
    stored = caller.stored[: len(buffer)]
    _expect((stored >= 0).all(), f"slots {np.flatnonzero(stored < 0)[:5].tolist()} counted as filled but never written")
    _expect(len(set(stored.tolist())) == len(buffer), "a stream sample in two slots")
    _expect(np.array_equal(buffer.slot_labels, stream[stored]), "slot_labels differ from the labels written there")
    _expect(np.array_equal(buffer.class_counts, buffer.slot_labels.sum(0)), "class_counts != slot_labels.sum(0)")
    _expect(np.array_equal(buffer.n_c, stream.sum(0)), "n_c differs from the classes offered")
    _expect(buffer.n_seen == len(stream), f"n_seen {buffer.n_seen} after {len(stream)} offers")


def _batches_as_single_offers(make: Callable[[int], ReplayBuffer], stream: np.ndarray) -> None:
    one, two = make(7), make(7)
    batched = Caller(one).offer_batch(stream)
    single = Caller(two)
    _expect(batched == [single.offer(row) for row in stream],
            "offer_batch decided otherwise than one offer per row (set decides_per_batch = True if it must)")
    _expect(one.rng.bit_generator.state == two.rng.bit_generator.state, "offer_batch made other random draws")


def _round_trip(make: Callable[[int], ReplayBuffer], stream: np.ndarray) -> None:
    original = make(11)
    caller = Caller(original)
    cut, later = len(stream) * 9 // 20, len(stream) * 3 // 4
    for lo in range(0, cut, 10):
        caller.offer_batch(stream[lo:min(lo + 10, cut)])
    state = original.state_dict()
    _plain(state)
    copies = {k: v.copy() for k, v in state.items() if isinstance(v, np.ndarray)}
    restored = make(999)  # the seed is part of the state
    restored.load_state_dict(state)

    def go_on(caller: Caller) -> tuple:  # continue the same way, replay draws included
        first = [s for lo in range(cut, later, 10) for s in caller.offer_batch(stream[lo:min(lo + 10, later)])]
        return first, caller.buffer.sample(7).tolist(), caller.offer_batch(stream[later:])

    _expect(go_on(caller.copy_for(restored)) == go_on(caller), "a restored buffer decides or draws otherwise")
    _expect(np.array_equal(original.slot_labels, restored.slot_labels), "a restored buffer holds other labels")
    _expect(all(np.array_equal(state[k], v) for k, v in copies.items()), "state_dict() changed as offers went on "
            "(return copies, not the buffer's own arrays)")


def _plain(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _expect(isinstance(key, str), f"state key {key!r} is not a string")
            _plain(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _plain(item)
    else:
        _expect(isinstance(value, (np.ndarray, int, float, str, bool, type(None))),
                f"state holds a {type(value).__name__} (only numpy arrays and plain Python values)")


def _samples(make: Callable[[int], ReplayBuffer], stream: np.ndarray) -> None:
    buffer = make(0)
    _expect(buffer.sample(4).shape == (0,), "sample() drew from an empty buffer")
    caller = Caller(buffer)
    caller.offer_batch(stream[: buffer.capacity // 2])
    filled = len(buffer)
    _expect(sorted(buffer.sample(filled + 5).tolist()) == list(range(filled)),
            "sample(k > len) did not give every filled slot once")
    for _ in range(20):
        drawn = buffer.sample(3).tolist()
        _expect(len(set(drawn)) == len(drawn) == min(3, filled) and all(0 <= i < filled for i in drawn),
                f"sample(3) gave {drawn} from {filled} filled slots")


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise BufferContractError(what)


RULES = {
    "capacity: fills slots in order, then stays in range": _fills_in_order,
    "bookkeeping: no duplicates, counts match what was stored": _keeps_books,
    "batches: offer_batch decides as single offers": _batches_as_single_offers,
    "state round trip: same future decisions": _round_trip,
    "sampling: distinct filled slots": _samples,
}
"""Rule name -> check, in the order :func:`check_contract` runs them."""


def check_contract(cls: type[ReplayBuffer], capacity: int = 40, num_classes: int = 8, stream_length: int = 2000,
                   **options: Any) -> None:
    """Check buffer class ``cls`` against the buffer contract (the module docstring's rules).

    ``options`` are passed to the constructor besides ``capacity``, ``num_classes`` and ``seed``
    (e.g. ``rho=0.02`` for ``PRSBuffer``). Raises :class:`BufferContractError` naming the first
    rule broken (an error the buffer raises while checked counts as breaking that rule).

    >>> from cml_bench.buffers import ReservoirBuffer
    >>> check_contract(ReservoirBuffer)
    """
    if not (isinstance(cls, type) and issubclass(cls, ReplayBuffer)):
        raise TypeError(f"Expected a ReplayBuffer subclass, but got {cls!r}.")
    stream = long_tailed_stream(stream_length, num_classes, seed=5)

    def make(seed: int) -> ReplayBuffer:
        return cls(capacity, num_classes, seed=seed, **options)

    for rule, check in RULES.items():
        if check is _batches_as_single_offers and cls.decides_per_batch:
            continue  # its rows compete with each other: batches are its decisions
        try:
            check(make, stream if check is not _batches_as_single_offers else stream[:500])
        except BufferContractError as err:
            raise BufferContractError(f"{cls.__qualname__} breaks the buffer contract, {rule}: {err}.") from None
        except Exception as err:  # noqa: BLE001 - a crash inside the buffer breaks the rule being checked
            raise BufferContractError(f"{cls.__qualname__} breaks the buffer contract, {rule}: "
                                      f"{type(err).__name__}: {err}") from err
