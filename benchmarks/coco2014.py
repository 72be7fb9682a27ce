"""``coco2014``: MS-COCO 2014 as one multi-label task of 80 classes (the generic protocol, DLFL 4.1.1).

Input (never copied into this project): the COCO 2014 folder, ``annotations/instances_{train,val}
2014.json``, ``train2014/``, ``val2014/``, read with COCOseq's annotation reader.

* training set: the train2014 images with at least one instance annotation, 82,081 of the 82,783
  (ML-GCN's set; the 702 without any are left out: they carry no label to learn);
* test set: every val2014 image, 40,504, the papers' count; the 367 without any annotation are kept
  as images where every class is negative (torchvision's ``CocoDetection``, as ASL and Query2Label
  evaluate; ML-GCN's own list drops them, 40,137 images);
* classes: the 80 categories in COCO category-id order; an image's labels are the categories of its
  instance annotations.

:func:`inspect` checks these counts from the annotations alone; :func:`prepare` writes a
:mod:`cml_bench.store` (images resized to ``size``, default 448, the papers' input side); the
registered ``coco2014`` benchmark trains on it as one experience (``kind="generic"``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.cocoseq import COCO_ROOT, coco_folder_hint, read_annotations
from cml_bench import single_task
from cml_bench.single_task import SingleTaskReport, SplitRows, register_single_task
from cml_bench.stream import DataCommands

BUILDER_VERSION = 1
DEFAULT_SIZE = 448
# DLFL section 4.1.1 (and ML-GCN): 80 classes, 82,081 training and 40,504 test images.
EXPECTED = {"classes": 80, "train": 82081, "test": 40504}
SOURCE = "the papers' numbers (DLFL 4.1.1, ML-GCN)"
PREPARE_HINT = "python -m cml_bench data prepare coco2014 --coco-root COCO2014 --out STORE"


def _rows(images: dict[int, tuple[str, list[str]]], column: dict[str, int], keep_unlabelled: bool) -> SplitRows:
    ids = sorted(i for i, (_, names) in images.items() if keep_unlabelled or names)
    labels = np.zeros((len(ids), len(column)), dtype=np.uint8)
    for row, i in enumerate(ids):
        labels[row, [column[n] for n in images[i][1]]] = 1
    return SplitRows(ids, [images[i][0] for i in ids], labels)


def inspect(coco_root: str | Path) -> SingleTaskReport:
    """Counts and checks from the two annotation files alone (no images)."""
    train, categories = read_annotations(Path(coco_root), ("train2014",))
    test, test_categories = read_annotations(Path(coco_root), ("val2014",))
    if test_categories != categories:
        raise ValueError(f"The category lists of instances_train2014.json and instances_val2014.json under "
                         f"'{coco_root}/annotations' differ: both must come from annotations_trainval2014.zip.")
    names = sorted(categories, key=categories.get)
    column = {n: c for c, n in enumerate(names)}
    splits = {"train": _rows(train, column, keep_unlabelled=False), "test": _rows(test, column, keep_unlabelled=True)}
    unlabelled_test = int((splits["test"].labels.sum(axis=1) == 0).sum())
    notes = [f"train2014: {len(train):,} images listed, {len(train) - len(splits['train'].ids):,} without any "
             f"annotation left out",
             f"val2014: {len(test):,} images listed, all kept; {unlabelled_test:,} without any annotation "
             f"(every class negative)"]
    return SingleTaskReport("COCO 2014", names, splits, EXPECTED, SOURCE, notes)


def prepare(coco_root: str | Path, out: str | Path, *, size: int = DEFAULT_SIZE, skip_bad_images: bool = False,
            force: bool = False, chunk_rows: int = 256,
            progress: Callable[[int, int], None] | None = None) -> SingleTaskReport:
    """Inspect, then write the memory-mapped store at ``out`` (resumable, atomic)."""
    return single_task.prepare(inspect(coco_root), out, builder="coco2014", builder_version=BUILDER_VERSION,
                               size=size, folder_hint=coco_folder_hint, info={"coco_root": str(coco_root)},
                               skip_bad_images=skip_bad_images, force=force, chunk_rows=chunk_rows,
                               progress=progress)


register_single_task("coco2014", builder_version=BUILDER_VERSION, prepare_hint=PREPARE_HINT,
                     description="MS-COCO 2014, one task of 80 classes (82,081 / 40,504), "
                                 "from `data prepare coco2014`",
                     data=DataCommands("MS-COCO 2014, one task, 80 classes", inspect, prepare, (COCO_ROOT,),
                                       size=DEFAULT_SIZE))
