"""``pa100k``, ``rap_zs``, ``peta_zs``: the pedestrian-attribute single-task streams of DLFL (section 4.2).

Inputs (never copied into this project):

* PA-100K (Liu et al., ICCV 2017): the official ``annotation.mat`` (``attributes``,
  ``{train,val,test}_images_name``, ``{train,val,test}_label``) beside the image folder ``data/``.
* RAP_ZS and PETA_ZS (Jia et al., "Rethinking of pedestrian attribute recognition", paper ref [28]):
  the zero-shot split files ``dataset_zs_run<k>.pkl`` published with that paper's code, in the
  RAPv2 folder (beside ``RAP_dataset/``) or the PETA folder (beside ``images/``). Each is a pickled
  dict: ``image_name`` (all images of the dataset), ``label`` ``[N, A]``, ``attr_name``,
  ``label_idx.eval`` (the evaluated attributes: 53 of RAPv2's, 35 of PETA's) and ``partition``
  (``train`` / ``val`` / ``test`` / ``trainval`` index arrays into ``image_name``).

``data prepare`` writes a :mod:`cml_bench.store` with the three partitions (256 x 192 px by default,
the papers' input size); the benchmark trains on ``train`` + ``val`` and evaluates on ``test``, as
Jia et al.'s configurations do (``benchmark.options.train_split=train`` and ``test_split=val`` hold
the validation set out for model selection instead). Each stream is one experience of kind
``attribute``: mA, Accu, Prec, Recall, F1; ``train.epochs`` sets the number of passes.
"""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cml_bench import single_task
from cml_bench.store import BadImagesError, StorePart, write_store
from cml_bench.stream import DataCommands, SourceOption, register_benchmark

BUILDER_VERSION = 1
IMAGE_SIZE = (256, 192)  # height, width: DLFL section 4.2.3 and Jia et al.'s configs
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class AttributeDataset:
    """What the papers publish about one dataset: attributes and images per partition."""

    name: str
    title: str
    num_attributes: int
    published: dict[str, int]
    layout: str  # what --root must hold, for error messages
    root_help: str  # the same, for --help


DATASETS = {
    "pa100k": AttributeDataset("pa100k", "PA-100K", 26, {"train": 80_000, "val": 10_000, "test": 10_000},
                               "annotation.mat and the image folder data/",
                               "PA-100K folder: annotation.mat and data/"),
    "rap_zs": AttributeDataset("rap_zs", "RAP_ZS", 53, {"train": 17_062, "val": 4_648, "test": 4_928},
                               "dataset_zs_run0.pkl (Jia et al.'s RAPv2 zero-shot split) and RAP_dataset/",
                               "RAPv2 folder: dataset_zs_run0.pkl and RAP_dataset/"),
    "peta_zs": AttributeDataset("peta_zs", "PETA_ZS", 35, {"train": 11_241, "val": 3_826, "test": 3_933},
                                "dataset_zs_run0.pkl (Jia et al.'s PETA zero-shot split) and images/",
                                "PETA folder: dataset_zs_run0.pkl and images/"),
}
# the ``description`` field of Jia et al.'s pickles, and the image folder their ``root`` names
ZS_SOURCE = {"rap_zs": ("rap2", "RAP_dataset"), "peta_zs": ("peta", "images")}


def prepare_hint(name: str) -> str:
    return f"python -m cml_bench data prepare {name} --root DIR --out STORE"


@dataclass
class AttributeReport:
    """What the annotations say about one dataset; ``text()`` is the printed report."""

    dataset: AttributeDataset
    attribute_names: list[str]
    ids: dict[str, list[str]]
    paths: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    source: str  # the annotation file read
    notes: list[str] = field(default_factory=list)  # facts about the files worth a line each
    unnamed: list[str] = field(default_factory=list)  # annotation rows without an image file name
    missing_files: list[str] | None = None  # set by inspect
    bad_images: list[dict[str, Any]] = field(default_factory=list)
    store_note: str = ""

    def count(self, split: str) -> int:
        """Images of ``split``: those the annotations list, less the bad ones a store left out."""
        return int(single_task.kept_rows(self.ids[split], self.bad_images, split).sum())

    def mismatches(self) -> list[str]:
        """Every difference from the published numbers."""
        d = self.dataset
        out = [] if len(self.attribute_names) == d.num_attributes else \
            [f"{len(self.attribute_names)} attributes, published: {d.num_attributes}"]
        for split in SPLITS:
            n = self.count(split)
            if n != d.published[split]:
                out.append(f"{split}: {n:,} images, published: {d.published[split]:,}")
        return out + [f"annotation row without an image file name: {u}" for u in self.unnamed]

    def text(self) -> str:
        d = self.dataset
        lines = [f"{d.title}: {len(self.attribute_names)} attributes, from {self.source}",
                 "| partition | images | published |", "|---|---:|---:|"]
        lines += [f"| {s} | {self.count(s):,} | {d.published[s]:,} |" for s in SPLITS]
        lines += ["", "Positive images per attribute (train / val / test):"]
        keep = {s: single_task.kept_rows(self.ids[s], self.bad_images, s) for s in SPLITS}
        counts = {s: self.labels[s][keep[s]].sum(axis=0, dtype=np.int64) for s in SPLITS}
        lines += [f"  {name:<28} {int(counts['train'][a]):>6} {int(counts['val'][a]):>6} {int(counts['test'][a]):>6}"
                  for a, name in enumerate(self.attribute_names)]
        lines += [f"\nNote: {n}" for n in self.notes]
        if self.missing_files is not None:
            lines.append(f"\nImage files missing on disk: {len(self.missing_files):,}"
                         + (f" (first: {', '.join(self.missing_files[:3])})" if self.missing_files else ""))
        return "\n".join(lines + single_task.closing_lines(self.bad_images, self.store_note,
                                                          "the published numbers", self.mismatches()))


# ----------------------------------------------------------------------------- PA-100K


def _first_dir(candidates: list[Path], what: str, root: Path) -> Path:
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(f"'{p}'" for p in candidates)
    raise FileNotFoundError(f"{what} not found under --root '{root}' (looked for {tried}).")


def read_pa100k(root: str | Path) -> AttributeReport:
    """Attributes, partitions and labels of PA-100K from ``annotation.mat`` (no images read).

    ``root`` holds ``annotation.mat`` (or ``annotation/annotation.mat``) and the images in ``data/``
    (or ``data/release_data/release_data/``, the layout of the released archive).
    """
    root = Path(root)
    spec = DATASETS["pa100k"]
    if not root.is_dir():
        raise FileNotFoundError(f"PA-100K root '{root}' does not exist (expected a folder holding {spec.layout}).")
    mat_path = next((p for p in (root / "annotation.mat", root / "annotation" / "annotation.mat") if p.is_file()), None)
    if mat_path is None:
        raise FileNotFoundError(f"PA-100K annotation file not found: expected '{root / 'annotation.mat'}' "
                                f"(or annotation/annotation.mat) from the official release.")
    try:
        from scipy.io import loadmat
    except ImportError as err:  # pragma: no cover - scipy is a dependency
        raise ValueError("Reading annotation.mat needs scipy: pip install scipy.") from err
    try:
        mat = loadmat(mat_path)
    except Exception as err:  # noqa: BLE001 - scipy's MatReadError, ValueError, zlib errors on a cut file...
        raise ValueError(f"'{mat_path}' is not a readable MATLAB file ({type(err).__name__}: {err}): expected "
                         f"PA-100K's official annotation.mat; download it again.") from None
    wanted = ["attributes"] + [f"{s}_{k}" for s in SPLITS for k in ("images_name", "label")]
    absent = [k for k in wanted if k not in mat]
    if absent:
        raise ValueError(f"'{mat_path}' is not the PA-100K annotation file: it lacks {', '.join(absent)}.")
    images = _first_dir([root / "data" / "release_data" / "release_data", root / "data"], "PA-100K image folder", root)
    names = [_mat_string(a) for a in np.ravel(mat["attributes"])]
    report = AttributeReport(spec, names, {}, {}, {}, str(mat_path))
    extra = sorted(k for k in mat if not k.startswith("__") and k not in wanted)
    if extra:
        report.notes.append(f"{mat_path.name} also holds {', '.join(extra)} (not part of the official layout; ignored)")
    for split in SPLITS:
        files = [_mat_string(a) for a in np.ravel(mat[f"{split}_images_name"])]
        labels = _binary(np.asarray(mat[f"{split}_label"]), f"{split}_label", mat_path)
        if labels.shape != (len(files), len(names)):
            raise ValueError(f"'{mat_path}': {split}_label has shape {labels.shape}, expected "
                             f"({len(files)}, {len(names)}) ({split}_images_name rows x attributes).")
        keep = [i for i, f in enumerate(files) if f]
        report.unnamed += [f"{split}_images_name row {i}" for i, f in enumerate(files) if not f]
        report.ids[split] = [files[i] for i in keep]
        report.paths[split] = [str(images / files[i]) for i in keep]
        report.labels[split] = labels[keep]
    return report


def _mat_string(cell: Any) -> str:
    """The string in a MATLAB cell as loadmat returns it (``array(['x'])``); '' for an empty cell."""
    flat = np.ravel(cell)
    return str(flat[0]).strip() if flat.size else ""


def _binary(labels: np.ndarray, what: str, source: Path) -> np.ndarray:
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        raise ValueError(f"'{source}': {what} must hold 0 or 1, but {int(bad.sum())} entries do "
                         f"(values such as {np.unique(labels[bad])[:5].tolist()}).")
    return labels.astype(np.uint8)


# ----------------------------------------------------------------------------- RAP_ZS / PETA_ZS


class _ZsUnpickler(pickle.Unpickler):
    """Loads Jia et al.'s split pickles without their code: EasyDict becomes a plain dict, numpy
    arrays are rebuilt, and nothing else may be imported (a pickle can run any code it names)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "range"), ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("easydict", "EasyDict"):
            return _AttrDict
        if (module, name) in self.ALLOWED:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):
                module = module.replace("numpy.core.", "numpy._core.")  # numpy 1.x pickles under numpy 2
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


class _AttrDict(dict):
    """Stands in for ``easydict.EasyDict`` while unpickling (its attributes are its items)."""


def read_zs_split(dataset: str, root: str | Path, split_file: str | Path | None = None) -> AttributeReport:
    """Attributes, partitions and labels of RAP_ZS / PETA_ZS from a ``dataset_zs_run<k>.pkl``.

    ``root`` is the dataset folder (RAPv2's, holding ``RAP_dataset/``; PETA's, holding ``images/``);
    ``split_file`` defaults to ``root/dataset_zs_run0.pkl``.
    """
    spec, (description, folder) = DATASETS[dataset], ZS_SOURCE[dataset]
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{spec.title} root '{root}' does not exist (expected a folder holding {spec.layout}).")
    path = Path(split_file) if split_file is not None else root / "dataset_zs_run0.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"{spec.title} split file not found: expected '{path}' (the dataset_zs_run<k>.pkl "
                                f"published with Jia et al.'s PAR code; pass --split-file for another run).")
    try:
        data = _ZsUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - any failure means the same: not one of these pickles
        raise ValueError(f"'{path}' is not a readable zero-shot split pickle ({type(err).__name__}: {err}).") from err
    if not isinstance(data, dict) or not {"image_name", "label", "attr_name", "partition"} <= set(data):
        raise ValueError(f"'{path}' is not a zero-shot split pickle: it needs image_name, label, attr_name "
                         f"and partition.")
    found = str(data.get("description", description))
    if found != description:
        raise ValueError(f"'{path}' describes the '{found}' dataset, but {spec.title} is built from '{description}' "
                         f"(did you pass the other dataset's split file?).")
    partition = data["partition"]
    if not isinstance(partition, dict) or not all(s in partition for s in SPLITS):
        raise ValueError(f"'{path}': partition must hold train, val and test index arrays.")
    if any(isinstance(partition[s], list) for s in SPLITS):
        raise ValueError(f"'{path}' holds the five random splits (a dataset_all.pkl), not the zero-shot split: "
                         f"pass dataset_zs_run<k>.pkl.")
    names = [str(n) for n in data["image_name"]]
    labels = np.asarray(data["label"])
    attr = [str(a) for a in data["attr_name"]]
    if labels.ndim != 2 or labels.shape != (len(names), len(attr)):
        raise ValueError(f"'{path}': label has shape {labels.shape}, expected ({len(names)}, {len(attr)}) "
                         f"(image_name x attr_name).")
    label_idx = data.get("label_idx") or {}
    cols = [int(c) for c in label_idx.get("eval", range(len(attr)))]
    report = AttributeReport(spec, [attr[c] for c in cols], {}, {}, {}, str(path))
    labels = labels[:, cols]
    uncertain = int((labels == 2).sum())
    if uncertain:  # RAP marks some labels 2 (uncertain); Jia et al.'s loader counts them as negative
        report.notes.append(f"{uncertain} label(s) of value 2 (uncertain) counted as 0, as Jia et al.'s loader does")
        labels = np.where(labels == 2, 0, labels)
    labels = _binary(labels, "label", path)
    if len(cols) != len(attr):
        report.notes.append(f"{len(cols)} evaluated attributes (label_idx.eval) of the {len(attr)} in the file")
    images = root / Path(str(data.get("root", folder))).name
    images = _first_dir([images, root / folder], f"{spec.title} image folder", root)
    for split in SPLITS:
        idx = np.asarray(partition[split], dtype=np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= len(names)):
            raise ValueError(f"'{path}': partition {split} indexes images outside 0..{len(names) - 1}.")
        report.ids[split] = [names[i] for i in idx]
        report.paths[split] = [str(images / names[i]) for i in idx]
        report.labels[split] = labels[idx]
    return report


# ----------------------------------------------------------------------------- inspect / prepare


def read_annotations(dataset: str, root: str | Path, split_file: str | Path | None = None) -> AttributeReport:
    if dataset not in DATASETS:
        raise ValueError(f"Unknown pedestrian-attribute dataset '{dataset}'. Available: {', '.join(DATASETS)}.")
    if dataset == "pa100k":
        if split_file is not None:
            raise ValueError("--split-file is for rap_zs / peta_zs; PA-100K's partitions are in annotation.mat.")
        return read_pa100k(root)
    return read_zs_split(dataset, root, split_file)


def inspect(dataset: str, root: str | Path, split_file: str | Path | None = None) -> AttributeReport:
    """Counts and checks from the annotations, plus which image files are missing (none decoded)."""
    report = read_annotations(dataset, root, split_file)
    report.missing_files = [p for s in SPLITS for p in report.paths[s] if not Path(p).is_file()]
    return report


def prepare(dataset: str, root: str | Path, out: str | Path, *, split_file: str | Path | None = None,
            size: tuple[int, int] = IMAGE_SIZE, skip_bad_images: bool = False, force: bool = False,
            chunk_rows: int = 256, progress: Callable[[int, int], None] | None = None) -> AttributeReport:
    """Read the annotations, then write the memory-mapped store at ``out`` (see :func:`write_store`)."""
    report = read_annotations(dataset, root, split_file)
    if report.unnamed and not skip_bad_images:
        more = len(report.unnamed) - 3
        shown = "; ".join(report.unnamed[:3]) + (f" and {more} more" if more > 0 else "")
        raise BadImagesError(f"{report.source} lists {len(report.unnamed)} image(s) without a file name ({shown}); "
                             f"pass --skip-bad-images to leave them out.")
    info = {"source": report.source, "root": str(root), "notes": report.notes, "unnamed_rows": report.unnamed,
            "published": report.dataset.published, "mismatches": report.mismatches()}
    parts = [StorePart(s, 0, report.ids[s], report.paths[s], report.labels[s]) for s in SPLITS]
    result = write_store(out, parts, report.attribute_names, builder=dataset, builder_version=BUILDER_VERSION,
                         size=tuple(size), info=info, skip_bad_images=skip_bad_images, force=force,
                         chunk_rows=chunk_rows, progress=progress)
    report.bad_images = result.bad
    report.store_note = result.note(out)
    return report


# ----------------------------------------------------------------------------- the benchmarks


@dataclass(frozen=True)
class PedestrianOptions:
    """Options of ``pa100k`` / ``rap_zs`` / ``peta_zs``.

    Attributes:
        root: the store written by ``python -m cml_bench data prepare <name> --root DIR --out STORE``.
        train_split: ``trainval`` (train + val, as Jia et al.) or ``train`` (val held out).
        test_split: ``test`` (reported numbers) or ``val`` (model selection).
    """

    root: str | None = None
    train_split: str = "trainval"
    test_split: str = "test"


def _build(name: str, options: PedestrianOptions):
    hint = prepare_hint(name)
    if options.train_split not in ("trainval", "train") or options.test_split not in ("test", "val"):
        raise ValueError(f"benchmark.options: train_split must be trainval or train and test_split test or val, "
                         f"got {options.train_split!r} and {options.test_split!r}.")
    if options.train_split == "trainval" and options.test_split == "val":
        raise ValueError("benchmark.options: test_split=val needs train_split=train (val is inside trainval).")
    return single_task.build(options.root, name=name, builder_version=BUILDER_VERSION, prepare_hint=hint,
                             kind="attribute", test_split=options.test_split,
                             train_splits=("train", "val") if options.train_split == "trainval" else ("train",))


# DLFL section 4.2.3: ResNet-50 (ImageNet weights), 256 x 192 input, SGD lr 0.01, weight decay 1e-4,
# batch 64, 30 epochs, S = 3 SSCA modules (PROTOCOL.md). Not reproduced here: the plateau learning-rate
# schedule and the augmentations (flip, pad + crop, erasing, blur). pretrained=True needs the weights:
# without network, set model.weights_path (or model.pretrained=false).
PAPER_DEFAULTS = {
    "model": {"backbone": "resnet50", "pretrained": True, "feature_level": -1, "stem_pool": True, "ssca_modules": 3},
    "train": {"optimizer": "sgd", "lr": 0.01, "weight_decay": 1e-4, "momentum": 0.9, "batch_size": 64,
              "epochs": 30, "grad_clip_value": None, "scheduler": "plateau", "plateau_factor": 0.1,
              "plateau_patience": 4, "augment": "pedestrian"},
}

SPLIT_FILE = SourceOption("--split-file", "the zero-shot split pickle (default: ROOT/dataset_zs_run0.pkl)",
                          metavar="FILE", required=False)


def data_commands(spec: AttributeDataset) -> DataCommands:
    """``data prepare|inspect <name>``: ``--root`` (and ``--split-file`` for the zero-shot splits)."""
    zero_shot = spec.name in ZS_SOURCE
    source = (SourceOption("--root", spec.root_help),) + ((SPLIT_FILE,) if zero_shot else ())
    line = (f"{spec.title}{' (zero-shot split)' if zero_shot else ''}, one task, {spec.num_attributes} pedestrian "
            f"attributes")
    return DataCommands(line, partial(inspect, spec.name), partial(prepare, spec.name), source, size=IMAGE_SIZE)


for _name, _spec in DATASETS.items():
    register_benchmark(
        _name, options=PedestrianOptions, defaults=PAPER_DEFAULTS,
        description=f"{_spec.title}: {_spec.num_attributes} pedestrian attributes, one task, from a store made "
                    f"by `data prepare {_name}`",
        data=data_commands(_spec),
    )(lambda options, _n=_name: _build(_n, options))
