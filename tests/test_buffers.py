"""Replay buffers: slot semantics, bookkeeping, sampling, state, PRS against its plain reference.

The tests over every buffer offer samples through ``Caller``, which plays the replay plugin: it keeps
the stream index stored in each slot and, for a ``KeyedBuffer``, passes each sample's key vector and
the keys of stored slots. Buffer-specific tests (what each paper says its buffer favours) are in
``test_buffers_selection.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

import cml_bench.buffers.prs as prs_module
from cml_bench.buffers import BUFFERS, PRSBuffer, ReplayBuffer, ReservoirBuffer, make_buffer
from cml_bench.buffers.base import label_lists

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_prs import ReferencePRS  # noqa: E402


def long_tailed_stream(n: int, num_classes: int, seed: int, tail: float = 1.3) -> np.ndarray:
    """[n, M] bool: class c present with probability 0.6 * (c + 1)^-tail; empty rows get class 0."""
    rng = np.random.default_rng(seed)
    freq = 0.6 * np.arange(1, num_classes + 1) ** -tail
    rows = rng.random((n, num_classes)) < freq
    rows[~rows.any(axis=1), 0] = True
    return rows


def feed(buffer, stream: np.ndarray) -> np.ndarray:
    """Offer every row, storing the stream index where told; return the stored indices per slot."""
    stored = np.full(buffer.capacity, -1)
    for i, row in enumerate(stream):
        slot = buffer.offer(row)
        if slot is not None:
            stored[slot] = i
    return stored[: len(buffer)]


def shares(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum()


def key_of(index: np.ndarray) -> np.ndarray:
    """[N, 3] key of stream sample ``index``: a direction turning slowly along the stream (so late
    samples point away from early ones) plus a small per-sample wobble (no exact ties)."""
    t = np.asarray(index, dtype=float)
    return np.stack([np.cos(0.01 * t), np.sin(0.01 * t), 0.1 * np.sin(1.3 * t)], axis=1)


class Caller:
    """Plays the replay plugin: offers rows (with keys for a keyed buffer), stores what it is told."""

    def __init__(self, buffer: ReplayBuffer, stored: np.ndarray | None = None, offered: int = 0):
        self.buffer = buffer
        self.stored = np.full(buffer.capacity, -1) if stored is None else stored.copy()
        self.offered = offered

    def offer_batch(self, rows: np.ndarray) -> list:
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

    def offer(self, row: np.ndarray):
        return self.offer_batch(np.asarray(row)[None])[0]

    def copy_for(self, buffer: ReplayBuffer) -> "Caller":
        return Caller(buffer, self.stored, self.offered)


SEQUENTIAL = sorted(name for name, cls in BUFFERS.items() if not cls.decides_per_batch)
"""Buffers whose ``offer_batch`` makes exactly the decisions of offering the rows one by one."""


# ---------------------------------------------------------------------------- every buffer
@pytest.mark.parametrize("name", sorted(BUFFERS))
def test_fills_in_order_and_respects_capacity(name):
    buffer = make_buffer(name, capacity=30, num_classes=6, seed=0)
    stream = long_tailed_stream(400, 6, seed=1)
    caller = Caller(buffer)
    slots = [caller.offer(row) for row in stream]
    assert slots[:30] == list(range(30))
    assert all(s is None or 0 <= s < 30 for s in slots[30:])
    assert any(s is None for s in slots[30:]) and any(s is not None for s in slots[30:])
    assert len(buffer) == 30 and buffer.n_seen == 400
    assert buffer.slot_labels.shape == (30, 6)


@pytest.mark.parametrize("name", sorted(BUFFERS))
def test_bookkeeping_matches_what_the_caller_stored(name):
    stream = long_tailed_stream(3000, 9, seed=2)
    buffer = make_buffer(name, capacity=50, num_classes=9, seed=3)
    caller = Caller(buffer)
    for lo in range(0, len(stream), 10):  # mini-batches, as the replay plugin offers them
        caller.offer_batch(stream[lo : lo + 10])
    stored = caller.stored[: len(buffer)]
    assert (stored >= 0).all() and len(set(stored.tolist())) == len(buffer)  # no duplicates
    np.testing.assert_array_equal(buffer.slot_labels, stream[stored])
    np.testing.assert_array_equal(buffer.class_counts, buffer.slot_labels.sum(0))
    np.testing.assert_array_equal(buffer.n_c, stream.sum(0))
    assert buffer.n_seen == len(stream)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_offer_batch_equals_sequential_offers(name):
    stream = long_tailed_stream(500, 5, seed=4).astype(np.int64)
    one, two = Caller(make_buffer(name, 20, 5, seed=7)), Caller(make_buffer(name, 20, 5, seed=7))
    assert one.offer_batch(stream) == [two.offer(row) for row in stream]


def test_label_lists_match_per_row_nonzero():
    rows = long_tailed_stream(60, 9, seed=9)
    rows[::7] = False
    expected = [row.nonzero()[0].tolist() for row in rows]
    assert label_lists(rows) == expected
    assert label_lists(np.asfortranarray(rows)) == expected
    assert label_lists(rows[::3]) == expected[::3]  # a non-contiguous view
    assert label_lists(rows[:0]) == []


def test_a_buffer_must_decide_somehow():
    class Undecided(ReplayBuffer):
        pass

    with pytest.raises(NotImplementedError, match="_choose_slot"):
        Undecided(3, 2).offer(np.array([1, 0]))


def _tricky_stream(n: int = 1500, num_classes: int = 7) -> np.ndarray:
    stream = long_tailed_stream(n, num_classes, seed=8)
    stream[::97] = False  # a few samples without labels
    stream[1000:, num_classes - 1] = False  # the last class stops, so it can be evicted completely
    stream[:600, num_classes - 2] = False  # another one first appears once the buffer is full
    return stream


def _chunks(stream: np.ndarray, seed: int) -> list[np.ndarray]:
    """Consecutive chunks of 1 to 23 rows (one crossing any fill point)."""
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(rng.integers(1, 24, size=len(stream)))
    cuts = cuts[cuts < len(stream)]
    return np.split(stream, cuts)


@pytest.mark.parametrize("name", SEQUENTIAL)
@pytest.mark.parametrize("rho", [-0.03, 0.02, -0.5])
def test_offer_batch_in_chunks_equals_single_offers(name, rho):
    stream = _tricky_stream()
    options = {"rho": rho} if name == "prs" else {}
    one, two = make_buffer(name, 40, 7, seed=3, **options), make_buffer(name, 40, 7, seed=3, **options)
    first, second = Caller(one), Caller(two)
    batched = [slot for chunk in _chunks(stream, seed=1) for slot in first.offer_batch(chunk)]
    assert batched == [second.offer(row) for row in stream]
    assert one.rng.bit_generator.state == two.rng.bit_generator.state  # the same draws, no more
    np.testing.assert_array_equal(one.slot_labels, two.slot_labels)
    np.testing.assert_array_equal(one.class_counts, two.class_counts)
    np.testing.assert_array_equal(one.n_c, two.n_c)
    assert one.n_seen == two.n_seen == len(stream)


@pytest.mark.parametrize("name", sorted(BUFFERS))
def test_state_dict_round_trip_gives_identical_future_decisions(name):
    stream = long_tailed_stream(2000, 8, seed=5)
    original = make_buffer(name, 40, 8, seed=11)
    caller = Caller(original)
    for lo in range(0, 900, 10):
        caller.offer_batch(stream[lo : lo + 10])
    state = original.state_dict()
    _assert_plain(state)

    restored = make_buffer(name, 40, 8, seed=999)  # the seed is part of the state
    restored.load_state_dict(state)

    def go_on(caller):  # continue the same way, replay draws included
        first = [s for lo in range(900, 1500, 10) for s in caller.offer_batch(stream[lo : lo + 10])]
        drawn = caller.buffer.sample(7).tolist()
        return first, drawn, caller.offer_batch(stream[1500:])

    assert go_on(caller.copy_for(restored)) == go_on(caller)
    np.testing.assert_array_equal(original.slot_labels, restored.slot_labels)
    np.testing.assert_array_equal(original.class_counts, restored.class_counts)
    assert original.state_dict()["rng_state"] == restored.state_dict()["rng_state"]


def _assert_plain(value):
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            _assert_plain(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _assert_plain(item)
    else:
        assert isinstance(value, (np.ndarray, int, float, str, bool, type(None))), type(value)


@pytest.mark.parametrize("name", sorted(BUFFERS))
def test_state_is_a_snapshot(name):
    buffer = make_buffer(name, 10, 4, seed=0)
    caller = Caller(buffer)
    caller.offer_batch(long_tailed_stream(10, 4, seed=0))
    state = buffer.state_dict()
    before = {k: v.copy() for k, v in state.items() if isinstance(v, np.ndarray)}
    caller.offer_batch(long_tailed_stream(200, 4, seed=1))
    for key, value in before.items():
        np.testing.assert_array_equal(state[key], value)


def test_load_state_dict_rejects_other_options():
    prs = PRSBuffer(10, 4, seed=0, rho=-0.03)
    state = prs.state_dict()
    with pytest.raises(ValueError, match="rho"):
        PRSBuffer(10, 4, seed=0, rho=0.02).load_state_dict(state)
    with pytest.raises(ValueError, match="capacity"):
        PRSBuffer(11, 4).load_state_dict(state)
    with pytest.raises(ValueError, match="type"):
        ReservoirBuffer(10, 4).load_state_dict(state)
    with pytest.raises(ValueError, match="missing 'rng_state'"):
        PRSBuffer(10, 4).load_state_dict({k: v for k, v in state.items() if k != "rng_state"})


@pytest.mark.parametrize("name", sorted(BUFFERS))
def test_sample_is_without_replacement_and_uniform(name):
    buffer = make_buffer(name, 20, 3, seed=0)
    assert buffer.sample(4).shape == (0,)  # empty buffer
    Caller(buffer).offer_batch(np.eye(3, dtype=bool)[np.arange(12) % 3])
    drawn = buffer.sample(50)
    assert sorted(drawn.tolist()) == list(range(12))  # k > len: every filled slot once
    assert buffer.sample(0).shape == (0,)
    hits = np.zeros(12)
    for _ in range(3000):
        idx = buffer.sample(5)
        assert len(set(idx.tolist())) == 5 and idx.max() < 12
        hits[idx] += 1
    assert chisquare(hits).pvalue > 0.01


# ---------------------------------------------------------------------------- reservoir
def test_reservoir_keeps_every_stream_index_equally_often():
    n, capacity, reps = 40, 5, 3000
    stream = np.eye(4, dtype=bool)[np.arange(n) % 4]
    kept = np.zeros(n)
    for rep in range(reps):
        kept[feed(ReservoirBuffer(capacity, 4, seed=rep), stream)] += 1
    assert kept.sum() == capacity * reps
    assert chisquare(kept).pvalue > 0.01


# ---------------------------------------------------------------------------- PRS
def test_prs_favours_rare_classes():
    stream = long_tailed_stream(4000, 10, seed=6, tail=1.6)
    prs, crs = PRSBuffer(100, 10, seed=0, rho=-0.03), ReservoirBuffer(100, 10, seed=0)
    feed(prs, stream)
    feed(crs, stream)
    stream_share, prs_share = shares(stream.sum(0)), shares(prs.class_counts)
    rare = slice(5, 10)
    assert prs_share[rare].sum() > 2.5 * stream_share[rare].sum()
    assert prs_share[0] < 0.5 * stream_share[0]
    assert abs(shares(crs.class_counts)[rare].sum() - stream_share[rare].sum()) < 0.06
    assert prs_share.max() - prs_share.min() < 0.1  # close to balanced (rho < 0 but near 0)


def test_prs_matches_the_reference_in_distribution():
    stream = long_tailed_stream(1200, 8, seed=7)
    ours = np.mean([shares(_run(PRSBuffer(60, 8, seed=s), stream)) for s in range(6)], axis=0)
    ref = np.mean([shares(_run(ReferencePRS(60, 8, seed=100 + s), stream)) for s in range(6)], axis=0)
    np.testing.assert_allclose(ours, ref, atol=0.015)


def _run(buffer, stream):
    for row in stream:
        buffer.offer(row)
    assert (buffer.class_counts == buffer.slot_labels.sum(0)).all()
    return buffer.class_counts


@pytest.mark.parametrize("batch", [None, 10])
@pytest.mark.parametrize("rho", [-0.03, 0.02, -0.5])
def test_prs_same_seed_makes_the_same_decisions_as_the_reference(rho, batch):
    stream = _tricky_stream()
    ours, ref = PRSBuffer(40, 7, seed=3, rho=rho), ReferencePRS(40, 7, seed=3, rho=rho)
    if batch is None:
        decisions = [ours.offer(r) for r in stream]
    else:  # as cml_bench/replay.py offers them: one call per mini-batch
        decisions = [s for lo in range(0, len(stream), batch) for s in ours.offer_batch(stream[lo : lo + batch])]
    assert decisions == [ref.offer(r) for r in stream]
    np.testing.assert_array_equal(ours.slot_labels, ref.slot_labels)


def _leaving_stream() -> np.ndarray:
    """With capacity 5 and rho -3, classes leave the buffer completely and come back (one of them
    holding more than half of Z when it leaves)."""
    stream = long_tailed_stream(1500, 7, seed=0)
    stream[300:1000, 5:] = False
    return stream


@pytest.mark.parametrize("batch", [None, 10])
def test_prs_classes_leaving_and_reentering_as_the_reference(batch):
    stream = _leaving_stream()
    ours, ref = PRSBuffer(5, 7, seed=0, rho=-3.0), ReferencePRS(5, 7, seed=0, rho=-3.0)
    if batch is None:
        decisions = [ours.offer(r) for r in stream]
    else:
        decisions = [s for lo in range(0, len(stream), batch) for s in ours.offer_batch(stream[lo : lo + batch])]
    assert decisions == [ref.offer(r) for r in stream]
    np.testing.assert_array_equal(ours.slot_labels, ref.slot_labels)


@pytest.mark.parametrize("case", ["tricky", "leaving", "extreme"])
@pytest.mark.parametrize(
    "slack, resync",
    [(0.5, 64), (0.0, 10**9)],  # the exact Z very often; the estimate alone, never recomputed
)
def test_prs_estimate_of_z_never_changes_a_decision(monkeypatch, slack, resync, case):
    monkeypatch.setattr(prs_module, "Z_SLACK", slack)
    monkeypatch.setattr(prs_module, "Z_RESYNC", resync)
    if case == "tricky":
        stream, capacity, seed, rho = _tricky_stream(3000), 40, 5, -0.5
    elif case == "leaving":
        stream, capacity, seed, rho = _leaving_stream(), 5, 0, -3.0
    else:  # one step of n_c can shrink Z by orders of magnitude: the estimate must not be used then
        stream, capacity, seed, rho = _leaving_stream(), 5, 1, -50.0
    ours, ref = PRSBuffer(capacity, 7, seed=seed, rho=rho), ReferencePRS(capacity, 7, seed=seed, rho=rho)
    decisions, estimated = [], 0
    for lo in range(0, len(stream), 10):
        decisions += ours.offer_batch(stream[lo : lo + 10])
        if ours._z_age < resync and ours._z_est >= ours._z_floor:  # it would be used: (nearly) exact
            z = float(ours._ppow.dot(ours._ones))
            assert abs(ours._z_est - z) <= 1e-12 * z
            estimated += 1
    assert estimated > 50
    assert decisions == [ref.offer(r) for r in stream]


def test_prs_sample_without_labels_is_stored_while_filling_then_never():
    prs = PRSBuffer(5, 3, seed=0)
    empty = np.zeros(3, dtype=bool)
    assert prs.offer(empty) == 0
    prs.offer_batch(np.eye(3, dtype=bool)[[0, 1, 2, 0]])
    assert all(prs.offer(empty) is None for _ in range(200))
    assert prs.n_seen == 205 and prs.n_c.tolist() == [2, 1, 1]


def test_prs_buffer_of_label_less_samples_admits_nothing():
    empty = np.zeros((3, 4), dtype=bool)
    for prs in (PRSBuffer(3, 4, seed=0), ReferencePRS(3, 4, seed=0)):
        assert [prs.offer(row) for row in empty] == [0, 1, 2]
        assert [prs.offer(row) for row in np.eye(4, dtype=bool)] == [None] * 4


def test_prs_admits_a_never_seen_class_once_full():
    prs = PRSBuffer(6, 4, seed=0)
    prs.offer_batch(np.eye(4, dtype=bool)[[0, 1, 2, 0, 1, 2]])
    prs.offer_batch(np.eye(4, dtype=bool)[[0] * 50])
    assert prs.offer(np.eye(4, dtype=bool)[3]) is not None  # n_3 = 0: admission probability 1
    assert prs.class_counts[3] == 1


def test_prs_targets():
    prs = PRSBuffer(4, 3, seed=0, rho=-0.5)
    prs.offer_batch(np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=bool))
    present, p = prs.targets()
    assert present.tolist() == [True, True, False]
    w = np.array([4**-0.5, 1.0])
    np.testing.assert_allclose(p[:2], w / w.sum())
    assert p[2] == 0.0


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(capacity=0, num_classes=3), "capacity"),
        (dict(capacity=2.5, num_classes=3), "capacity"),
        (dict(capacity=True, num_classes=3), "capacity"),
        (dict(capacity=5, num_classes=0), "num_classes"),
        (dict(capacity=5, num_classes=3, seed=-1), "seed"),
    ],
)
@pytest.mark.parametrize("name", sorted(BUFFERS))
def test_bad_constructor_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BUFFERS[name](**kwargs)


@pytest.mark.parametrize("rho", [float("nan"), float("inf"), "0.1", None])
def test_bad_rho(rho):
    with pytest.raises(ValueError, match="rho"):
        PRSBuffer(5, 3, rho=rho)


@pytest.mark.parametrize("name", sorted(BUFFERS))
def test_bad_labels(name):
    buffer = make_buffer(name, 5, 3, seed=0)
    with pytest.raises(ValueError, match="shape"):
        buffer.offer(np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        buffer.offer(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        buffer.offer_batch(np.zeros(3))
    with pytest.raises(ValueError, match="0/1"):
        buffer.offer(np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="0/1"):
        buffer.offer(np.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="k"):
        buffer.sample(-1)
    assert buffer.n_seen == 0 and len(buffer) == 0  # nothing half-done


def test_make_buffer():
    buffer = make_buffer("prs", 10, 4, seed=1, rho=0.02)
    assert isinstance(buffer, PRSBuffer) and buffer.rho == 0.02 and buffer.capacity == 10
    assert isinstance(make_buffer("reservoir", 10, 4, seed=1), ReservoirBuffer)
    assert all(issubclass(cls, ReplayBuffer) for cls in BUFFERS.values())
    with pytest.raises(ValueError) as err:
        make_buffer("prs_reservior", 10, 4, seed=0)
    assert str(err.value) == "Unknown buffer 'prs_reservior'. Available: exstream, gss, ocdm, prs, reservoir."
    with pytest.raises(ValueError, match="does not take option.*rho"):
        make_buffer("reservoir", 10, 4, seed=0, rho=0.1)
