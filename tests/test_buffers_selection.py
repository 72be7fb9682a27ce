"""What each buffer favours, as its paper says: GSS gradient-diverse samples, ExStream per-class
capacity and merging near-duplicates first, OCDM a memory label distribution close to its target.
Invariants shared by every buffer are in ``test_buffers.py``."""
from __future__ import annotations

import numpy as np
import pytest

from cml_bench.buffers import ExStreamBuffer, GSSBuffer, OCDMBuffer, ReservoirBuffer
from cml_bench.buffers.contract import long_tailed_stream
from cml_bench.buffers.gss import max_cosine
from cml_bench.buffers.ocdm import xlogx


def one_hot(classes, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=bool)[np.asarray(classes)]


# ---------------------------------------------------------------------------- GSS
def test_max_cosine():
    keys = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, -1.0]])
    others = np.array([[2.0, 0.0], [0.0, -3.0]])
    np.testing.assert_allclose(max_cosine(keys, others), [1.0, 0.0, 2**-0.5])


def _gss_stream(n: int, diverse_every: int, dim: int = 40, seed: int = 0):
    """Gradients: most samples near one direction u (redundant), every k-th one pointing away from u
    in a random direction (diverse). Returns (keys [n, dim], is_diverse [n])."""
    rng = np.random.default_rng(seed)
    u = np.zeros(dim)
    u[0] = 1.0
    keys = u + 0.05 * rng.normal(size=(n, dim))
    diverse = np.arange(n) % diverse_every == diverse_every - 1
    keys[diverse] = -0.3 * u + rng.normal(size=(diverse.sum(), dim)) / np.sqrt(dim)
    return keys, diverse


def _feed_gss(buffer, keys, labels, batch: int = 10):
    stored = np.full(buffer.capacity, -1)
    for lo in range(0, len(keys), batch):
        idx = np.arange(lo, min(lo + batch, len(keys)))
        slots = buffer.offer_batch(labels[idx], keys=keys[idx], slot_keys=lambda s: keys[stored[s]])
        for i, slot in zip(idx, slots):
            if slot is not None:
                stored[slot] = i
    return stored[: len(buffer)]


def test_gss_keeps_gradient_diverse_samples_over_redundant_ones():
    keys, diverse = _gss_stream(3000, diverse_every=10)
    labels = one_hot(np.zeros(3000, dtype=int), 3)
    gss = GSSBuffer(50, 3, seed=0, n_compare=10)
    stored = _feed_gss(gss, keys, labels)
    # once full, a redundant sample (cosine ~1 with the compared ones) never enters
    assert not (~diverse[stored] & (stored >= 50)).any()
    # the diverse tenth of the stream holds several times its share of the buffer (reservoir: a tenth)
    assert diverse[stored].mean() > 0.3


def test_gss_replaces_in_proportion_to_the_stored_scores():
    """A candidate slot is drawn with probability C_i / sum C and replaced with C_i / (C_i + c)."""
    gss = GSSBuffer(10, 2, seed=0, n_compare=3)
    gss.offer_batch(one_hot([0] * 10, 2), keys=np.ones((10, 2)))
    state = gss.state_dict()
    state["scores"] = np.array([2.0] * 5 + [0.0] * 5)  # slots 5-9: gradients opposite to all kept
    incoming = np.array([[-0.5, 0.75**0.5]])  # cosine -0.5 with the compared gradients: c = 0.5
    replaced = []
    for seed in range(1500):
        state["rng_state"] = np.random.Generator(np.random.PCG64(seed)).bit_generator.state
        gss.load_state_dict(state)
        replaced.append(gss.offer_batch(one_hot([1], 2), keys=incoming,
                                        slot_keys=lambda s: np.tile([1.0, 0.0], (len(s), 1)))[0])
    hits = [r for r in replaced if r is not None]
    assert set(hits) <= {0, 1, 2, 3, 4}  # a slot with score 0 is never replaced
    assert len(hits) / len(replaced) == pytest.approx(2.0 / 2.5, abs=0.04)
    # an incoming sample with c >= 1 (cosine >= 0 with some compared gradient) never enters
    gss.load_state_dict(state)
    assert gss.offer_batch(one_hot([1], 2), keys=np.array([[0.0, 1.0]]),
                           slot_keys=lambda s: np.tile([1.0, 0.0], (len(s), 1))) == [None]


def test_gss_needs_keys_and_slot_keys():
    gss = GSSBuffer(4, 2, seed=0)
    with pytest.raises(ValueError, match="keys="):
        gss.offer(np.array([1, 0]))
    gss.offer_batch(one_hot([0, 1], 2), keys=np.ones((2, 3)))  # empty buffer: nothing to compare
    with pytest.raises(ValueError, match="slot_keys"):
        gss.offer_batch(one_hot([0], 2), keys=np.ones((1, 3)))
    with pytest.raises(ValueError, match="shape"):
        gss.offer_batch(one_hot([0], 2), keys=np.ones((2, 3)), slot_keys=lambda s: np.ones((len(s), 3)))
    with pytest.raises(ValueError, match="slot_keys returned"):
        gss.offer_batch(one_hot([0], 2), keys=np.ones((1, 3)), slot_keys=lambda s: np.ones((1, 4)))
    with pytest.raises(ValueError, match="finite"):
        gss.offer_batch(one_hot([0], 2), keys=np.full((1, 3), np.nan), slot_keys=lambda s: np.ones((len(s), 3)))
    with pytest.raises(ValueError, match="n_compare"):
        GSSBuffer(4, 2, n_compare=0)


# ---------------------------------------------------------------------------- ExStream
def test_exstream_merges_the_closest_pair_first():
    ex = ExStreamBuffer(4, 2, seed=0)
    row = one_hot([0], 2)
    points = np.array([[0.0], [10.0], [20.0], [20.001]])
    assert ex.offer_batch(np.repeat(row, 4, 0), keys=points) == [0, 1, 2, 3]
    # full, class 0 at capacity: 20 and 20.001 merge into slot 2, the new point takes slot 3
    assert ex.offer(row[0], key=np.array([35.0])) == 3
    np.testing.assert_allclose(ex.points[:, 0], [0.0, 10.0, 20.0005, 35.0])
    np.testing.assert_allclose(ex.weights, [1, 1, 2, 1])
    # a near-duplicate of a stored point joins it: no slot, the point moves to the weighted mean
    assert ex.offer(row[0], key=np.array([10.3])) is None
    np.testing.assert_allclose(ex.points[:, 0], [0.0, 10.15, 20.0005, 35.0])
    np.testing.assert_allclose(ex.weights, [1, 2, 2, 1])
    assert ex.weights.sum() == ex.n_seen  # every stream sample is stood for by one point


def test_exstream_merged_point_keeps_the_heavier_members_slot():
    ex = ExStreamBuffer(3, 1, seed=0)
    ex.offer_batch(np.ones((3, 1), dtype=bool), keys=np.array([[5.0], [0.0], [100.0]]))
    assert ex.offer(np.ones(1), key=np.array([0.2])) is None  # joins slot 1 (0.1, count 2)
    # 5 (count 1) and 0.1 (count 2) are now the closest pair: slot 1 keeps the merged point
    assert ex.offer(np.ones(1), key=np.array([200.0])) == 0
    np.testing.assert_allclose(ex.points[:, 0], [200.0, (5.0 + 2 * 0.1) / 3, 100.0])
    np.testing.assert_allclose(ex.weights, [1, 3, 1])


def test_exstream_shares_the_buffer_equally_among_seen_classes():
    ex = ExStreamBuffer(20, 4, seed=0)
    rng = np.random.default_rng(0)
    # class 0 alone fills the buffer, then the four classes arrive with a 10:1 imbalance
    first = one_hot(np.zeros(40, dtype=int), 4)
    later = one_hot(rng.choice(4, size=2000, p=[0.7, 0.1, 0.1, 0.1]), 4)
    stream = np.concatenate([first, later])
    keys = rng.normal(size=(len(stream), 5))
    for lo in range(0, len(stream), 10):
        ex.offer_batch(stream[lo : lo + 10], keys=keys[lo : lo + 10])
    assert ex.class_capacity() == 5
    assert np.bincount(ex.groups, minlength=5)[:4].tolist() == [5, 5, 5, 5]
    assert ex.weights.sum() == len(stream)  # merged, never dropped


def test_exstream_groups_a_multi_label_sample_by_its_rarest_label():
    ex = ExStreamBuffer(10, 3, seed=0)
    ex.offer_batch(one_hot([0, 0, 0, 1], 3), keys=np.zeros((4, 2)))
    ex.offer(np.array([1, 1, 0]), key=np.ones(2))  # class 1 seen once, class 0 three times
    ex.offer(np.array([0, 0, 0]), key=np.ones(2))  # no labels: its own group
    assert ex.groups.tolist() == [0, 0, 0, 1, 1, 3]


def test_exstream_label_less_samples_go_first_and_never_displace():
    ex = ExStreamBuffer(3, 2, seed=0)
    ex.offer_batch(np.array([[0, 0], [1, 0], [1, 0]]), keys=np.array([[0.0], [1.0], [2.0]]))
    assert ex.offer(np.array([0, 0]), key=np.array([5.0])) is None
    assert ex.offer(np.array([0, 1]), key=np.array([5.0])) == 0  # class 1 under capacity: takes slot 0
    assert ex.groups.tolist() == [1, 0, 0]


def test_exstream_rejects_keys_of_another_dimension():
    ex = ExStreamBuffer(3, 2, seed=0)
    ex.offer(np.array([1, 0]), key=np.zeros(4))
    with pytest.raises(ValueError, match="dimension 4"):
        ex.offer(np.array([1, 0]), key=np.zeros(5))


# ---------------------------------------------------------------------------- OCDM
def _kl(counts: np.ndarray, p: np.ndarray) -> float:
    q = counts / counts.sum()
    held = q > 0
    return float((q[held] * np.log(q[held] / p[held])).sum())


def test_ocdm_memory_is_closer_to_its_target_than_reservoirs():
    stream = long_tailed_stream(4000, 10, seed=6, tail=1.6)
    for rho in (0.0, -0.03, 0.5):
        ocdm, crs = OCDMBuffer(100, 10, seed=0, rho=rho), ReservoirBuffer(100, 10, seed=0)
        for lo in range(0, len(stream), 10):
            ocdm.offer_batch(stream[lo : lo + 10])
            crs.offer_batch(stream[lo : lo + 10])
        p = ocdm.target()
        assert ocdm.divergence() == pytest.approx(_kl(ocdm.class_counts, p))
        assert ocdm.divergence() < 0.1 * _kl(crs.class_counts, p)
    share = ocdm.class_counts / ocdm.class_counts.sum()
    ocdm0 = OCDMBuffer(100, 10, seed=0, rho=0.0)
    for lo in range(0, len(stream), 10):
        ocdm0.offer_batch(stream[lo : lo + 10])
    share0 = ocdm0.class_counts / ocdm0.class_counts.sum()
    assert share0.max() - share0.min() < 0.03  # rho = 0: (nearly) uniform over the classes
    assert share[0] > share0[0]  # rho > 0 leaves the frequent class more


def _brute_force_greedy(memory: np.ndarray, batch: np.ndarray, p: np.ndarray) -> float:
    """The paper's greedy update written plainly: r times drop the candidate whose removal leaves
    the smallest KL(q || p); return the final KL (ties change the chosen sample, not the value)."""
    pool = [row for row in np.concatenate([memory, batch]).astype(float)]
    for _ in range(len(batch)):
        best = None
        for j in range(len(pool)):
            counts = sum(pool[:j] + pool[j + 1 :], np.zeros(len(p)))
            value = _kl(counts, p)
            if best is None or value < best[0] - 1e-12:
                best = (value, j)
        pool.pop(best[1])
    return _kl(sum(pool, np.zeros(len(p))), p)


@pytest.mark.parametrize("seed", range(4))
def test_ocdm_update_is_the_papers_greedy(seed):
    rng = np.random.default_rng(seed)
    memory = rng.random((12, 5)) < 0.35
    memory[memory.sum(1) == 0, 0] = True
    batch = rng.random((4, 5)) < 0.35
    ocdm = OCDMBuffer(12, 5, seed=seed, rho=-0.5)
    ocdm.offer_batch(memory)
    slots = ocdm.offer_batch(batch)
    expected = _brute_force_greedy(memory, batch, ocdm.target())
    assert ocdm.divergence() == pytest.approx(expected, abs=1e-12)
    kept = [k for k, s in enumerate(slots) if s is not None]
    assert len({slots[k] for k in kept}) == len(kept)  # distinct slots for the kept incoming rows
    for k in kept:
        np.testing.assert_array_equal(ocdm.slot_labels[slots[k]], batch[k])


def test_ocdm_fills_first_then_decides_the_rest_of_the_batch():
    ocdm = OCDMBuffer(3, 2, seed=0, rho=0.0)
    slots = ocdm.offer_batch(one_hot([0, 0, 1, 1, 1], 2))
    assert slots[:3] == [0, 1, 2]
    # memory [0, 0, 1] + incoming [1, 1], target uniform: 2 of the 5 go, leaving a 2 / 1 split
    assert sorted(ocdm.class_counts.tolist()) == [1, 2] and ocdm.n_c.tolist() == [2, 3]


def test_xlogx():
    np.testing.assert_allclose(xlogx(np.array([0.0, 1.0, 2.0, -1.0])), [0.0, 0.0, 2 * np.log(2), 0.0])


def test_ocdm_label_less_samples():
    ocdm = OCDMBuffer(3, 2, seed=0)
    ocdm.offer_batch(np.zeros((3, 2), dtype=bool))
    ocdm.offer_batch(np.zeros((2, 2), dtype=bool))  # no labels anywhere: every removal ties
    assert len(ocdm) == 3
    assert ocdm.offer(np.array([1, 0])) is not None  # a labelled sample displaces a label-less one
    assert ocdm.class_counts.tolist() == [1, 0]
    assert np.isnan(OCDMBuffer(2, 2).divergence())


def test_ocdm_ties_are_broken_at_random():
    # a memory of identical samples and one more: which slot goes varies with the seed
    freed = set()
    for seed in range(8):
        ocdm = OCDMBuffer(6, 2, seed=seed, rho=0.0)
        ocdm.offer_batch(one_hot([0] * 6, 2))
        freed.add(ocdm.offer(np.array([0, 1])))
    assert len(freed) > 2 and None not in freed


def test_exstream_more_classes_than_slots():
    ex = ExStreamBuffer(3, 6, seed=0)
    slots = ex.offer_batch(one_hot([0, 1, 2, 3, 4, 5, 3], 6), keys=np.arange(7.0)[:, None])
    assert slots[:3] == [0, 1, 2] and all(s is not None for s in slots[3:6])
    assert ex.class_capacity() == 1 and sorted(ex.groups.tolist()) == [3, 4, 5]
    assert slots[6] is None  # class 3 at its capacity of 1: the new sample joins its point
