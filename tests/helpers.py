"""Helpers the tests share (imported as ``helpers``: ``tests/`` is on pytest's ``pythonpath``).

Fixture trees in the official layouts of the single-task datasets: COCO 2014 (annotation files and
image folders) and a VOCdevkit (the 20 class files per image set and JPEGImages), with placeholder
JPEGs of known flat colours.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from benchmarks import voc2007

# COCO-like category ids: not contiguous, not in name order (columns follow the ids)
COCO_CATEGORIES = {1: "person", 2: "bicycle", 18: "dog", 24: "zebra", 90: "toothbrush"}
# folder -> [(image id, category ids)]; one image per folder has no annotation at all
COCO_IMAGES = {
    "train2014": [(11, [1]), (12, [1, 18]), (13, []), (14, [2, 2, 24]), (15, [90]), (16, [18, 1])],
    "val2014": [(21, [1, 24]), (22, []), (23, [2]), (24, [90, 18])],
}


def colour(key: int) -> tuple[int, int, int]:
    """The flat colour of placeholder image ``key`` (tests check it survives preparation)."""
    return (key * 37 % 251, key * 11 % 251, 90)


def write_coco_annotations(coco: Path, images: dict[str, list[tuple[int, list[int]]]],
                           categories: dict[int, str]) -> None:
    """instances_{train,val}2014.json in the official format (images, annotations, categories)."""
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    cats = [{"id": i, "name": n, "supercategory": "x"} for i, n in categories.items()]
    for folder, rows in images.items():
        imgs = [{"id": i, "file_name": f"COCO_{folder}_{i:012d}.jpg", "width": 32, "height": 24} for i, _ in rows]
        anns = [{"id": k, "image_id": i, "category_id": c, "iscrowd": 0}
                for k, (i, c) in enumerate((i, c) for i, cs in rows for c in cs)]
        (coco / "annotations" / f"instances_{folder}.json").write_text(
            json.dumps({"images": imgs, "annotations": anns, "categories": cats}))


def make_coco_tree(root: Path, images: dict[str, list[tuple[int, list[int]]]] = COCO_IMAGES,
                   categories: dict[int, str] = COCO_CATEGORIES) -> Path:
    """A COCO 2014 tree under ``root/coco``: annotation files and 32 x 24 placeholder JPEGs."""
    coco = root / "coco"
    write_coco_annotations(coco, images, categories)
    for folder, rows in images.items():
        (coco / folder).mkdir(parents=True)
        for i, _ in rows:
            Image.new("RGB", (32, 24), colour(i)).save(coco / folder / f"COCO_{folder}_{i:012d}.jpg")
    return coco


# VOC: image id -> the 20 class values (1 / -1 / 0) built from (positives, difficult) column lists
VOC_SETS = {
    "trainval": {"000005": ([8], [14]), "000007": ([6], []), "000009": ([12, 14], []),
                 "000012": ([6, 14], [1]), "000016": ([1], []), "000017": ([12, 14], [])},
    "test": {"000001": ([11, 14], []), "000002": ([18], [14]), "000004": ([6], []), "000006": ([], [8])},
}


def make_voc_tree(root: Path, sets: dict[str, dict[str, tuple[list[int], list[int]]]] = VOC_SETS) -> Path:
    """A VOCdevkit under ``root``: the 20 class files per image set and 40 x 30 placeholder JPEGs."""
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    for image_set, rows in sets.items():
        for c, name in enumerate(voc2007.CLASSES):
            lines = [f"{i} {1 if c in pos else 0 if c in diff else -1:>2}" for i, (pos, diff) in rows.items()]
            (voc / "ImageSets" / "Main" / f"{name}_{image_set}.txt").write_text("\n".join(lines) + "\n")
        for i in rows:
            Image.new("RGB", (40, 30), colour(int(i))).save(voc / "JPEGImages" / f"{i}.jpg")
    return root / "VOCdevkit"
