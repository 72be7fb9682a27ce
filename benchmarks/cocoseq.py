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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cml_bench.store import MemmapRows, StorePart, open_prepared_store, require_folders, write_store
from cml_bench.stream import BenchmarkMeta, MultiLabelTensorDataset, make_benchmark, register_benchmark

BUILDER_VERSION = 1
NUM_TASKS = 4
TASK_ORDER = (0, 3, 1, 2)
GROUPS = ("majority", "moderate", "minority")
# PROTOCOL.md (PRS release): images per original task, group sizes, and the group bounds
# (minority < 200 training images, majority >= 900: boat at exactly 900 is published as majority).
PROTOCOL_TRAIN = (8365, 7814, 11603, 7290)
PROTOCOL_TEST = (1960, 1690, 1400, 1316)
PROTOCOL_GROUP_SIZES = {"majority": 18, "moderate": 38, "minority": 14}
MAJORITY_MIN, MINORITY_BELOW = 900, 200
PREPARE_HINT = ("python -m cml_bench data prepare cocoseq --coco-root COCO2014 --splits "
                "prs_splits/COCOseq --out STORE")
SPLITS_LAYOUT = "multihot_map.json and ids/{train,test}_task<k>_id_coco.json, like prs_splits/COCOseq"


@dataclass
class CocoseqReport:
    """What the annotations say about the stream; ``text()`` is the printed report.

    ``ids`` / ``labels`` / ``paths`` are keyed by ``(split, original task id)``.
    """

    class_names: list[str]
    ids: dict[tuple[str, int], list[int]]
    labels: dict[tuple[str, int], np.ndarray]
    paths: dict[tuple[str, int], list[str]]
    published_groups: dict[str, list[str]] | None
    groups_dir: Path
    bad_images: list[dict[str, Any]] = field(default_factory=list)
    store_note: str = ""  # set by prepare: written / resumed / reused

    def count(self, split: str) -> list[int]:
        return [len(self.ids[(split, k)]) for k in range(NUM_TASKS)]

    def class_counts(self, split: str = "train") -> np.ndarray:
        return sum(self.labels[(split, k)].sum(axis=0, dtype=np.int64) for k in range(NUM_TASKS))

    def derived_groups(self) -> dict[str, list[str]]:
        counts = self.class_counts()
        return {g: [n for n, c in zip(self.class_names, counts) if _group_of(int(c)) == g] for g in GROUPS}

    def group_differences(self) -> list[str]:
        """Classes whose own training count puts them in another group than the published one."""
        if self.published_groups is None:
            return []
        counts = dict(zip(self.class_names, self.class_counts()))
        published = {n: g for g in GROUPS for n in self.published_groups[g]}
        return [f"{n}: {counts[n]} training images -> {_group_of(int(counts[n]))} by the counts, "
                f"published in {published.get(n, 'no group')}"
                for n in self.class_names if _group_of(int(counts[n])) != published.get(n)]

    def no_label_images(self) -> list[str]:
        return [f"{s} task {k}: id {i}" for (s, k), ids in self.ids.items()
                for i, row in zip(ids, self.labels[(s, k)]) if not row.any()]

    def mismatches(self) -> list[str]:
        """Every difference from PROTOCOL.md's numbers."""
        out = []
        if len(self.class_names) != 70:
            out.append(f"{len(self.class_names)} classes, PROTOCOL.md: 70")
        for split, expected in (("train", PROTOCOL_TRAIN), ("test", PROTOCOL_TEST)):
            for k, (got, want) in enumerate(zip(self.count(split), expected)):
                if got != want:
                    out.append(f"{split} task {k}: {got:,} images, PROTOCOL.md: {want:,}")
        for name, groups in (("derived", self.derived_groups()), ("published", self.published_groups)):
            sizes = {g: len(groups[g]) for g in GROUPS} if groups else None
            if sizes is not None and sizes != PROTOCOL_GROUP_SIZES:
                out.append(f"{name} group sizes {_sizes(sizes)}, PROTOCOL.md: {_sizes(PROTOCOL_GROUP_SIZES)}")
        out += [f"image without any of the 70 labels: {x}" for x in self.no_label_images()]
        return out

    def text(self) -> str:
        train, test = self.count("train"), self.count("test")
        lines = [f"COCOseq: {len(self.class_names)} classes, {NUM_TASKS} tasks (streamed in order "
                 f"{', '.join(map(str, TASK_ORDER))})",
                 "| task | train | test |", "|---|---:|---:|"]
        lines += [f"| {k} | {train[k]:,} | {test[k]:,} |" for k in range(NUM_TASKS)]
        distinct = len({i for k in range(NUM_TASKS) for i in self.ids[("test", k)]})
        lines += [f"| all | {sum(train):,} | {sum(test):,} ({distinct:,} distinct ids) |", "",
                  "Training / test images per class (group by the training counts):"]
        tr, te = self.class_counts("train"), self.class_counts("test")
        lines += [f"  {n:<15} {int(a):>5} {int(b):>4}  {_group_of(int(a))}"
                  for n, a, b in zip(self.class_names, tr, te)]
        lines.append(f"\nGroups by the counts: {_sizes({g: len(v) for g, v in self.derived_groups().items()})}")
        if self.published_groups is None:
            lines.append(f"Published group lists: not found in {self.groups_dir} (pass --groups DIR)")
        else:
            diffs = self.group_differences()
            lines.append(f"Published group lists ({self.groups_dir}): "
                         f"{_sizes({g: len(v) for g, v in self.published_groups.items()})}; "
                         + ("the counts agree with every class's published group" if not diffs else
                            f"{len(diffs)} class(es) differ:"))
            lines += [f"  {d}" for d in diffs]
        if self.bad_images:
            lines.append(f"\n{len(self.bad_images)} bad image(s) left out (--skip-bad-images):")
            lines += [f"  {b['path']} ({b['reason']})" for b in self.bad_images]
        mism = self.mismatches()
        if self.store_note:
            lines.append(f"\nStore: {self.store_note}")
        lines.append("\nPROTOCOL.md check: " + ("all counts match" if not mism else f"{len(mism)} difference(s):"))
        lines += [f"  {m}" for m in mism]
        return "\n".join(lines)


def _group_of(count: int) -> str:
    return "majority" if count >= MAJORITY_MIN else "minority" if count < MINORITY_BELOW else "moderate"


def _sizes(sizes: dict[str, int]) -> str:
    return " / ".join(f"{sizes[g]} {g}" for g in GROUPS)


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected '{path}'.")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{what} '{path}' is not valid JSON ({err}).") from err


def read_splits(splits: str | Path) -> tuple[list[str], dict[tuple[str, int], list[int]]]:
    """Class names (multihot_map order) and id lists; a wrong folder gets a message naming the right one."""
    splits = Path(splits)
    if not splits.is_dir():
        raise FileNotFoundError(f"COCOseq splits folder '{splits}' does not exist (expected {SPLITS_LAYOUT}).")
    if not (splits / "multihot_map.json").is_file():
        if (splits / "COCOseq" / "multihot_map.json").is_file():
            raise ValueError(f"--splits '{splits}' is the parent of the COCOseq splits: pass --splits {splits / 'COCOseq'}.")
        if any((splits / "ids").glob("*_nuswide.json")):
            raise ValueError(f"--splits '{splits}' holds NUS-WIDEseq id lists; COCOseq needs {SPLITS_LAYOUT}.")
        raise FileNotFoundError(f"'{splits}' is not a COCOseq splits folder: multihot_map.json is missing "
                                f"(expected {SPLITS_LAYOUT}).")
    mapping = _load_json(splits / "multihot_map.json", "COCOseq class map")
    if not isinstance(mapping, dict) or sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"'{splits / 'multihot_map.json'}' must map class names to column indices 0..M-1.")
    names = sorted(mapping, key=mapping.get)
    ids = {(s, k): [int(i) for i in _load_json(splits / "ids" / f"{s}_task{k}_id_coco.json", "COCOseq id list")]
           for s in ("train", "test") for k in range(NUM_TASKS)}
    return names, ids


def read_published_groups(groups_dir: Path, class_names: list[str]) -> dict[str, list[str]] | None:
    """The published majority / moderate / minority lists, or None when the folder has none."""
    files = {g: groups_dir / f"cocoseq_{g}.json" for g in GROUPS}
    if not any(f.is_file() for f in files.values()):
        return None
    groups = {g: [str(n) for n in _load_json(f, f"published {g} list")] for g, f in files.items()}
    unknown = sorted(n for g in GROUPS for n in groups[g] if n not in class_names)
    if unknown:
        raise ValueError(f"Published group lists in '{groups_dir}' name classes not in multihot_map.json: {unknown}.")
    return groups


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
        data = _load_json(path, f"COCO annotation file (from annotations_trainval2014.zip, under --coco-root)")
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


def inspect(coco_root: str | Path, splits: str | Path, groups: str | Path | None = None) -> CocoseqReport:
    """Counts, groups and PROTOCOL.md checks from the annotations and id lists alone (no images).

    ``groups`` defaults to ``../groups`` beside the splits folder (the prs_splits layout).
    """
    names, ids = read_splits(splits)
    groups_dir = Path(groups) if groups is not None else Path(splits).resolve().parent / "groups"
    if groups is not None and not groups_dir.is_dir():
        raise FileNotFoundError(f"Group lists folder '{groups_dir}' does not exist (expected "
                                f"cocoseq_{{majority,moderate,minority}}.json).")
    published = read_published_groups(groups_dir, names)
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
    return CocoseqReport(names, ids, labels, paths, published, groups_dir)


def prepare(coco_root: str | Path, splits: str | Path, out: str | Path, *, groups: str | Path | None = None,
            size: int = 256, skip_bad_images: bool = False, force: bool = False, chunk_rows: int = 256,
            progress: Callable[[int, int], None] | None = None) -> CocoseqReport:
    """Inspect, then write the memory-mapped store at ``out`` (resumable; see :func:`write_store`)."""
    report = inspect(coco_root, splits, groups)
    if report.published_groups is None:
        raise FileNotFoundError(f"Published group lists not found in '{report.groups_dir}' (expected "
                                f"cocoseq_{{majority,moderate,minority}}.json): pass --groups DIR.")
    keys = [(s, k) for s in ("train", "test") for k in range(NUM_TASKS)]
    require_folders([p for key in keys for p in report.paths[key]], coco_folder_hint)
    info = {"task_order": list(TASK_ORDER), "published_groups": report.published_groups,
            "derived_groups": report.derived_groups(), "group_differences": report.group_differences(),
            "protocol_mismatches": report.mismatches(), "coco_root": str(coco_root), "splits": str(splits)}
    parts = [StorePart(s, k, report.ids[(s, k)], report.paths[(s, k)], report.labels[(s, k)]) for s, k in keys]
    result = write_store(out, parts, report.class_names, builder="cocoseq", builder_version=BUILDER_VERSION,
                         size=size, info=info, skip_bad_images=skip_bad_images, force=force,
                         chunk_rows=chunk_rows, progress=progress)
    report.bad_images = result.bad
    report.store_note = result.note(out)
    return report


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
)
def build(options: CocoseqOptions):
    store = open_prepared_store(options.root, "cocoseq", BUILDER_VERSION, PREPARE_HINT, what="COCOseq")
    names = store.class_names
    datasets = {}
    for split in ("train", "test"):
        datasets[split] = []
        for k in TASK_ORDER:
            rows = store.rows(split, k)
            datasets[split].append(MultiLabelTensorDataset(MemmapRows(store.path / "images.npy", rows),
                                                           np.asarray(store.labels[rows])))
    counts = [store.part("train", k)["class_counts"] for k in TASK_ORDER]
    published = store.index["info"]["published_groups"]
    meta = BenchmarkMeta(
        name="cocoseq",
        class_names=tuple(names),
        task_classes=tuple(tuple(int(c) for c in np.flatnonzero(np.asarray(t) > 0)) for t in counts),
        groups={g: tuple(sorted(names.index(n) for n in published[g])) for g in GROUPS},
        task_ids=TASK_ORDER,
        train_class_counts=tuple(int(c) for c in np.sum(counts, axis=0)),
        default_buffer_size=2000,
        prs_rho=-0.03,
    )
    return make_benchmark(datasets["train"], datasets["test"], meta, store=store)
