"""``voc2007``: PASCAL VOC 2007 as one multi-label task of 20 classes (the generic protocol, DLFL 4.1.1).

Input (never copied into this project): the VOCdevkit folder of the two official archives
(VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar extracted into the same place):
``VOC2007/ImageSets/Main/<class>_{trainval,test}.txt`` (one ``<image id> <1|-1|0>`` line per image)
and ``VOC2007/JPEGImages/<image id>.jpg``. Training set: trainval, 5,011 images; test set: test,
4,952 images.

Difficult labels (``0``: the class is present only in objects marked difficult) follow ML-GCN, the
common protocol: such a pair is a positive in training, and is left out of evaluation (its AP, and
every count, skip it; ``metrics.multilabel_metrics(..., ignore=)``). The store keeps them as its
``ignore`` mask; the benchmark passes the test mask to the evaluator as ``eval_ignore``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from cml_bench import single_task
from cml_bench.single_task import SingleTaskReport, SplitRows, register_single_task
from cml_bench.stream import DataCommands, SourceOption

BUILDER_VERSION = 1
DEFAULT_SIZE = 448
CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor")
# DLFL section 4.1.1 (the VOC 2007 release): 20 classes, 5,011 trainval and 4,952 test images.
EXPECTED = {"classes": 20, "train": 5011, "test": 4952}
SOURCE = "the papers' numbers (DLFL 4.1.1, VOC 2007)"
SETS = {"train": ("trainval", "VOCtrainval_06-Nov-2007.tar"), "test": ("test", "VOCtest_06-Nov-2007.tar")}
PREPARE_HINT = "python -m cml_bench data prepare voc2007 --voc-root VOCdevkit --out STORE"
VOC_ROOT = SourceOption("--voc-root", "VOCdevkit folder (VOC2007/ImageSets/Main, VOC2007/JPEGImages) of the trainval "
                                      "and test archives")


def find_voc2007(voc_root: str | Path) -> Path:
    """The VOC2007 folder: ``voc_root`` itself or its ``VOC2007`` child (VOCdevkit given)."""
    root = Path(voc_root)
    if not root.is_dir():
        raise FileNotFoundError(f"VOC root '{root}' does not exist (expected the VOCdevkit folder holding "
                                f"VOC2007/ImageSets/Main and VOC2007/JPEGImages).")
    for voc in (root / "VOC2007", root):
        if (voc / "ImageSets" / "Main").is_dir():
            return voc
    raise FileNotFoundError(f"'{root}' is not a VOCdevkit folder: neither '{root / 'VOC2007/ImageSets/Main'}' "
                            f"nor '{root / 'ImageSets/Main'}' exists (extract VOCtrainval_06-Nov-2007.tar "
                            f"and VOCtest_06-Nov-2007.tar there).")


def _read_class_file(path: Path, archive: str) -> dict[str, int]:
    if not path.is_file():
        raise FileNotFoundError(f"VOC 2007 class list not found: expected '{path}' (from {archive}, "
                                f"extracted into the same VOCdevkit).")
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
            raise ValueError(f"'{path}' line {number}: expected '<image id> <1|-1|0>', got {line!r}.")
        values[fields[0]] = int(fields[1])
    return values


def read_split(voc: Path, split: str) -> SplitRows:
    """One split's rows from the 20 class files: labels = 1 entries, ignore = 0 (difficult) entries."""
    image_set, archive = SETS[split]
    per_class = [_read_class_file(voc / "ImageSets" / "Main" / f"{c}_{image_set}.txt", archive) for c in CLASSES]
    ids = sorted(per_class[0])
    for name, values in zip(CLASSES, per_class):
        if sorted(values) != ids:
            raise ValueError(f"'{voc / 'ImageSets/Main'}/{name}_{image_set}.txt' lists other images than "
                             f"{CLASSES[0]}_{image_set}.txt ({len(values):,} vs {len(ids):,}): the files must "
                             f"come from one release.")
    table = np.array([[values[i] for values in per_class] for i in ids], dtype=np.int8).reshape(-1, len(CLASSES))
    return SplitRows(ids, [str(voc / "JPEGImages" / f"{i}.jpg") for i in ids],
                     (table == 1).astype(np.uint8), (table == 0).astype(np.uint8))


def inspect(voc_root: str | Path) -> SingleTaskReport:
    """Counts and checks from the class files alone (no images)."""
    voc = find_voc2007(voc_root)
    splits = {split: read_split(voc, split) for split in SETS}
    notes = []
    for split, rows in splits.items():
        only_difficult = int(((rows.labels.sum(axis=1) == 0) & (rows.ignore.sum(axis=1) > 0)).sum())
        notes.append(f"{split} ({SETS[split][0]}): {int(rows.ignore.sum()):,} difficult (image, class) pairs in "
                     f"{int(rows.ignore.any(axis=1).sum()):,} images; {only_difficult} image(s) with difficult "
                     f"labels only")
    notes.append("difficult pairs: positives in training, left out of evaluation (ML-GCN's protocol)")
    return SingleTaskReport("PASCAL VOC 2007", list(CLASSES), splits, EXPECTED, SOURCE, notes,
                            ignore_name="difficult")


def _folder_hint(folder: Path) -> str:
    return "extract VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar into the same VOCdevkit"


def prepare(voc_root: str | Path, out: str | Path, *, size: int = DEFAULT_SIZE, skip_bad_images: bool = False,
            force: bool = False, chunk_rows: int = 256,
            progress: Callable[[int, int], None] | None = None) -> SingleTaskReport:
    """Inspect, then write the memory-mapped store at ``out`` (resumable, atomic)."""
    return single_task.prepare(inspect(voc_root), out, builder="voc2007", builder_version=BUILDER_VERSION,
                               size=size, folder_hint=_folder_hint, info={"voc_root": str(voc_root)},
                               skip_bad_images=skip_bad_images, force=force, chunk_rows=chunk_rows,
                               progress=progress)


register_single_task("voc2007", builder_version=BUILDER_VERSION, prepare_hint=PREPARE_HINT,
                     description="PASCAL VOC 2007, one task of 20 classes (5,011 / 4,952), "
                                 "from `data prepare voc2007`",
                     data=DataCommands("PASCAL VOC 2007, one task, 20 classes", inspect, prepare, (VOC_ROOT,),
                                       size=DEFAULT_SIZE))
