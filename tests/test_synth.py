"""The embedded benchmark: determinism, structure, COCOseq's frequency profile, caching."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.synth_cocoseq import (
    COCOSEQ_TASK_CLASSES, COCOSEQ_TASK_ORDER, COCOSEQ_TRAIN_COUNTS, CLASS_NAMES, SynthCocoseqOptions,
    build, cache_path, class_groups, generate, load_or_generate, scaled_counts,
)

SMALL = SynthCocoseqOptions(scale=0.02, image_size=32, test_per_class=2, clutter=2, sprite_min=4, sprite_max=6)


@pytest.fixture(scope="module")
def arrays():
    return generate(SMALL)


def test_deterministic_for_a_seed(arrays):
    again = generate(SMALL)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    other = generate(SynthCocoseqOptions(**{**SMALL.__dict__, "data_seed": 1}))
    assert not np.array_equal(arrays["train_x0"], other["train_x0"])


def test_tasks_have_disjoint_class_sets_of_cocoseq_sizes(arrays):
    sizes = []
    for position in range(4):
        used = np.flatnonzero(arrays[f"train_y{position}"].sum(0))
        assert set(used) == set(COCOSEQ_TASK_CLASSES[COCOSEQ_TASK_ORDER[position]])
        assert set(np.flatnonzero(arrays[f"test_y{position}"].sum(0))) == set(used)
        sizes.append(len(used))
    assert sizes == [24, 14, 18, 14]  # COCOseq's tasks 0, 3, 1, 2 in stream order
    assert sorted(sizes) == [14, 14, 18, 24]


def test_frequencies_follow_cocoseq_counts(arrays):
    totals = sum(arrays[f"train_y{k}"].sum(0) for k in range(4))
    assert np.array_equal(totals, scaled_counts(SMALL.scale))
    counts = scaled_counts(0.1)
    assert np.corrcoef(counts, COCOSEQ_TRAIN_COUNTS)[0, 1] > 0.999


def test_counts_match_the_real_cocoseq_labels(shared_dir):
    data = json.loads((shared_dir / "data/prs_splits/COCOseq/labels_cocoseq.json").read_text())
    assert tuple(data["classes"]) == CLASS_NAMES
    counts = np.zeros(70, int)
    for task, rows in data["train"].items():
        classes = set()
        for _, _, labels in rows:
            counts[labels] += 1
            classes.update(labels)
        assert classes == set(COCOSEQ_TASK_CLASSES[int(task)])
    assert tuple(counts) == COCOSEQ_TRAIN_COUNTS


@pytest.mark.parametrize("scale", [0.1, 0.3, 1.0])
def test_groups_are_the_published_lists(shared_dir, scale):
    groups = class_groups(scaled_counts(scale), scale)
    for name in ("majority", "moderate", "minority"):
        published = json.loads((shared_dir / f"data/prs_splits/groups/cocoseq_{name}.json").read_text())
        assert {CLASS_NAMES[c] for c in groups[name]} == set(published)


def test_label_co_occurrence_and_balanced_test(arrays):
    per_image = np.concatenate([arrays[f"train_y{k}"].sum(1) for k in range(4)])
    assert per_image.min() >= 1 and (per_image > 1).mean() > 0.08
    test = arrays["test_y0"]
    anchored = test.sum(0)
    assert anchored[list(COCOSEQ_TASK_CLASSES[0])].min() >= SMALL.test_per_class


def test_images_are_uint8_with_the_configured_size(arrays):
    x = arrays["train_x0"]
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32)
    assert x.std() > 20  # cluttered, not blank


def test_cache_is_written_and_reused(tmp_path):
    options = SynthCocoseqOptions(scale=0.01, image_size=32, test_per_class=1, sprite_min=4, sprite_max=6, cache_dir=str(tmp_path))
    first = load_or_generate(options)
    assert cache_path(options).is_file()
    assert list(tmp_path.glob(".*tmp")) == []
    second = load_or_generate(options)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    cache_path(options).write_bytes(b"corrupt")
    third = load_or_generate(options)  # an unreadable cache is rebuilt, not an error
    assert np.array_equal(first["train_x0"], third["train_x0"])


def test_avalanche_stream_items_and_metadata(tmp_path):
    bench = build(SynthCocoseqOptions(scale=0.01, image_size=32, test_per_class=1, sprite_min=4, sprite_max=6, cache_dir=str(tmp_path)))
    assert len(bench.train_stream) == 4 and len(bench.test_stream) == 4
    x, y, t = bench.train_stream[1].dataset[0]
    assert x.dtype.is_floating_point is False and y.shape == (70,) and t == 1
    assert bench.meta.num_classes == 70 and bench.meta.task_ids == (0, 3, 1, 2)
    assert sum(len(g) for g in bench.meta.groups.values()) == 70


def test_bad_options():
    with pytest.raises(ValueError, match="scale must be in"):
        SynthCocoseqOptions(scale=0)
    with pytest.raises(ValueError, match="image_size must be >= 32"):
        SynthCocoseqOptions(image_size=16)


@pytest.mark.parametrize("options, expected", [
    (SMALL, "1fc78a642ef30a9de8cb45b40647918050e7fbf04fee1287e064033cc3690064"),
    (SynthCocoseqOptions(scale=0.03, image_size=64, test_per_class=3, clutter=3, sprite_min=12, sprite_max=16,
                         noise=10.0, data_seed=0),  # 64 px: the noise is drawn in several chunks per task
     "9e22d2916d64b0e28da2ca00b905d9a874ac4621f2362e81708fcfe0d2dae82a"),
])
def test_images_are_byte_identical_to_the_first_generator(options, expected):
    """The painter was made faster without changing a byte: digests of what the original code drew
    (GENERATOR_VERSION 1). A change that alters the images must bump GENERATOR_VERSION and this digest."""
    import hashlib

    arrays = generate(options)
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(arrays[key].tobytes())
    assert digest.hexdigest() == expected
