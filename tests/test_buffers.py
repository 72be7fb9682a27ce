"""Replay buffers: the contract over every buffer class, slot semantics, state, PRS against its
plain reference.

The contract (``cml_bench/buffers/contract.py``: capacity, no duplicates, bookkeeping, batches,
state round trip, sampling) is checked on every ``ReplayBuffer`` subclass found once the plugins
are discovered, a buffer defined in a strategy plugin file (``--plugins`` / ``$CML_BENCH_PLUGINS``)
included. The tests offer samples through ``Caller``, which plays the replay plugin. What each
paper says its buffer favours is in ``test_buffers_selection.py``.
"""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

import cml_bench.buffers.prs as prs_module
from benches.reference_prs import ReferencePRS
from cml_bench.buffers import (BufferContractError, KeyedBuffer, PRSBuffer, ReplayBuffer, ReservoirBuffer,
                               buffer_classes, check_contract)
from cml_bench.buffers.base import label_lists
from cml_bench.buffers.contract import Caller, long_tailed_stream
from cml_bench.registry import STRATEGIES

STRATEGIES.discover()  # a strategy plugin file may define its own buffer: import the plugins first
EVERY = buffer_classes()
SHIPPED = [cls for cls in EVERY if cls.__module__.startswith("cml_bench.buffers.")]
SEQUENTIAL = [cls for cls in SHIPPED if not cls.decides_per_batch]
"""Buffers whose ``offer_batch`` makes exactly the decisions of offering the rows one by one."""


def _name(cls: type) -> str:
    return cls.__qualname__


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


# ---------------------------------------------------------------------------- every buffer
@pytest.mark.parametrize("cls", EVERY, ids=_name)
def test_buffer_contract(cls):
    check_contract(cls)


def test_every_shipped_buffer_is_checked():
    shipped = {"ExStreamBuffer", "GSSBuffer", "OCDMBuffer", "PRSBuffer", "ReservoirBuffer"}
    assert {c.__name__ for c in SHIPPED} == shipped


@pytest.mark.parametrize("cls", SHIPPED, ids=_name)
def test_shipped_buffers_admit_some_and_reject_some_once_full(cls):
    caller = Caller(cls(30, 6, seed=0))
    slots = [caller.offer(row) for row in long_tailed_stream(400, 6, seed=1)][30:]
    assert any(s is None for s in slots) and any(s is not None for s in slots)


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


@pytest.mark.parametrize("cls", SEQUENTIAL, ids=_name)
@pytest.mark.parametrize("rho", [-0.03, 0.02, -0.5])
def test_offer_batch_in_chunks_equals_single_offers(cls, rho):
    stream = _tricky_stream()
    options = {"rho": rho} if cls is PRSBuffer else {}
    one, two = cls(40, 7, seed=3, **options), cls(40, 7, seed=3, **options)
    first, second = Caller(one), Caller(two)
    batched = [slot for chunk in _chunks(stream, seed=1) for slot in first.offer_batch(chunk)]
    assert batched == [second.offer(row) for row in stream]
    assert one.rng.bit_generator.state == two.rng.bit_generator.state  # the same draws, no more
    np.testing.assert_array_equal(one.slot_labels, two.slot_labels)
    np.testing.assert_array_equal(one.class_counts, two.class_counts)
    np.testing.assert_array_equal(one.n_c, two.n_c)
    assert one.n_seen == two.n_seen == len(stream)


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


@pytest.mark.parametrize("cls", SHIPPED, ids=_name)
def test_sample_is_uniform(cls):
    buffer = cls(20, 3, seed=0)  # without replacement, k > len: the contract's sampling rule
    Caller(buffer).offer_batch(np.eye(3, dtype=bool)[np.arange(12) % 3])
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
@pytest.mark.parametrize("cls", SHIPPED, ids=_name)
def test_bad_constructor_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("rho", [float("nan"), float("inf"), "0.1", None])
def test_bad_rho(rho):
    with pytest.raises(ValueError, match="rho"):
        PRSBuffer(5, 3, rho=rho)


@pytest.mark.parametrize("cls", EVERY, ids=_name)
def test_bad_labels(cls):
    buffer = cls(5, 3, seed=0)
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


# ---------------------------------------------------------------------------- the contract itself
class RingBuffer(ReplayBuffer):
    """Overwrites its oldest slot; keeps its position in its state."""

    def __init__(self, capacity: int, num_classes: int, seed: int = 0) -> None:
        super().__init__(capacity, num_classes, seed)
        self.head = 0

    def _choose_slot(self, row, labels):
        slot, self.head = self.head, (self.head + 1) % self.capacity
        return slot

    def state_dict(self):
        return {**super().state_dict(), "head": self.head}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.head = int(state["head"])


class LeakyRingBuffer(RingBuffer):
    """Forgets its position on load: a resumed run would overwrite other slots."""

    def load_state_dict(self, state):
        ReplayBuffer.load_state_dict(self, state)


class _OutOfRange(ReservoirBuffer):
    def _choose_slot(self, row, labels):
        return self._filled if self._filled < self.capacity else self.capacity


class _ForgetsClasses(ReservoirBuffer):
    """Writes its slots but never counts the classes it is offered (n_c)."""

    def _offer_rows(self, rows):
        out = []
        for row, labels in zip(rows, label_lists(rows)):
            slot = self._choose_slot(row, labels)
            if slot is not None:
                self._write(slot, row, labels)
            self._n_seen += 1
            out.append(slot)
        return out


class _FirstOfBatch(ReservoirBuffer):
    """Once full, admits only the first row of a batch, without declaring decides_per_batch."""

    def _offer_rows(self, rows):
        out = super()._offer_rows(rows[:1])
        for row, labels in zip(rows[1:], label_lists(rows[1:])):
            slot = self._filled if self._filled < self.capacity else None
            if slot is not None:
                self._write(slot, row, labels)
            self._n_seen += 1
            for c in labels:
                self._n[c] += 1
            out.append(slot)
        return out


class _WithReplacement(ReservoirBuffer):
    def sample(self, k):
        return self.rng.integers(0, len(self), size=min(k, len(self)) if len(self) else 0)


@pytest.mark.parametrize("cls, rule", [
    (_OutOfRange, "capacity: .*AssertionError"),
    (_ForgetsClasses, "bookkeeping: .*n_c differs"),
    (_FirstOfBatch, "batches: .*offer_batch decided otherwise than one offer per row"),
    (LeakyRingBuffer, "state round trip: .*a restored buffer decides or draws otherwise"),
    (_WithReplacement, "sampling: .*sample\\(k > len\\)"),
], ids=lambda x: x.__name__ if isinstance(x, type) else "")
def test_the_contract_names_the_rule_a_buffer_breaks(cls, rule):
    check_contract(RingBuffer)  # the same design, kept right
    with pytest.raises(BufferContractError, match=f"^{cls.__qualname__} breaks the buffer contract, {rule}"):
        check_contract(cls)


def test_buffer_classes_are_every_concrete_subclass_at_any_depth():
    class Deeper(PRSBuffer):
        pass

    found = buffer_classes()
    assert Deeper in found and RingBuffer in found and LeakyRingBuffer in found
    assert ReplayBuffer not in found and KeyedBuffer not in found  # bases that decide nothing
    with pytest.raises(TypeError, match="ReplayBuffer subclass"):
        check_contract("prs")


PLUGIN = '''"""``ring``: online replay from a ring memory (a user's strategy file with its own buffers)."""
from dataclasses import dataclass

from cml_bench.buffers.base import ReplayBuffer
from cml_bench.replay import ReplayOptions, replay_plugin
from cml_bench.strategy import StrategyContext, register_strategy


{buffers}

@dataclass(frozen=True)
class RingOptions(ReplayOptions):
    """buffer_size and replay_batch_size."""


@register_strategy("user-ring", options=RingOptions, description="online replay from a ring memory")
def build(options: RingOptions, ctx: StrategyContext) -> list:
    return [replay_plugin(RingBuffer, options, ctx)]
'''


def test_the_contract_covers_a_buffer_defined_in_a_strategy_plugin_file(tmp_path):
    """This file's contract test, run with a plugin folder (as ``--plugins`` sets it), checks the
    buffers that the user's strategy file defines: the sound one passes, the leaky one fails."""
    (tmp_path / "plugins").mkdir()
    buffers = "\n\n".join(inspect.getsource(cls) for cls in (RingBuffer, LeakyRingBuffer))
    (tmp_path / "plugins" / "user_ring.py").write_text(PLUGIN.format(buffers=buffers))
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(Path(__file__)),
         "-k", "test_buffer_contract and RingBuffer"], cwd=root, capture_output=True, text=True, timeout=600,
        env={**os.environ, "CML_BENCH_PLUGINS": str(tmp_path / "plugins"), "PYTHONPATH": str(root)})
    out = done.stdout
    assert "PASSED tests/test_buffers.py::test_buffer_contract[RingBuffer]" in out, out[-3000:] + done.stderr[-2000:]
    assert "FAILED tests/test_buffers.py::test_buffer_contract[LeakyRingBuffer]" in out, out[-3000:]
    assert "LeakyRingBuffer breaks the buffer contract, state round trip" in out
    assert done.returncode == 1 and "1 failed, 1 passed" in out
