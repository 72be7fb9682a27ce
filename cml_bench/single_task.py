"""Single-task ("generic") streams from a prepared store: one training set, one test set.

The pieces that ``benchmarks/coco2014.py`` and ``benchmarks/voc2007.py`` share: the report of what
the annotations say (counts checked against the published numbers) and preparation into a
:mod:`cml_bench.store` (parts ``("train", 0)`` and ``("test", 0)``). :func:`build` is the one
builder of every single-task benchmark (also ``nuswide`` and the pedestrian-attribute streams): one
experience, every class in it, no class groups; multi-epoch training through ``train.epochs``.

An optional per-pair ``ignore`` mask (VOC's "difficult" labels) follows ML-GCN's protocol: an
ignored pair is a positive in training, and is left out of evaluation. The benchmark hands the test
masks to the evaluator as ``benchmark.eval_ignore`` (one bool ``[N, M]`` array per test
experience, in its dataset order; see ``metrics.multilabel_metrics(..., ignore=)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cml_bench.store import MemmapRows, StorePart, open_prepared_store, require_folders, write_store
from cml_bench.stream import (BenchmarkMeta, DataCommands, MultiLabelBenchmark, MultiLabelTensorDataset,
                              make_benchmark, register_benchmark)

SPLITS = ("train", "test")
# The papers' backbone for generic multi-label classification (ResNet-101, ImageNet weights; without
# network access set model.weights_path, or model.pretrained=false).
PAPER_MODEL = {"backbone": "resnet101", "pretrained": True, "feature_level": -1, "stem_pool": True}


@dataclass
class SplitRows:
    """One split: image ids, image files and uint8 multi-hot labels ``[N, M]`` (plus the ignore mask)."""

    ids: list[Any]
    paths: list[str]
    labels: np.ndarray
    ignore: np.ndarray | None = None


@dataclass
class SingleTaskReport:
    """What the annotations say about a single-task stream; ``text()`` is the printed report.

    Attributes:
        title: the dataset's name in the report.
        class_names: the M label columns.
        splits: ``train`` and ``test`` rows.
        expected: the published numbers: ``{"classes": M, "train": N_train, "test": N_test}``.
        source: where ``expected`` comes from (named in the check line).
        notes: dataset-specific lines (what was left out and why).
        ignore_name: what the ignore mask means, in the report (``difficult``).
    """

    title: str
    class_names: list[str]
    splits: dict[str, SplitRows]
    expected: dict[str, int]
    source: str
    notes: list[str] = field(default_factory=list)
    ignore_name: str = "ignored"
    bad_images: list[dict[str, Any]] = field(default_factory=list)
    store_note: str = ""  # set by prepare: written / resumed / reused

    def count(self, split: str) -> int:
        """Images of ``split``: those the annotations list, less the bad ones a store left out."""
        return int(kept_rows(self.splits[split].ids, self.bad_images, split).sum())

    def class_counts(self, split: str) -> np.ndarray:
        keep = kept_rows(self.splits[split].ids, self.bad_images, split)
        return self.splits[split].labels[keep].sum(axis=0, dtype=np.int64)

    def ignored_counts(self, split: str) -> np.ndarray | None:
        mask = self.splits[split].ignore
        keep = kept_rows(self.splits[split].ids, self.bad_images, split)
        return None if mask is None else mask[keep].sum(axis=0, dtype=np.int64)

    def mismatches(self) -> list[str]:
        """Every difference from the published numbers."""
        out = []
        if len(self.class_names) != self.expected["classes"]:
            out.append(f"{len(self.class_names)} classes, {self.source}: {self.expected['classes']}")
        for split in SPLITS:
            if self.count(split) != self.expected[split]:
                out.append(f"{split}: {self.count(split):,} images, {self.source}: {self.expected[split]:,}")
        return out

    def text(self) -> str:
        lines = [f"{self.title}: single task, {len(self.class_names)} classes",
                 "| split | images | labels per image |", "|---|---:|---:|"]
        for split in SPLITS:
            n = max(self.count(split), 1)
            lines.append(f"| {split} | {self.count(split):,} | {self.class_counts(split).sum() / n:.2f} |")
        lines += [f"  {note}" for note in self.notes]
        has_ignore = self.ignored_counts("train") is not None
        extra = f" (+ {self.ignore_name})" if has_ignore else ""
        lines.append(f"\nTraining / test images per class{extra}:")
        tr, te = self.class_counts("train"), self.class_counts("test")
        for c, name in enumerate(self.class_names):
            line = f"  {name:<15} {int(tr[c]):>6} {int(te[c]):>6}"
            if has_ignore:
                line += f"  (+{int(self.ignored_counts('train')[c])} / +{int(self.ignored_counts('test')[c])})"
            lines.append(line)
        return "\n".join(lines + closing_lines(self.bad_images, self.store_note, self.source, self.mismatches()))


def kept_rows(ids: Sequence[Any], bad_images: Sequence[dict[str, Any]], split: str) -> np.ndarray:
    """bool per row of ``split``: False for the images a store left out (``--skip-bad-images``), so a
    report counts what was kept."""
    bad = {b["id"] for b in bad_images if b["split"] == split}
    return np.array([i not in bad for i in ids], dtype=bool)


def closing_lines(bad_images: list[dict[str, Any]], store_note: str, source: str, mismatches: list[str]) -> list[str]:
    """The end of a single-task preparation report: images left out, the store, the count check."""
    lines = []
    if bad_images:
        lines.append(f"\n{len(bad_images)} bad image(s) left out (--skip-bad-images):")
        lines += [f"  {b['path']} ({b['reason']})" for b in bad_images]
    if store_note:
        lines.append(f"\nStore: {store_note}")
    lines.append(f"\nCheck against {source}: " + ("all counts match" if not mismatches else
                                                  f"{len(mismatches)} difference(s):"))
    return lines + [f"  {m}" for m in mismatches]


def prepare(report: SingleTaskReport, out: str | Path, *, builder: str, builder_version: int, size: int,
            folder_hint: Callable[[Path], str], info: dict[str, Any] | None = None, skip_bad_images: bool = False,
            force: bool = False, chunk_rows: int = 256,
            progress: Callable[[int, int], None] | None = None) -> SingleTaskReport:
    """Write the store of ``report``'s rows at ``out`` (resumable, atomic; see ``write_store``)."""
    require_folders([p for split in SPLITS for p in report.splits[split].paths], folder_hint)
    parts = [StorePart(split, 0, rows.ids, rows.paths, rows.labels, rows.ignore)
             for split, rows in ((s, report.splits[s]) for s in SPLITS)]
    info = {**(info or {}), "expected": report.expected, "mismatches": report.mismatches(), "notes": report.notes}
    result = write_store(out, parts, report.class_names, builder=builder, builder_version=builder_version,
                         size=size, info=info, skip_bad_images=skip_bad_images, force=force,
                         chunk_rows=chunk_rows, progress=progress)
    report.bad_images = result.bad
    report.store_note = result.note(out)
    return report


def build(root: str | None, *, name: str, builder_version: int, prepare_hint: str, what: str | None = None,
          kind: str = "generic", train_splits: Sequence[str] = ("train",), test_split: str = "test"
          ) -> MultiLabelBenchmark:
    """The one-experience benchmark of the store that ``data prepare <name>`` wrote.

    Every single-task stream is built here (``coco2014``, ``voc2007``, ``nuswide``: ``kind="generic"``;
    the pedestrian streams: ``kind="attribute"``, training on ``train`` + ``val``). The experience
    trains on the store's ``train_splits`` parts (task 0) and tests on its ``test_split`` part.
    ``train_class_counts`` are the clear positives (VOC: difficult pairs not counted).
    """
    store = open_prepared_store(root, name, builder_version, prepare_hint, what=what or name)
    names = store.class_names
    train_rows = np.concatenate([store.rows(split, 0) for split in train_splits])
    test_rows = store.rows(test_split, 0)
    train_labels = np.asarray(store.labels[train_rows])
    eval_ignore = None
    if store.ignore is not None:
        train_labels = train_labels | np.asarray(store.ignore[train_rows])  # ML-GCN: a positive in training
        eval_ignore = [np.asarray(store.ignore[test_rows], dtype=bool)]
    images = store.path / "images.npy"
    train = MultiLabelTensorDataset(MemmapRows(images, train_rows), train_labels)
    test = MultiLabelTensorDataset(MemmapRows(images, test_rows), np.asarray(store.labels[test_rows]))
    counts = np.sum([store.part(split, 0)["class_counts"] for split in train_splits], axis=0)
    meta = BenchmarkMeta(
        name=name,
        class_names=tuple(names),
        task_classes=(tuple(range(len(names))),),
        groups={},
        task_ids=(0,),
        train_class_counts=tuple(int(c) for c in counts),
        kind=kind,
    )
    return make_benchmark([train], [test], meta, store=store, eval_ignore=eval_ignore)


@dataclass(frozen=True)
class StoreOptions:
    """Options of a single-task benchmark.

    Attributes:
        root: the store folder written by ``python -m cml_bench data prepare <benchmark> ... --out DIR``
            (required).
    """

    root: str | None = None


def register_single_task(name: str, *, builder_version: int, prepare_hint: str, description: str,
                         data: DataCommands, what: str | None = None, defaults: dict[str, Any] | None = None
                         ) -> Callable[[StoreOptions], MultiLabelBenchmark]:
    """Register generic benchmark ``name``, read from stores that ``data prepare <name>`` (``data``)
    writes (builder ``name``); returns its build function. ``defaults`` default to the papers' backbone."""

    def build_benchmark(options: StoreOptions) -> MultiLabelBenchmark:
        return build(options.root, name=name, builder_version=builder_version, prepare_hint=prepare_hint, what=what)

    register_benchmark(name, options=StoreOptions, description=description, data=data,
                       defaults=defaults if defaults is not None else {"model": PAPER_MODEL})(build_benchmark)
    return build_benchmark
