"""What the PRS streams (COCOseq, NUS-WIDEseq) share: their published numbers, the preparation
report, the PRS id lists and group lists, and the continual benchmark assembled from a prepared
:mod:`cml_bench.store`.

A dataset module (``benchmarks/cocoseq.py``, ``benchmarks/nuswide.py``) only reads its own files
into a :class:`StreamReport` (ids, multi-hot labels and image paths per ``(split, task)``); the
counts, the groups the counts imply, the check against PROTOCOL.md, the store and the benchmark
come from here. (The single-task ``nuswide`` stream uses the report and the store writer too; its
benchmark, like every single-task one, comes from :func:`cml_bench.single_task.build`.)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from cml_bench.store import MemmapRows, Store, StorePart, write_store
from cml_bench.stream import BenchmarkMeta, MultiLabelBenchmark, MultiLabelTensorDataset, SourceOption, make_benchmark

GROUPS = ("majority", "moderate", "minority")
# PROTOCOL.md's group bounds: minority < 200 training images, majority >= 900 (COCOseq's boat at
# exactly 900 is published as majority).
MAJORITY_MIN, MINORITY_BELOW = 900, 200
SHOWN_BAD = 10  # left-out images listed in the printed report (all of them are in the store index)


@dataclass(frozen=True)
class StreamProtocol:
    """The published numbers of one stream (PROTOCOL.md or the dataset's paper) a report is checked against.

    Attributes:
        title: the stream's name in print (``COCOseq``).
        name: the builder / benchmark name (``cocoseq``); also the prefix of the group list files.
        num_classes: label columns.
        train_counts, test_counts: images (ids) per original task.
        task_order: the original task id of each stream position.
        group_sizes: published majority / moderate / minority sizes; None for a stream without groups.
        id_suffix: PRS id list files are ``ids/{train,test}_task<k>_id_<id_suffix>.json``.
        every_image_labelled: an image without any label is a protocol difference (PRS streams);
            otherwise it is only counted (NUS-WIDE's official split keeps unlabelled images).
        prepare_hint: the command that prepares the store (for error messages).
        published_note: what the papers say beyond the counts checked (printed under the table).
    """

    title: str
    name: str
    num_classes: int
    train_counts: tuple[int, ...]
    test_counts: tuple[int, ...]
    task_order: tuple[int, ...] = (0,)
    group_sizes: Mapping[str, int] | None = None
    id_suffix: str = ""
    every_image_labelled: bool = True
    prepare_hint: str = ""
    published_note: str = ""

    @property
    def num_tasks(self) -> int:
        return len(self.train_counts)

    @property
    def splits_layout(self) -> str:
        return (f"multihot_map.json and ids/{{train,test}}_task<k>_id_{self.id_suffix}.json, like "
                f"prs_splits/{self.title}")


def group_of(count: int) -> str:
    return "majority" if count >= MAJORITY_MIN else "minority" if count < MINORITY_BELOW else "moderate"


def sizes_text(sizes: Mapping[str, int]) -> str:
    return " / ".join(f"{sizes[g]} {g}" for g in GROUPS)


def load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected '{path}'.")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{what} '{path}' is not valid JSON ({err}).") from err


# ---------------------------------------------------------------------------- PRS id and group lists


def read_splits(splits: str | Path, protocol: StreamProtocol) -> tuple[list[str], dict[tuple[str, int], list[int]]]:
    """Class names (multihot_map order) and id lists; a wrong folder gets a message naming the right one."""
    splits, title = Path(splits), protocol.title
    if not splits.is_dir():
        raise FileNotFoundError(f"{title} splits folder '{splits}' does not exist (expected {protocol.splits_layout}).")
    if not (splits / "multihot_map.json").is_file():
        if (splits / title / "multihot_map.json").is_file():
            raise ValueError(f"--splits '{splits}' is the parent of the {title} splits: pass "
                             f"--splits {splits / title}.")
        raise FileNotFoundError(f"'{splits}' is not a {title} splits folder: multihot_map.json is missing "
                                f"(expected {protocol.splits_layout}).")
    other = sorted({p.stem.rsplit("_id_", 1)[-1] for p in (splits / "ids").glob("*_id_*.json")} - {protocol.id_suffix})
    if other and not any((splits / "ids").glob(f"*_id_{protocol.id_suffix}.json")):
        raise ValueError(f"--splits '{splits}' holds id lists of another stream (*_id_{other[0]}.json); "
                         f"{title} needs {protocol.splits_layout}.")
    mapping = load_json(splits / "multihot_map.json", f"{title} class map")
    if not isinstance(mapping, dict) or sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"'{splits / 'multihot_map.json'}' must map class names to column indices 0..M-1.")
    names = sorted(mapping, key=mapping.get)
    ids = {(s, k): [int(i) for i in load_json(splits / "ids" / f"{s}_task{k}_id_{protocol.id_suffix}.json",
                                               f"{title} id list")]
           for s in ("train", "test") for k in range(protocol.num_tasks)}
    return names, ids


def groups_dir_for(splits: str | Path, groups: str | Path | None, protocol: StreamProtocol) -> Path:
    """``groups`` or, by default, ``../groups`` beside the splits folder (the prs_splits layout)."""
    groups_dir = Path(groups) if groups is not None else Path(splits).resolve().parent / "groups"
    if groups is not None and not groups_dir.is_dir():
        raise FileNotFoundError(f"Group lists folder '{groups_dir}' does not exist (expected "
                                f"{protocol.name}_{{majority,moderate,minority}}.json).")
    return groups_dir


def read_published_groups(groups_dir: Path, protocol: StreamProtocol,
                          class_names: list[str]) -> dict[str, list[str]] | None:
    """The published majority / moderate / minority lists, or None when the folder has none."""
    files = {g: groups_dir / f"{protocol.name}_{g}.json" for g in GROUPS}
    if not any(f.is_file() for f in files.values()):
        return None
    groups = {g: [str(n) for n in load_json(f, f"published {g} list")] for g, f in files.items()}
    unknown = sorted(n for g in GROUPS for n in groups[g] if n not in class_names)
    if unknown:
        raise ValueError(f"Published group lists in '{groups_dir}' name classes not in multihot_map.json: {unknown}.")
    return groups


def read_prs_lists(splits: str | Path, groups: str | Path | None, protocol: StreamProtocol
                   ) -> tuple[list[str], dict[tuple[str, int], list[int]], dict[str, list[str]] | None, Path]:
    """Class names, id lists, published groups (or None) and the groups folder of a PRS stream."""
    names, ids = read_splits(splits, protocol)
    groups_dir = groups_dir_for(splits, groups, protocol)
    return names, ids, read_published_groups(groups_dir, protocol, names), groups_dir


def prs_list_options(protocol: StreamProtocol) -> tuple[SourceOption, SourceOption]:
    """``--splits`` and ``--groups`` of a PRS stream's ``data`` commands (see :func:`read_prs_lists`)."""
    return (SourceOption("--splits", f"PRS id lists, laid out like prs_splits/{protocol.title} (multihot_map.json, "
                                     f"ids/)"),
            SourceOption("--groups", f"published group lists {protocol.name}_{{majority,moderate,minority}}.json "
                                     f"(default: ../groups beside --splits)", required=False))


def require_published_groups(report: StreamReport) -> None:
    """A store records the published groups (the reference for reporting): preparing needs them."""
    if report.published_groups is None:
        raise FileNotFoundError(f"Published group lists not found in '{report.groups_dir}' (expected "
                                f"{report.protocol.name}_{{majority,moderate,minority}}.json): pass --groups DIR.")


# ---------------------------------------------------------------------------- the report


@dataclass
class StreamReport:
    """What the labels say about a stream; ``text()`` is the printed report.

    ``ids`` / ``labels`` / ``paths`` are keyed by ``(split, original task id)``. ``label_notes``
    lists what the reader had to correct in the label files (e.g. a value that is not 0 or 1).
    """

    protocol: StreamProtocol
    class_names: list[str]
    ids: dict[tuple[str, int], list[int]]
    labels: dict[tuple[str, int], np.ndarray]
    paths: dict[tuple[str, int], list[str]]
    published_groups: dict[str, list[str]] | None = None
    groups_dir: Path | None = None
    label_notes: list[str] = field(default_factory=list)
    bad_images: list[dict[str, Any]] = field(default_factory=list)
    store_note: str = ""  # set by prepare: written / resumed / reused

    @property
    def keys(self) -> list[tuple[str, int]]:
        return [(s, k) for s in ("train", "test") for k in range(self.protocol.num_tasks)]

    def count(self, split: str) -> list[int]:
        return [len(self.ids[(split, k)]) for k in range(self.protocol.num_tasks)]

    def class_counts(self, split: str = "train") -> np.ndarray:
        return sum(self.labels[(split, k)].sum(axis=0, dtype=np.int64) for k in range(self.protocol.num_tasks))

    def left_out(self, split: str, reason: str | None = None) -> list[int]:
        """Per task, the images left out of the store (``reason``: only those, e.g. ``missing``)."""
        rows = {(s, k): 0 for s, k in self.keys}
        for b in self.bad_images:
            if reason is None or b["reason"] == reason:
                rows[(b["split"], b["task"])] += 1
        return [rows[(split, k)] for k in range(self.protocol.num_tasks)]

    def derived_groups(self) -> dict[str, list[str]]:
        counts = self.class_counts()
        return {g: [n for n, c in zip(self.class_names, counts) if group_of(int(c)) == g] for g in GROUPS}

    def group_differences(self) -> list[str]:
        """Classes whose own training count puts them in another group than the published one."""
        if self.published_groups is None:
            return []
        counts = dict(zip(self.class_names, self.class_counts()))
        published = {n: g for g in GROUPS for n in self.published_groups[g]}
        return [f"{n}: {counts[n]} training images -> {group_of(int(counts[n]))} by the counts, "
                f"published in {published.get(n, 'no group')}"
                for n in self.class_names if group_of(int(counts[n])) != published.get(n)]

    def no_label_images(self) -> list[str]:
        return [f"{s} task {k}: id {i}" for (s, k), ids in self.ids.items()
                for i, row in zip(ids, self.labels[(s, k)]) if not row.any()]

    def mismatches(self) -> list[str]:
        """Every difference from the published numbers."""
        p, out = self.protocol, []
        if len(self.class_names) != p.num_classes:
            out.append(f"{len(self.class_names)} classes, PROTOCOL.md: {p.num_classes}")
        for split, expected in (("train", p.train_counts), ("test", p.test_counts)):
            for k, (got, want) in enumerate(zip(self.count(split), expected)):
                if got != want:
                    out.append(f"{split} task {k}: {got:,} images, PROTOCOL.md: {want:,}")
        if p.group_sizes is not None:
            for name, groups in (("derived", self.derived_groups()), ("published", self.published_groups)):
                sizes = {g: len(groups[g]) for g in GROUPS} if groups else None
                if sizes is not None and sizes != dict(p.group_sizes):
                    out.append(f"{name} group sizes {sizes_text(sizes)}, PROTOCOL.md: {sizes_text(p.group_sizes)}")
        if p.every_image_labelled:
            out += [f"image without any of the {p.num_classes} labels: {x}" for x in self.no_label_images()]
        return out

    def text(self) -> str:
        p = self.protocol
        order = f" (streamed in order {', '.join(map(str, p.task_order))})" if p.num_tasks > 1 else ""
        lines = [f"{p.title}: {len(self.class_names)} classes, {p.num_tasks} task(s){order}", *self._count_lines()]
        if p.published_note:
            lines.append(p.published_note)
        tr, te = self.class_counts("train"), self.class_counts("test")
        grouped = p.group_sizes is not None
        lines += ["", "Training / test images per class" + (" (group by the training counts):" if grouped else ":")]
        lines += [f"  {n:<15} {int(a):>6} {int(b):>6}" + (f"  {group_of(int(a))}" if grouped else "")
                  for n, a, b in zip(self.class_names, tr, te)]
        if not p.every_image_labelled:
            lines.append(f"Images without any label: train {self._unlabelled('train'):,}, "
                         f"test {self._unlabelled('test'):,} (kept, as in the official split)")
        if grouped:
            lines += self._group_lines()
        if self.label_notes:
            lines.append(f"\nLabel files: {len(self.label_notes)} value(s) corrected:")
            lines += [f"  {n}" for n in self.label_notes]
        lines += self._bad_lines()
        mism = self.mismatches()
        if self.store_note:
            lines.append(f"\nStore: {self.store_note}")
        lines.append("\nPROTOCOL.md check: " + ("all counts match" if not mism else f"{len(mism)} difference(s):"))
        lines += [f"  {m}" for m in mism]
        return "\n".join(lines)

    def _count_lines(self) -> list[str]:
        """Images per task: ids, and (once images were read) the images actually in the store."""
        tasks = range(self.protocol.num_tasks)
        train, test = self.count("train"), self.count("test")
        total = len(train) > 1
        if self.bad_images:
            kept = {s: [n - lost for n, lost in zip(self.count(s), self.left_out(s))] for s in ("train", "test")}
            lines = ["| task | train ids | train images | test ids | test images |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {k} | {train[k]:,} | {kept['train'][k]:,} | {test[k]:,} | {kept['test'][k]:,} |"
                      for k in tasks]
            if total:
                lines.append(f"| all | {sum(train):,} | {sum(kept['train']):,} | {sum(test):,} | "
                             f"{sum(kept['test']):,} |")
            return lines
        lines = ["| task | train | test |", "|---|---:|---:|"]
        lines += [f"| {k} | {train[k]:,} | {test[k]:,} |" for k in tasks]
        if total:
            distinct = len({i for k in tasks for i in self.ids[("test", k)]})
            lines.append(f"| all | {sum(train):,} | {sum(test):,} ({distinct:,} distinct ids) |")
        return lines

    def _unlabelled(self, split: str) -> int:
        return sum(int((self.labels[(split, k)].sum(axis=1) == 0).sum()) for k in range(self.protocol.num_tasks))

    def _group_lines(self) -> list[str]:
        lines = [f"\nGroups by the counts: {sizes_text({g: len(v) for g, v in self.derived_groups().items()})}"]
        if self.published_groups is None:
            lines.append(f"Published group lists: not found in {self.groups_dir} (pass --groups DIR)")
            return lines
        diffs = self.group_differences()
        lines.append(f"Published group lists ({self.groups_dir}): "
                     f"{sizes_text({g: len(v) for g, v in self.published_groups.items()})}; "
                     + ("the counts agree with every class's published group" if not diffs else
                        f"{len(diffs)} class(es) differ:"))
        return lines + [f"  {d}" for d in diffs]

    def _bad_lines(self) -> list[str]:
        if not self.bad_images:
            return []
        missing = {s: self.left_out(s, "missing") for s in ("train", "test")}
        n_missing = sum(missing["train"]) + sum(missing["test"])
        lines = [f"\n{len(self.bad_images)} bad image(s) left out of the store ({n_missing} missing on disk, "
                 f"{len(self.bad_images) - n_missing} unreadable or truncated):"]
        for s in ("train", "test"):
            lost = self.left_out(s)
            lines.append(f"  {s}, per task: " + ", ".join(f"{k}: {n} ({m} missing)" for k, (n, m) in
                                                          enumerate(zip(lost, missing[s]))))
        lines += [f"  {b['path']} ({b['reason']})" for b in self.bad_images[:SHOWN_BAD]]
        if len(self.bad_images) > SHOWN_BAD:
            lines.append(f"  ... and {len(self.bad_images) - SHOWN_BAD} more (all listed in the store's "
                         f"index.json, parts[].bad; a run writes them to left_out_images.csv)")
        return lines


# ---------------------------------------------------------------------------- store and benchmark


def write_report_store(report: StreamReport, out: str | Path, *, builder_version: int, size: int,
                       info: dict[str, Any], skip_bad_images: bool = False, skip_missing: bool = False,
                       force: bool = False, chunk_rows: int = 256,
                       progress: Callable[[int, int], None] | None = None) -> StreamReport:
    """Write the report's rows to the store at ``out`` (see :func:`cml_bench.store.write_store`).

    The store's index records ``info`` plus the published and derived groups, the group
    differences, the protocol differences and the label corrections.
    """
    info = {"task_order": list(report.protocol.task_order), "published_groups": report.published_groups,
            "protocol_mismatches": report.mismatches(), "label_notes": report.label_notes, **info}
    if report.protocol.group_sizes is not None:
        info.update(derived_groups=report.derived_groups(), group_differences=report.group_differences())
    parts = [StorePart(s, k, report.ids[(s, k)], report.paths[(s, k)], report.labels[(s, k)]) for s, k in report.keys]
    result = write_store(out, parts, report.class_names, builder=report.protocol.name,
                         builder_version=builder_version, size=size, info=info,
                         skip_bad_images=skip_bad_images, skip_missing=skip_missing, force=force,
                         chunk_rows=chunk_rows, progress=progress)
    report.bad_images = result.bad
    report.store_note = result.note(out)
    return report


def benchmark_from_store(store: Store, protocol: StreamProtocol, *, default_buffer_size: int = 2000,
                         memory_rho: float = -0.03) -> MultiLabelBenchmark:
    """The continual stream of a PRS store: tasks in the protocol's order, images memory-mapped,
    never copied into RAM (single-task streams are built by :func:`cml_bench.single_task.build`).

    Groups are the published lists recorded in the store; a task's classes are those its training
    images carry.
    """
    names = store.class_names
    datasets: dict[str, list[MultiLabelTensorDataset]] = {}
    for split in ("train", "test"):
        datasets[split] = []
        for k in protocol.task_order:
            rows = store.rows(split, k)
            datasets[split].append(MultiLabelTensorDataset(MemmapRows(store.path / "images.npy", rows),
                                                           np.asarray(store.labels[rows])))
    counts = [store.part("train", k)["class_counts"] for k in protocol.task_order]
    published = store.index["info"]["published_groups"]
    meta = BenchmarkMeta(
        name=protocol.name,
        class_names=tuple(names),
        task_classes=tuple(tuple(int(c) for c in np.flatnonzero(np.asarray(t) > 0)) for t in counts),
        groups={g: tuple(sorted(names.index(n) for n in published[g])) for g in GROUPS},
        task_ids=tuple(protocol.task_order),
        train_class_counts=tuple(int(c) for c in np.sum(counts, axis=0)),
        default_buffer_size=default_buffer_size,
        memory_rho=memory_rho,
    )
    return make_benchmark(datasets["train"], datasets["test"], meta, store=store)
