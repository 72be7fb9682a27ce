"""NUS-WIDE (Chua et al., CIVR 2009): the continual ``nuswideseq`` stream of PRS and the single-task
``nuswide`` stream, both from the official NUS-WIDE files.

Inputs (never copied into this project), under ``--nuswide-root``, as the official archives unpack:

* ``ImageList/TrainImagelist.txt``, ``ImageList/TestImagelist.txt``: one image per line,
  ``<concept_dir>\\<file>.jpg`` (a full ``C:\\ImageData\\Flickr\\...`` path is read the same way);
  the official split, 161,789 / 107,859 images. ``ImageList/Imagelist.txt`` (all 269,648) is not needed.
* ``TrainTestLabels/Labels_<concept>_{Train,Test}.txt`` (also found under ``Groundtruth/``): one
  0/1 value per line, in image-list order.
* ``Concepts81.txt`` (also under ``ConceptsList/``): the 81 concept names (``nuswide``'s columns).
* ``Flickr/<concept_dir>/<file>.jpg``: the images. Many are missing (dead Flickr URLs): missing
  images are left out, counted per task and reported, as in the PRS builder, without stopping;
  unreadable or truncated ones stop the preparation unless ``--skip-bad-images``.

Labels must be 0 or 1. The official ``Labels_lake_Train.txt`` holds ``-1130179`` on line 78,372;
the rule here: **a value other than 0 or 1 is read as 0 (concept absent) and reported** with its
file, line and value (the report's "Label files" section and the store's index, ``label_notes``).
That row (TrainImagelist row 78,371) is in none of the NUSWIDEseq lists; it is in ``nuswide``.

* ``nuswideseq`` (PRS, ECCV 2020): 49 concepts (``multihot_map.json`` of the PRS id lists), 6 tasks
  streamed in the papers' order 3, 1, 0, 5, 4, 2. Ids are row indices into TrainImagelist (train)
  and TestImagelist (test). 256 px images, groups from the published lists, PRS rho 0.02.
* ``nuswide``: the 81 concepts on the official split as one task (kind ``generic``), every image of
  the lists kept (also those without any of the 81 labels, as in the official split); train for
  several epochs with ``train.epochs``. Stored at 448 px by default, the generic protocol's input
  size (DLFL section 4.1.3).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Callable

import numpy as np

from cml_bench.prepared import (StreamProtocol, StreamReport, benchmark_from_store, prs_list_options,
                                read_prs_lists, require_published_groups, write_report_store)
from cml_bench.single_task import StoreOptions, register_single_task
from cml_bench.store import open_prepared_store
from cml_bench.stream import DataCommands, SourceOption, register_benchmark

BUILDER_VERSION = 1
SPLIT_FILES = {"train": ("TrainImagelist.txt", "Train"), "test": ("TestImagelist.txt", "Test")}
ROOT_LAYOUT = ("ImageList/{Train,Test}Imagelist.txt, TrainTestLabels/Labels_<concept>_{Train,Test}.txt, "
               "Concepts81.txt and Flickr/<concept>/<file>.jpg")
SEQ_HINT = ("python -m cml_bench data prepare nuswideseq --nuswide-root NUS-WIDE --splits "
            "prs_splits/NUSWIDEseq --out STORE")
SINGLE_HINT = "python -m cml_bench data prepare nuswide --nuswide-root NUS-WIDE --out STORE"
SEQ_SIZE, SINGLE_SIZE = 256, 448  # PRS's input size; the generic protocol's (DLFL 4.1.3)
NUSWIDE_ROOT = SourceOption("--nuswide-root", "NUS-WIDE folder: ImageList/{Train,Test}Imagelist.txt, TrainTestLabels/"
                                              "Labels_<concept>_{Train,Test}.txt, Concepts81.txt, "
                                              "Flickr/<concept>/<file>.jpg")

# PROTOCOL.md (PRS release): ids per original task (the paper counts 48,724 training images on
# disk of these 48,748 ids), group sizes, and rho. Official split: DLFL section 4.1.1.
SEQ = StreamProtocol(title="NUSWIDEseq", name="nuswideseq", num_classes=49,
                     train_counts=(17672, 18402, 3623, 1948, 2373, 4730), test_counts=(250, 294, 738, 585, 200, 299),
                     task_order=(3, 1, 0, 5, 4, 2), group_sizes={"majority": 10, "moderate": 18, "minority": 21},
                     id_suffix="nuswide", prepare_hint=SEQ_HINT,
                     published_note="(the paper counts 48,724 training and 2,367 test images on its disk)")
SINGLE = StreamProtocol(title="NUS-WIDE", name="nuswide", num_classes=81, train_counts=(161789,),
                        test_counts=(107859,), every_image_labelled=False, prepare_hint=SINGLE_HINT,
                        published_note="(the official split: 161,789 / 107,859 images, DLFL section 4.1.1)")


# ---------------------------------------------------------------------------- official files


def _find(root: Path, candidates: tuple[str, ...], what: str) -> Path:
    """The first of ``candidates`` (paths under ``root``) that exists; else name them all."""
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    where = " or ".join(f"'{root / rel}'" for rel in candidates)
    raise FileNotFoundError(f"NUS-WIDE {what} not found: expected {where}.")


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"NUS-WIDE root '{root}' does not exist (expected a folder holding {ROOT_LAYOUT}).")


def read_image_list(root: Path, split: str) -> list[str]:
    """``concept_dir/file.jpg`` of every image of the official train or test list, in file order."""
    name, _ = SPLIT_FILES[split]
    path = _find(root, (f"ImageList/{name}",), "image list (from ImageList.zip, under --nuswide-root)")
    lines = [line.strip() for line in path.read_text().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    out = []
    for number, line in enumerate(lines, 1):  # line n is label line n: a blank one would shift every label
        parts = PureWindowsPath(line).parts  # backslashes, as the official lists are written
        if len(parts) < 2:
            raise ValueError(f"'{path}' line {number}: expected <concept_dir>\\<file>.jpg, got {line!r}.")
        out.append(f"{parts[-2]}/{parts[-1]}")
    return out


def read_concepts(root: Path) -> list[str]:
    path = _find(root, ("Concepts81.txt", "ConceptsList/Concepts81.txt"), "concept list (from ConceptsList.zip)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != len(set(names)):
        raise ValueError(f"'{path}' lists a concept twice.")
    return names


@dataclass(frozen=True)
class Correction:
    """A label value that is not 0 or 1, read as 0: where it is and what it was."""

    file: str
    split: str
    row: int  # 0-based row of the image list (the file's line is row + 1)
    value: str

    def note(self, where: str = "") -> str:
        return (f"{self.file} line {self.row + 1:,} ({self.split} image row {self.row:,}{where}): value "
                f"{self.value!r} is not 0 or 1; read as 0")


def read_labels(root: Path, concepts: list[str], split: str, num_images: int) -> tuple[np.ndarray, list[Correction]]:
    """uint8 ``[num_images, len(concepts)]`` from the official per-concept files, and the corrections made.

    A value other than 0 or 1 is read as 0 and reported (module docstring).
    """
    _, suffix = SPLIT_FILES[split]
    folder = _find(root, ("TrainTestLabels", "Groundtruth/TrainTestLabels"),
                   "label folder (from Groundtruth.zip)")
    labels = np.zeros((num_images, len(concepts)), dtype=np.uint8)
    notes = []
    for col, concept in enumerate(concepts):
        path = folder / f"Labels_{concept}_{suffix}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"NUS-WIDE label file for '{concept}' not found: expected '{path}'.")
        values = path.read_text().split()
        if len(values) != num_images:
            raise ValueError(f"'{path}' has {len(values):,} values but the {split} image list has "
                             f"{num_images:,} images: the label files and ImageList must come from the same release.")
        values = np.array(values)
        labels[:, col] = values == "1"
        notes += [Correction(path.name, split, int(row), str(values[row]))
                  for row in np.flatnonzero((values != "0") & (values != "1"))]
    return labels, notes


def _official(root: Path, concepts: list[str]) -> dict[str, tuple[list[str], np.ndarray, list[Correction]]]:
    """Per split: image paths (under Flickr/), labels of ``concepts`` (in that column order), corrections."""
    _check_root(root)
    out = {}
    for split in ("train", "test"):
        images = read_image_list(root, split)
        labels, notes = read_labels(root, concepts, split, len(images))
        out[split] = ([str(root / "Flickr" / rel) for rel in images], labels, notes)
    return out


# ---------------------------------------------------------------------------- nuswideseq


def inspect_seq(nuswide_root: str | Path, splits: str | Path, groups: str | Path | None = None) -> StreamReport:
    """NUSWIDEseq counts, groups and PROTOCOL.md checks from the label files and id lists (no images)."""
    names, ids, published, groups_dir = read_prs_lists(splits, groups, SEQ)
    root = Path(nuswide_root)
    _check_root(root)
    concepts = read_concepts(root)
    absent = [n for n in names if n not in concepts]
    if absent:  # a class without a label file would silently stay empty
        raise ValueError(f"{len(absent)} class(es) of multihot_map.json are not NUS-WIDE concepts of "
                         f"Concepts81.txt: {absent[:5]}.")
    official = _official(root, names)
    labels, paths, notes = {}, {}, []
    for (split, k), part in ids.items():
        images, split_labels, _ = official[split]
        beyond = [i for i in part if not 0 <= i < len(images)]
        if beyond:
            raise ValueError(f"{len(beyond)} id(s) of {split} task {k} are not rows of the {split} image list "
                             f"({len(images):,} images; first: {beyond[:5]}): --nuswide-root must hold the "
                             f"official ImageList.")
        labels[(split, k)] = split_labels[part]
        paths[(split, k)] = [images[i] for i in part]
    used = {(split, i): k for (split, k), part in ids.items() for i in part}
    for split in ("train", "test"):
        for fix in official[split][2]:
            task = used.get((split, fix.row))
            notes.append(fix.note(f", in task {task}" if task is not None else ", in no NUSWIDEseq task"))
    return StreamReport(SEQ, names, ids, labels, paths, published, groups_dir, label_notes=notes)


def prepare_seq(nuswide_root: str | Path, splits: str | Path, out: str | Path, *, groups: str | Path | None = None,
                size: int = SEQ_SIZE, skip_bad_images: bool = False, force: bool = False, chunk_rows: int = 256,
                progress: Callable[[int, int], None] | None = None) -> StreamReport:
    """Inspect, then write the memory-mapped store (missing images left out and counted, never stopping)."""
    report = inspect_seq(nuswide_root, splits, groups)
    require_published_groups(report)
    return _write(report, Path(nuswide_root), out, size=size, info={"splits": str(splits)},
                  skip_bad_images=skip_bad_images, force=force, chunk_rows=chunk_rows, progress=progress)


def _write(report: StreamReport, root: Path, out: str | Path, *, size: int, info: dict, skip_bad_images: bool,
           force: bool, chunk_rows: int, progress: Callable[[int, int], None] | None) -> StreamReport:
    if not (root / "Flickr").is_dir():  # without it every image would count as missing
        raise FileNotFoundError(f"NUS-WIDE image folder '{root / 'Flickr'}' not found: unpack the images as "
                                f"Flickr/<concept>/<file>.jpg under --nuswide-root.")
    return write_report_store(report, out, builder_version=BUILDER_VERSION, size=size,
                              info={"nuswide_root": str(root), **info}, skip_bad_images=skip_bad_images,
                              skip_missing=True, force=force, chunk_rows=chunk_rows, progress=progress)


@dataclass(frozen=True)
class NuswideseqOptions:
    """Options of ``nuswideseq``.

    Attributes:
        root: the store folder written by ``python -m cml_bench data prepare nuswideseq ... --out DIR``
            (required). Its index records the published groups and the images left out.
    """

    root: str | None = None


PRS_DEFAULTS = {
    # PRS set-up (PROTOCOL.md). pretrained=True needs ImageNet weights: without network, set
    # model.weights_path to a local file (or model.pretrained=false).
    "model": {"backbone": "resnet101", "pretrained": True, "feature_level": -1, "stem_pool": True},
    "train": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "grad_clip_value": 5.0},
}


@register_benchmark("nuswideseq", options=NuswideseqOptions, defaults=PRS_DEFAULTS,
                    description="NUS-WIDEseq (PRS): 6 tasks, 49 classes, from a store made by "
                                "`data prepare nuswideseq`",
                    data=DataCommands("NUS-WIDEseq (PRS): 6 tasks, 49 classes", inspect_seq, prepare_seq,
                                      (NUSWIDE_ROOT, *prs_list_options(SEQ)), size=SEQ_SIZE))
def build_seq(options: NuswideseqOptions):
    store = open_prepared_store(options.root, SEQ.name, BUILDER_VERSION, SEQ_HINT, what=SEQ.title)
    return benchmark_from_store(store, SEQ, default_buffer_size=2000, memory_rho=0.02)


# ---------------------------------------------------------------------------- nuswide (single task)


def inspect_single(nuswide_root: str | Path) -> StreamReport:
    """Counts of the official split on the 81 concepts, from the label files alone (no images)."""
    root = Path(nuswide_root)
    _check_root(root)
    concepts = read_concepts(root)
    official = _official(root, concepts)
    ids = {(s, 0): list(range(len(official[s][0]))) for s in ("train", "test")}
    labels = {(s, 0): official[s][1] for s in ("train", "test")}
    paths = {(s, 0): official[s][0] for s in ("train", "test")}
    notes = [fix.note() for s in ("train", "test") for fix in official[s][2]]
    return StreamReport(SINGLE, concepts, ids, labels, paths, label_notes=notes)


def prepare_single(nuswide_root: str | Path, out: str | Path, *, size: int = SINGLE_SIZE,
                   skip_bad_images: bool = False, force: bool = False, chunk_rows: int = 256,
                   progress: Callable[[int, int], None] | None = None) -> StreamReport:
    """Inspect, then write the memory-mapped store of the official split (missing images left out)."""
    report = inspect_single(nuswide_root)
    return _write(report, Path(nuswide_root), out, size=size, info={}, skip_bad_images=skip_bad_images,
                  force=force, chunk_rows=chunk_rows, progress=progress)


NuswideOptions = StoreOptions  # ``root``: the store written by ``data prepare nuswide`` (448 px by default)

build_single = register_single_task(
    "nuswide", builder_version=BUILDER_VERSION, prepare_hint=SINGLE_HINT, what=SINGLE.title,
    description="NUS-WIDE: 81 concepts, official split as one task (generic), from a store made by "
                "`data prepare nuswide`",
    data=DataCommands("NUS-WIDE, one task, 81 concepts", inspect_single, prepare_single, (NUSWIDE_ROOT,),
                      size=SINGLE_SIZE))
