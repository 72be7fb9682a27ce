"""MLCIL streams on MS-COCO 2014 and PASCAL VOC 2007: ``coco-b0c10``, ``coco-b40c10``, ``voc-b0c4``,
``voc-b10c2`` (the presets of KRT and the papers after it), and ``coco-mlcil`` / ``voc-mlcil`` with
any ``base`` / ``increment``.

They read the stores of the single-task benchmarks (``data prepare coco2014`` / ``voc2007``: the
same images, the full labels) and cut them into sessions by :mod:`cml_bench.mlcil` (KRT's protocol:
session images, label absence, seen-class test sets, average mAP; see there). Dataset choices, from
KRT's code (github.com/witdsl/KRT-MLCIL) where the papers leave them open:

* **Class order.** COCO: the 80 category names in alphabetical order (KRT's ``coco_fake_ids``
  enumerates ``sorted(coco_ids)``; so B0-C10 starts with airplane, apple, backpack, ...), not the
  category-id order of the ``coco2014`` store's columns. VOC: the usual alphabetical 20 classes
  (``VOC_CATS``, the store's own order). The target columns stay the store's; only the sessions
  follow this order.
* **Images.** COCO: train2014 for training (the images with an annotation: the others enter no
  session), val2014 for testing (images with a seen class). VOC: trainval / test.
* **VOC difficult objects.** KRT's loader drops them from the labels: a class present only as
  difficult objects is a negative, in training and in testing (ML-GCN, and the ``voc2007`` stream,
  leave such pairs out of evaluation instead). We follow KRT: such an image enters no session by that
  class, and the pair counts as a negative in every metric.
* **COCO crowd annotations.** KRT's loader drops ``iscrowd`` annotations from the labels (keeping
  the image in a session whose class it shows only as a crowd); the ``coco2014`` store counts them as
  labels like every other. This differs only on the (image, class) pairs present solely as crowds,
  and is not replicated.
* **Memory.** KRT's replay keeps 20 exemplars per class on COCO and 5 per class on VOC (its configs'
  ``num_protos``, chosen by herding); the streams' protocol buffer is that many per class (1,600 /
  100), which every replay strategy uses by default.
* **Training defaults** (the platform cannot copy KRT's TResNet-M / ImageNet-21k, asymmetric loss and
  one-cycle schedule): ResNet-101 with ImageNet weights at 224 px (KRT's input size), Adam lr 1e-4,
  weight decay 1e-4, batches of 64, 20 epochs per session (KRT's VOC config; its COCO config file
  says 1, while its COCO run script names the run ``ep20``), no gradient clipping; CF1 / OF1 at
  threshold 0.8 (KRT's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from benchmarks import coco2014, voc2007
from cml_bench.mlcil import CF1_OF1_THRESHOLD, build_stream, session_classes
from cml_bench.single_task import PAPER_MODEL, StoreOptions
from cml_bench.store import MemmapRows, open_prepared_store
from cml_bench.stream import MultiLabelBenchmark, register_benchmark

DEFAULTS = {
    "model": {**PAPER_MODEL, "image_size": 224},
    "train": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-4, "batch_size": 64, "epochs": 20,
              "grad_clip_value": None},
    "eval": {"threshold": CF1_OF1_THRESHOLD},
}


@dataclass(frozen=True)
class Dataset:
    """A store the MLCIL streams read, and how KRT orders and remembers its classes."""

    title: str
    builder: str
    builder_version: int
    prepare_hint: str
    class_order: Callable[[list[str]], list[int]]
    memory_per_class: int
    default_increment: int


def _alphabetical(names: list[str]) -> list[int]:
    return sorted(range(len(names)), key=lambda c: names[c])


def _voc_order(names: list[str]) -> list[int]:
    if tuple(names) != voc2007.CLASSES:
        raise ValueError(f"The voc2007 store's classes are not VOC 2007's 20 classes in their usual order: "
                         f"{names}. Rebuild it with `{voc2007.PREPARE_HINT} --force`.")
    return list(range(len(names)))


DATASETS = {
    "coco": Dataset("MS-COCO 2014", "coco2014", coco2014.BUILDER_VERSION, coco2014.PREPARE_HINT,
                    _alphabetical, memory_per_class=20, default_increment=10),
    "voc": Dataset("PASCAL VOC 2007", "voc2007", voc2007.BUILDER_VERSION, voc2007.PREPARE_HINT,
                   _voc_order, memory_per_class=5, default_increment=4),
}
PRESETS = {"coco-b0c10": ("coco", 0, 10), "coco-b40c10": ("coco", 40, 10),
           "voc-b0c4": ("voc", 0, 4), "voc-b10c2": ("voc", 10, 2)}


def build(dataset: str, root: str | None, base: int, increment: int) -> MultiLabelBenchmark:
    """The B<base>-C<increment> stream of ``dataset`` (``coco`` / ``voc``) from the store at ``root``."""
    spec = DATASETS[dataset]
    store = open_prepared_store(root, spec.builder, spec.builder_version, spec.prepare_hint,
                                what=spec.builder)
    names = store.class_names
    sessions = session_classes(spec.class_order(names), base, increment)
    images = store.path / "images.npy"
    train_rows, test_rows = store.rows("train", 0), store.rows("test", 0)
    # VOC's difficult pairs (the store's ignore mask) are negatives here, as in KRT: labels only
    return build_stream(
        f"{dataset}-b{base}c{increment}", names, sessions,
        train_images=lambda rows: MemmapRows(images, train_rows[rows]),
        train_labels=np.asarray(store.labels[train_rows]),
        test_images=lambda rows: MemmapRows(images, test_rows[rows]),
        test_labels=np.asarray(store.labels[test_rows]),
        buffer_size=spec.memory_per_class * len(names), store=store)


@dataclass(frozen=True)
class MLCILStoreOptions:
    """Options of ``coco-mlcil`` / ``voc-mlcil``.

    Attributes:
        root: the ``coco2014`` / ``voc2007`` store (``python -m cml_bench data prepare ...``).
        base: classes of the first session; 0 = as many as every other session ("B0").
        increment: classes per session; None = 10 on COCO, 4 on VOC.
    """

    root: str | None = None
    base: int = 0
    increment: int | None = None


def _register_preset(name: str, dataset: str, base: int, increment: int) -> None:
    title = DATASETS[dataset].title

    def build_preset(options: StoreOptions) -> MultiLabelBenchmark:
        return build(dataset, options.root, base, increment)

    register_benchmark(name, options=StoreOptions, defaults=DEFAULTS,
                       description=f"MLCIL {title} B{base}-C{increment} (KRT's protocol), from the "
                                   f"`data prepare {DATASETS[dataset].builder}` store")(build_preset)


def _register_family(dataset: str) -> None:
    spec = DATASETS[dataset]

    def build_family(options: MLCILStoreOptions) -> MultiLabelBenchmark:
        return build(dataset, options.root, options.base, options.increment or spec.default_increment)

    register_benchmark(f"{dataset}-mlcil", options=MLCILStoreOptions, defaults=DEFAULTS,
                       description=f"MLCIL {spec.title}, any base / increment (KRT's protocol), from the "
                                   f"`data prepare {spec.builder}` store")(build_family)


for _name, (_dataset, _base, _increment) in PRESETS.items():
    _register_preset(_name, _dataset, _base, _increment)
for _dataset in DATASETS:
    _register_family(_dataset)
