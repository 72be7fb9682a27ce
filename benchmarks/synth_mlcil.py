"""``synth-mlcil``: the embedded MLCIL default, a class-incremental stream drawn like ``synth-cocoseq``.

No download, CPU-sized, deterministic for ``data_seed``. One pool of training and one of test images
over ``classes`` classes (the first of synth-cocoseq's COCO names, alphabetical like KRT's COCO
order), each image drawn by synth-cocoseq's painter (``benchmarks/synth_cocoseq.py``: a fixed 4x4
colour sprite per class among unlabelled look-alike clutter on a noisy field). Unlike synth-cocoseq,
whose tasks never share an image, labels co-occur across sessions, so label absence bites:

* an image has 1-4 labels (40 / 30 / 20 / 10%), the first drawn by class frequency (those classes'
  COCOseq training counts: a 14x tail), the others preferring two fixed partner classes per class
  (synth-cocoseq's co-occurrence rule) from any session;
* the pools are then cut by the same MLCIL protocol as the real streams (:mod:`cml_bench.mlcil`):
  B<base>-C<increment> sessions, each session's images labelled with its own classes only, the test
  set after session t = the test images with a seen class, scored on all seen classes;
* the memory is 5 samples per class (KRT's VOC setting), several epochs per session.

Images are generated on every build (a second or two; nothing is cached).

**Pretrained backbone.** As ``synth-cocoseq`` (and the MLCIL papers, whose backbones start from
ImageNet), the model starts from ``model.weights: synth-resnet10t``, trained on ``synth-pretrain``,
whose sprites are far from every sprite drawn here (``tests/test_pretrain.py``), with
synth-cocoseq's learning rates (backbone 5e-4, head 5e-3). From random weights every strategy
stayed near the same low level (validation stream ``data_seed: 1``, seed 0, last mAP: finetune 23.6,
reservoir 26.7, multitask 28.8), so the table could not separate forgetting from slow learning; with
the pretrained backbone, on the same validation stream: finetune 25.6 (average 54.0), reservoir
49.4 (average 69.2), multitask 53.6. Nothing was tuned on the default's test set or per strategy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.synth_cocoseq import (CLASS_NAMES, COCOSEQ_TRAIN_COUNTS, Painter, SynthCocoseqOptions,
                                      _partners)
from cml_bench.mlcil import CF1_OF1_THRESHOLD, build_stream, session_classes
from cml_bench.stream import MultiLabelBenchmark, register_benchmark

GENERATOR_VERSION = 1
LABELS_PER_IMAGE = (0.4, 0.3, 0.2, 0.1)  # share of images with 1, 2, 3, 4 labels
MEMORY_PER_CLASS = 5


@dataclass(frozen=True)
class SynthMLCILOptions:
    """Options of ``synth-mlcil``.

    Attributes:
        classes: number of classes (<= 70), cut into sessions by ``base`` / ``increment``.
        base: classes of the first session; 0 = as many as every other session ("B0").
        increment: classes per session.
        train_images, test_images: sizes of the two pools (each image may join several sessions).
        image_size, clutter, sprite_min, sprite_max, noise: the painter's settings (synth-cocoseq's).
        data_seed: seed of the drawing; the run seed changes only the training order.
    """

    classes: int = 20
    base: int = 0
    increment: int = 5
    train_images: int = 800
    test_images: int = 300
    image_size: int = 32
    clutter: int = 1
    sprite_min: int = 8
    sprite_max: int = 12
    noise: float = 10.0
    data_seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= len(CLASS_NAMES):
            raise ValueError(f"benchmark.options.classes must be in [2, {len(CLASS_NAMES)}], got {self.classes}.")
        if self.train_images < 1 or self.test_images < 1:
            raise ValueError(f"benchmark.options.train_images and test_images must be >= 1, got "
                             f"{self.train_images} and {self.test_images}.")
        session_classes(range(self.classes), self.base, self.increment)  # a clear error if they do not split


def painter_options(options: SynthMLCILOptions) -> SynthCocoseqOptions:
    """synth-cocoseq's options carrying this stream's drawing settings (validated there)."""
    return SynthCocoseqOptions(image_size=options.image_size, clutter=options.clutter,
                               sprite_min=options.sprite_min, sprite_max=options.sprite_max,
                               noise=options.noise, data_seed=options.data_seed)


def painter_for(options: SynthMLCILOptions) -> tuple[np.random.Generator, Painter]:
    """The drawing's generator and its painter (the sprites: synth-cocoseq's first ``classes`` + clutter
    pool for the same ``data_seed``); the generator goes on to draw the label sets and images."""
    rng = np.random.default_rng([options.data_seed, GENERATOR_VERSION])
    return rng, Painter(rng, options.classes, painter_options(options))


def draw_label_sets(rng: np.random.Generator, n: int, weights: np.ndarray,
                    partners: dict[int, set[int]]) -> list[list[int]]:
    """``n`` label sets over ``len(weights)`` classes: 1-4 labels (:data:`LABELS_PER_IMAGE`), the first
    by ``weights``, the others by ``weights`` with the first label's partners five times as likely."""
    m = len(weights)
    p = np.asarray(weights, dtype=float) / np.sum(weights)
    sets = []
    for _ in range(n):
        k = 1 + int(rng.choice(len(LABELS_PER_IMAGE), p=LABELS_PER_IMAGE))
        first = int(rng.choice(m, p=p))
        w = p * np.where(np.isin(np.arange(m), list(partners[first])), 5.0, 1.0)
        w[first] = 0.0
        sets.append([first] + [int(c) for c in rng.choice(m, size=min(k, m) - 1, replace=False, p=w / w.sum())])
    return sets


def generate(options: SynthMLCILOptions) -> dict[str, np.ndarray]:
    """``train_x``, ``train_y``, ``test_x``, ``test_y``: uint8 images ``[N, 3, S, S]``, full multi-hot labels."""
    rng, painter = painter_for(options)
    m = options.classes
    partners = _partners(rng, tuple(range(m)))
    weights = np.asarray(COCOSEQ_TRAIN_COUNTS[:m], dtype=float)
    arrays = {}
    for split, n in (("train", options.train_images), ("test", options.test_images)):
        sets = draw_label_sets(rng, n, weights, partners)
        labels = np.zeros((n, m), dtype=np.uint8)
        for row, cols in enumerate(sets):
            labels[row, cols] = 1
        arrays[f"{split}_x"], arrays[f"{split}_y"] = painter.paint(rng, sets), labels
    return arrays


@register_benchmark(
    "synth-mlcil",
    options=SynthMLCILOptions,
    description="embedded MLCIL default: sprite images, B0-C5 over 20 classes, label absence (no download)",
    defaults={
        # synth-cocoseq's pretrained backbone and learning rates (module docstring, "Pretrained backbone")
        "model": {"backbone": "resnet10t", "feature_level": 3, "stem_pool": False, "pretrained": True,
                  "weights": "synth-resnet10t"},
        "train": {"optimizer": "adam", "lr": 5e-4, "head_lr": 5e-3, "weight_decay": 1e-5, "grad_clip_value": 5.0,
                  "batch_size": 16, "epochs": 3},
        "eval": {"batch_size": 200, "threshold": CF1_OF1_THRESHOLD},
    },
)
def build(options: SynthMLCILOptions) -> MultiLabelBenchmark:
    arrays = generate(options)
    sessions = session_classes(range(options.classes), options.base, options.increment)
    return build_stream("synth-mlcil", CLASS_NAMES[:options.classes], sessions,
                        train_images=lambda rows: arrays["train_x"][rows], train_labels=arrays["train_y"],
                        test_images=lambda rows: arrays["test_x"][rows], test_labels=arrays["test_y"],
                        buffer_size=MEMORY_PER_CLASS * options.classes)
