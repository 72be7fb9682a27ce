"""Multi-label streams as Avalanche benchmarks, and the benchmark plugin API.

Every benchmark is an Avalanche ``CLScenario`` whose train/test experiences are the tasks. An item is
``(uint8 image [3, H, W], multi-hot float target [M], task label)``. The multi-hot targets live in an
attribute named ``multi_hot`` -- never ``targets``: Avalanche's class timeline, class-balanced buffers
and accuracy metrics read ``targets`` as integer labels and silently go wrong on multi-hot rows.
Images stay uint8 until the model normalises them, so memory, buffers and stores stay compact.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cml_bench.registry import BENCHMARKS, decorator

if TYPE_CHECKING:
    from cml_bench.store import Store


def _avalanche():
    # Avalanche warns at import about optional QP solvers it uses only for GEM; keep output clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from avalanche.benchmarks.scenarios import benchmark_from_datasets
        from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute
        from avalanche.benchmarks.utils.flat_data import ConstantSequence
    return benchmark_from_datasets, AvalancheDataset, DataAttribute, ConstantSequence


@dataclass(frozen=True)
class BenchmarkMeta:
    """What strategies, the evaluator and the writer need to know about a stream.

    Attributes:
        name: registry name of the benchmark.
        class_names: the M class names, in target-column order.
        task_classes: per task (in stream order), the class columns it introduces.
        groups: named class groups (``majority`` / ``moderate`` / ``minority``), column indices.
        task_ids: the original task id of each stream position (COCOseq's order is 0, 3, 1, 2).
        train_class_counts: training images carrying each class over the whole stream.
        default_buffer_size: replay memory size of the benchmark's protocol.
        memory_rho: exponent rho of a replay memory's target class shares n_c^rho in the
            benchmark's protocol: PRS's power of allocation, OCDM's target.
        joint_epochs: passes of the joint (multitask) reference over the union of all tasks in the
            benchmark's protocol; None = ``train.epochs``.
        kind: ``continual`` | ``generic`` | ``attribute`` | ``mlcil`` (which metric family applies).
    """

    name: str
    class_names: tuple[str, ...]
    task_classes: tuple[tuple[int, ...], ...]
    groups: Mapping[str, tuple[int, ...]]
    task_ids: tuple[int, ...]
    train_class_counts: tuple[int, ...]
    default_buffer_size: int = 2000
    memory_rho: float = -0.03
    kind: str = "continual"
    joint_epochs: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_tasks(self) -> int:
        return len(self.task_classes)


class MultiLabelTensorDataset(Dataset):
    """uint8 images ``[N, 3, H, W]`` (array or memory map) with multi-hot ``multi_hot`` ``[N, M]``."""

    def __init__(self, images: np.ndarray | torch.Tensor, multi_hot: np.ndarray | torch.Tensor):
        if len(images) != len(multi_hot):
            raise ValueError(f"Expected as many images as targets, got {len(images)} and {len(multi_hot)}.")
        self.images = images
        self.multi_hot = torch.as_tensor(np.asarray(multi_hot), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.multi_hot)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(np.asarray(self.images[index])), self.multi_hot[index]


@dataclass
class MultiLabelBenchmark:
    """An Avalanche scenario plus its metadata, and what some streams tell the runner and evaluator.

    Attributes:
        scenario: the Avalanche scenario (experience k of each stream is task k).
        meta: what strategies, the evaluator and the writer know about the stream.
        store: the prepared store (:class:`cml_bench.store.Store`) the images are read from; the run's
            manifest records which one and the images it left out. None: data made in memory.
        eval_ignore: per test experience, a bool ``[N, M]`` mask (or None) of the (image, class) pairs
            left out of every metric (VOC's difficult labels). None: every pair counts.
        seen_rows: per test experience, the row indices that join the evaluator's 'seen' union, for
            streams whose test experiences share images (MLCIL), so each image counts once there.
            None: every row joins.
        joint_train: the training set of the joint (multitask) reference, for streams where the union
            of the tasks is not it (MLCIL: sessions repeat images with partial labels). None: the union.
    """

    scenario: Any
    meta: BenchmarkMeta
    store: Store | None = None
    eval_ignore: Sequence[np.ndarray | None] | None = None
    seen_rows: Sequence[np.ndarray] | None = None
    joint_train: Dataset | None = None

    @property
    def train_stream(self):
        return self.scenario.train_stream

    @property
    def test_stream(self):
        return self.scenario.test_stream


def as_avalanche_dataset(dataset: Dataset, task_label: int):
    """Wrap a dataset returning ``(x, multi_hot)`` so items gain the task label, Avalanche-style."""
    _, AvalancheDataset, DataAttribute, ConstantSequence = _avalanche()
    labels = ConstantSequence(int(task_label), len(dataset))
    return AvalancheDataset(
        [dataset], data_attributes=[DataAttribute(labels, "targets_task_labels", use_in_getitem=True)]
    )


def make_benchmark(
    train: Sequence[Dataset], test: Sequence[Dataset], meta: BenchmarkMeta, **fields: Any
) -> MultiLabelBenchmark:
    """Build the Avalanche scenario: experience k of each stream is task k (in stream order).

    ``fields`` are :class:`MultiLabelBenchmark`'s optional ones (``store``, ``eval_ignore``, ...).
    """
    if not (len(train) == len(test) == meta.num_tasks):
        raise ValueError(
            f"Expected {meta.num_tasks} train and test tasks, got {len(train)} and {len(test)}."
        )
    benchmark_from_datasets, *_ = _avalanche()
    scenario = benchmark_from_datasets(
        train=[as_avalanche_dataset(d, k) for k, d in enumerate(train)],
        test=[as_avalanche_dataset(d, k) for k, d in enumerate(test)],
    )
    return MultiLabelBenchmark(scenario, meta, **fields)


def joint_experience(benchmark: MultiLabelBenchmark):
    """One experience holding the union of every training task (the multitask upper bound).

    A benchmark whose tasks share images under partial labels (``mlcil``) gives the union with full
    labels itself, as ``joint_train``.
    """
    benchmark_from_datasets, *_ = _avalanche()
    if benchmark.joint_train is not None:
        return benchmark_from_datasets(train=[as_avalanche_dataset(benchmark.joint_train, 0)]).train_stream[0]
    datasets = [exp.dataset for exp in benchmark.train_stream]
    union = datasets[0].concat(datasets[1]) if len(datasets) > 1 else datasets[0]
    for extra in datasets[2:]:
        union = union.concat(extra)
    return benchmark_from_datasets(train=[union]).train_stream[0]


@dataclass(frozen=True)
class SourceOption:
    """An option of ``data prepare|inspect NAME`` naming the dataset's own files (``--coco-root DIR``).

    Its value reaches the data commands as the keyword its flag spells (``coco_root``).
    """

    flag: str
    help: str
    metavar: str = "DIR"
    required: bool = True

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class DataCommands:
    """``python -m cml_bench data prepare|inspect NAME`` of a benchmark read from a prepared store.

    Attributes:
        line: what the dataset is, one line for ``--help`` (``"MS-COCO 2014, one task, 80 classes"``).
        inspect: ``inspect(**source)``: counts and checks from the annotations alone (no image read).
        prepare: ``prepare(**source, out=, size=, skip_bad_images=, force=, progress=)``: the same
            checks, then the store written at ``out`` (resumable; :mod:`cml_bench.store`).
        source: the options naming the dataset's files; ``**source`` above is their values by ``dest``.
        size: default stored image size: a side in pixels, or ``(height, width)``.

    Both return a report whose ``text()`` is printed. They run only when the command does: what
    they import stays out of every other command's start-up.
    """

    line: str
    inspect: Callable[..., Any]
    prepare: Callable[..., Any]
    source: tuple[SourceOption, ...]
    size: int | tuple[int, int]


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered benchmark family member.

    Attributes:
        name: registry name (``synth-cocoseq``, ``cocoseq``, ...).
        build: ``build(options) -> MultiLabelBenchmark`` (``options``: an instance of ``options``).
        options: dataclass of the benchmark's own options (validated from ``benchmark.options``).
        description: one line for ``list``.
        defaults: config layer applied below the user's YAML (e.g. the model that suits it).
        identity: ``identity(options) -> str`` naming what the data is beyond its options (a
            generator's version); None: a prepared store's identity when ``options.root`` names one.
            A finished run counts as done only on data of the same identity.
        data: the ``data prepare|inspect <name>`` commands that build its store; None: none.
    """

    name: str
    build: Callable[[Any], MultiLabelBenchmark]
    options: type
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    identity: Callable[[Any], str | None] | None = None
    data: DataCommands | None = None


register_benchmark = decorator(BENCHMARKS, BenchmarkSpec)
"""``@register_benchmark("name", options=Opts, description=..., defaults={...}, data=DataCommands(...))``
on ``build(options)``."""
