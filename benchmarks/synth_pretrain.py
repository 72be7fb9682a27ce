"""``synth-pretrain``: the pretraining source of the embedded default, the "ImageNet" of its sprite world.

The paper's backbones start from ImageNet weights: generic features learnt on other images and
other classes. This source gives ``synth-cocoseq`` the same: ``num_classes`` sprite classes drawn by
the benchmark's own :class:`~benchmarks.synth_cocoseq.Painter` (palette, 4x4 colour grids, sizes,
clutter, noisy colour field), multi-label (1-3 labels per image, classes uniform), none of which is
one of the benchmark's sprites:

* every sprite here (classes *and* this source's own clutter pool) differs in at least
  ``MIN_DISTANCE`` of its 16 grid cells from every sprite of ``synth-cocoseq`` for each
  ``data_seed`` in ``RESERVED_DATA_SEEDS``: its 70 class sprites, and its 200 clutter sprites too
  (a pretraining class equal to a benchmark clutter sprite would teach the backbone to report a
  sprite the benchmark wants ignored; a pretraining clutter sprite equal to a benchmark class
  would teach it to ignore a class). Two random grids agree on 2 of 16 cells on average, so the
  rejection removes only candidates that are near copies;
* images are drawn in several ``styles`` (sprite sizes, clutter, noise) around the benchmark's
  default, as ImageNet's varied photographs are: the features must not depend on one drawing.

So pretraining teaches colour layouts and positions among clutter, not the benchmark's classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.synth_cocoseq import (CLUTTER_SPRITES, GENERATOR_VERSION, Painter, SynthCocoseqOptions,
                                      draw_grids, sprite_grids)

RESERVED_DATA_SEEDS = range(100)
"""``synth-cocoseq`` data seeds whose sprites the source avoids (the default 0, and every seed this
project uses for validation or variants, which are all below 100)."""
MIN_DISTANCE = 6
"""Least number of differing grid cells between a source sprite and any reserved benchmark sprite."""

# (sprite_min, sprite_max, clutter, noise) at 48 px, scaled with image_size: the benchmark's default
# drawing (9-12 px, 3 clutter, noise 10), a smaller and busier one, and a larger and cleaner one.
STYLES_48 = ((9, 12, 3, 10.0), (7, 10, 5, 16.0), (10, 14, 2, 6.0))


@dataclass(frozen=True)
class SynthPretrainOptions:
    """Options of the pretraining source.

    Attributes:
        num_classes: sprite classes (labels).
        train_images, val_images: images of the training and held-out validation split.
        image_size: side of the square images in pixels (the benchmark's).
        data_seed: seed of the sprites, label sets and images (the source's own; it does not select
            any benchmark data).
    """

    num_classes: int = 100
    train_images: int = 24000
    val_images: int = 2000
    image_size: int = 48
    data_seed: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 4:
            raise ValueError(f"pretrain source num_classes must be >= 4, got {self.num_classes}.")
        if self.train_images < 1 or self.val_images < 1:
            raise ValueError("pretrain source train_images and val_images must be >= 1.")
        if self.image_size < 32:
            raise ValueError(f"pretrain source image_size must be >= 32, got {self.image_size}.")

    def styles(self) -> list[SynthCocoseqOptions]:
        """The drawing styles as painter options at ``image_size`` (sizes scaled from 48 px)."""
        out = []
        for lo, hi, clutter, noise in STYLES_48:
            lo, hi = (max(4, round(v * self.image_size / 48)) for v in (lo, hi))
            out.append(SynthCocoseqOptions(image_size=self.image_size, sprite_min=lo,
                                           sprite_max=min(hi, self.image_size // 2), clutter=clutter, noise=noise))
        return out


def reserved_grids(seeds=RESERVED_DATA_SEEDS) -> np.ndarray:
    """Every sprite (classes and clutter) of ``synth-cocoseq`` for ``seeds``, flattened ``[K, 16]``."""
    return np.concatenate([sprite_grids(s).reshape(-1, 16) for s in seeds])


def min_distance(grids: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each grid of ``grids`` ``[N, 4, 4]``, the least Hamming distance (cells) to ``others`` ``[K, 16]``."""
    flat = np.asarray(grids).reshape(len(grids), 16)
    return np.array([int((others != g).sum(1).min()) for g in flat])


def source_grids(options: SynthPretrainOptions) -> np.ndarray:
    """The source's sprites: ``num_classes`` class grids, then its own clutter pool, ``[K, 4, 4]``."""
    reserved = reserved_grids()
    rng = np.random.default_rng([options.data_seed, GENERATOR_VERSION, 1_000_003])
    return draw_grids(rng, options.num_classes + CLUTTER_SPRITES,
                      keep=lambda g: int((reserved != g.reshape(16)).sum(1).min()) >= MIN_DISTANCE)


def _label_sets(rng: np.random.Generator, n: int, num_classes: int) -> list[list[int]]:
    sizes = rng.choice(3, size=n, p=(0.5, 0.3, 0.2)) + 1
    return [[int(c) for c in rng.choice(num_classes, size=k, replace=False)] for k in sizes]


def generate(options: SynthPretrainOptions) -> dict[str, np.ndarray]:
    """``train_x`` / ``val_x`` (uint8 ``[N, 3, S, S]``) and ``train_y`` / ``val_y`` (multi-hot uint8)."""
    grids = source_grids(options)
    rng = np.random.default_rng([options.data_seed, GENERATOR_VERSION, 2_000_003])
    painters = [Painter(rng, options.num_classes, style, grids=grids) for style in options.styles()]
    arrays = {}
    for split, n in (("train", options.train_images), ("val", options.val_images)):
        sets = _label_sets(rng, n, options.num_classes)
        style = rng.integers(0, len(painters), size=n)
        images = np.empty((n, 3, options.image_size, options.image_size), dtype=np.uint8)
        for k, painter in enumerate(painters):
            rows = np.flatnonzero(style == k)
            images[rows] = painter.paint(rng, [sets[r] for r in rows])
        multi_hot = np.zeros((n, options.num_classes), dtype=np.uint8)
        for row, labels in enumerate(sets):
            multi_hot[row, labels] = 1
        arrays[f"{split}_x"], arrays[f"{split}_y"] = images, multi_hot
    return arrays
