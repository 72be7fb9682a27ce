"""``cocoseq``: the COCOseq stream of PRS (Kim et al., ECCV 2020) from MS-COCO 2014.

Inputs (never copied into this project): the COCO 2014 folder (``annotations/instances_{train,val}
2014.json``, ``train2014/``, ``val2014/``) and the PRS id lists, a folder laid out like
``prs_splits/COCOseq`` (``multihot_map.json``, ``ids/{train,test}_task<k>_id_coco.json``), plus the
published group lists (``prs_splits/groups/cocoseq_{majority,moderate,minority}.json``).

* :func:`inspect` reads the annotations and id lists only (no images) and reports per-task image
  counts, per-class counts, the groups the counts imply against the published lists, and every
  difference from PROTOCOL.md's numbers.
* :func:`prepare` does the same and writes a :mod:`cml_bench.store` (256 px uint8, memory-mapped),
  recording the published groups in the store's index.
* the registered ``cocoseq`` benchmark reads that store: tasks streamed in the papers' order
  0, 3, 1, 2; groups from the published lists; images memory-mapped, never copied into RAM.

A COCO image's labels are the categories of all its instance annotations among the 70 classes,
matched by name; ids are looked up in both annotation files (test ids come from val2014 and train2014).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cml_bench.prepared import (StreamProtocol, StreamReport, benchmark_from_store, load_json, prs_list_options,
                                read_prs_lists, require_published_groups, write_report_store)
from cml_bench.prepared import read_splits as _read_prs_splits
from cml_bench.store import open_prepared_store, require_folders
from cml_bench.stream import DataCommands, SourceOption, register_benchmark

BUILDER_VERSION = 1
NUM_TASKS = 4
TASK_ORDER = (0, 3, 1, 2)
# PROTOCOL.md (PRS release): images per original task and group sizes.
PROTOCOL_TRAIN = (8365, 7814, 11603, 7290)
PROTOCOL_TEST = (1960, 1690, 1400, 1316)
PROTOCOL_GROUP_SIZES = {"majority": 18, "moderate": 38, "minority": 14}
PREPARE_HINT = ("python -m cml_bench data prepare cocoseq --coco-root COCO2014 --splits "
                "prs_splits/COCOseq --out STORE")
PROTOCOL = StreamProtocol(title="COCOseq", name="cocoseq", num_classes=70, train_counts=PROTOCOL_TRAIN,
                          test_counts=PROTOCOL_TEST, task_order=TASK_ORDER, group_sizes=PROTOCOL_GROUP_SIZES,
                          id_suffix="coco", prepare_hint=PREPARE_HINT)
CocoseqReport = StreamReport  # the report of every stream; kept under its first name
COCO_ROOT = SourceOption("--coco-root", "COCO 2014 folder: annotations/instances_{train,val}2014.json, train2014/, "
                                        "val2014/")


def read_splits(splits: str | Path) -> tuple[list[str], dict[tuple[str, int], list[int]]]:
    """Class names (multihot_map order) and COCO image id lists of a COCOseq splits folder."""
    return _read_prs_splits(splits, PROTOCOL)


def read_annotations(coco_root: Path, folders: tuple[str, ...] = ("train2014", "val2014")
                     ) -> tuple[dict[int, tuple[str, list[str]]], dict[str, int]]:
    """image id -> (image path, category names) from the instances files of ``folders`` (every image
    they list, with or without annotations), and category name -> COCO category id."""
    coco_root = Path(coco_root)
    if not coco_root.is_dir():
        raise FileNotFoundError(f"COCO root '{coco_root}' does not exist (expected a folder holding "
                                f"annotations/instances_{{train,val}}2014.json, train2014/ and val2014/).")
    images: dict[int, tuple[str, list[str]]] = {}
    names: dict[str, int] = {}
    for folder in folders:
        path = coco_root / "annotations" / f"instances_{folder}.json"
        data = load_json(path, f"COCO annotation file (from annotations_trainval2014.zip, under --coco-root)")
        if not all(k in data for k in ("images", "annotations", "categories")):
            raise ValueError(f"'{path}' is not a COCO instances file (needs images, annotations, categories).")
        category = {c["id"]: c["name"] for c in data["categories"]}
        names.update((n, i) for i, n in category.items())
        for img in data["images"]:
            name = img.get("file_name") or f"COCO_{folder}_{img['id']:012d}.jpg"
            images[int(img["id"])] = (str(coco_root / folder / name), [])
        for ann in data["annotations"]:
            entry = images.get(int(ann["image_id"]))
            if entry is not None and ann["category_id"] in category:
                entry[1].append(category[ann["category_id"]])
    return images, names


def inspect(coco_root: str | Path, splits: str | Path, groups: str | Path | None = None) -> StreamReport:
    """Counts, groups and PROTOCOL.md checks from the annotations and id lists alone (no images).

    ``groups`` defaults to ``../groups`` beside the splits folder (the prs_splits layout).
    """
    names, ids, published, groups_dir = read_prs_lists(splits, groups, PROTOCOL)
    annotations, categories = read_annotations(Path(coco_root))
    column = {n: c for c, n in enumerate(names)}
    missing = sorted({i for part in ids.values() for i in part if i not in annotations})
    if missing:
        raise ValueError(f"{len(missing)} id(s) of the COCOseq lists are in neither annotation file "
                         f"(first: {missing[:5]}): --coco-root must hold the COCO 2014 annotations.")
    absent = [n for n in names if n not in categories]
    if absent:  # labels are matched by name: a class no category carries would silently stay empty
        raise ValueError(f"{len(absent)} class(es) of multihot_map.json are not COCO category names in the "
                         f"annotation files: {absent[:5]}.")
    labels, paths = {}, {}
    for key, part in ids.items():
        labels[key] = np.zeros((len(part), len(names)), dtype=np.uint8)
        for row, i in enumerate(part):
            cols = [column[n] for n in annotations[i][1] if n in column]
            labels[key][row, cols] = 1
        paths[key] = [annotations[i][0] for i in part]
    return StreamReport(PROTOCOL, names, ids, labels, paths, published, groups_dir)


def prepare(coco_root: str | Path, splits: str | Path, out: str | Path, *, groups: str | Path | None = None,
            size: int = 256, skip_bad_images: bool = False, force: bool = False, chunk_rows: int = 256,
            progress: Callable[[int, int], None] | None = None) -> StreamReport:
    """Inspect, then write the memory-mapped store at ``out`` (resumable; see :func:`write_store`)."""
    report = inspect(coco_root, splits, groups)
    require_published_groups(report)
    require_folders([p for key in report.keys for p in report.paths[key]], coco_folder_hint)
    return write_report_store(report, out, builder_version=BUILDER_VERSION, size=size,
                              info={"coco_root": str(coco_root), "splits": str(splits)},
                              skip_bad_images=skip_bad_images, force=force, chunk_rows=chunk_rows,
                              progress=progress)


def coco_folder_hint(folder: Path) -> str:
    return f"unzip the COCO 2014 images ({folder.name}.zip) under --coco-root"


@dataclass(frozen=True)
class CocoseqOptions:
    """Options of ``cocoseq``.

    Attributes:
        root: the store folder written by ``python -m cml_bench data prepare cocoseq ... --out DIR``
            (required). The store holds 256 px images; its index records the published groups.
    """

    root: str | None = None


@register_benchmark(
    "cocoseq",
    options=CocoseqOptions,
    description="COCOseq (PRS): 4 tasks, 70 classes, from a store made by `data prepare cocoseq`",
    # PRS set-up (PROTOCOL.md). pretrained=True needs ImageNet weights: without network, set
    # model.weights_path to a local file (or model.pretrained=false).
    defaults={
        "model": {"backbone": "resnet101", "pretrained": True, "feature_level": -1, "stem_pool": True},
        "train": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "grad_clip_value": 5.0},
    },
    data=DataCommands("COCOseq (PRS): 4 tasks, 70 classes", inspect, prepare,
                      (COCO_ROOT, *prs_list_options(PROTOCOL)), size=256),
)
def build(options: CocoseqOptions):
    store = open_prepared_store(options.root, PROTOCOL.name, BUILDER_VERSION, PREPARE_HINT, what=PROTOCOL.title)
    return benchmark_from_store(store, PROTOCOL, default_buffer_size=2000, memory_rho=-0.03)
