"""Evaluation during a continual run: after every task, every seen task's test set.

After training through task i the evaluator scores each seen task j <= i on its own test set with
its own classes (``eval_on = "task<j>"``; these fill the task x task matrix used for forgetting),
and the union of the seen test sets on all seen classes (``eval_on = "seen"``; after the last task
this is PRS's 'tally' evaluation on every test set). Each is reported for all classes and for each
class group (majority / moderate / minority) restricted to the classes evaluated.

Which metrics are computed depends on ``BenchmarkMeta.kind`` (:data:`FAMILY_METRICS`):
``continual`` streams get mAP, CP/CR/CF1 and OP/OR/OF1; ``generic`` single-task streams add the
top-3 variants (CP@3 ... OF1@3); ``attribute`` streams (pedestrian attributes) get mA, Accu, Prec,
Recall and F1. A single-task stream is one experience: its ``task0`` and ``seen`` rows coincide
and it has no forgetting rows. A benchmark may give an evaluation ignore mask per test experience,
``extra["eval_ignore"]`` (bool ``[N, M]`` or None; VOC's difficult pairs): those (image, class)
pairs are left out of every metric (``metrics.multilabel_metrics(..., ignore=)``), in the task rows
and in the 'seen' union. A benchmark whose test experiences share images (``mlcil``: an image is in
every session whose classes it shows) says which rows of each join the 'seen' union,
``extra["seen_rows"]`` (one index array per test experience), so each image counts once there;
``mlcil`` runs also get ``avg_mAP``, the 'seen' mAP averaged over the sessions (``cml_bench.mlcil``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cml_bench import metrics, mlcil
from cml_bench.augment import resize_batch
from cml_bench.config import EvalConfig
from cml_bench.stream import MultiLabelBenchmark

MAIN_METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
TOP_K = 3  # the generic protocol's top-3 predictions per image
ATTRIBUTE_METRICS = ("mA", "Accu", "Prec", "Recall", "F1")
FAMILY_METRICS = {
    "continual": MAIN_METRICS,
    "generic": MAIN_METRICS + tuple(f"{m}@{TOP_K}" for m in ("CP", "CR", "CF1", "OP", "OR", "OF1")),
    "attribute": ATTRIBUTE_METRICS,
    mlcil.KIND: MAIN_METRICS,
}
HEADLINE_METRIC = {"continual": "mAP", "generic": "mAP", "attribute": "mA", mlcil.KIND: "mAP"}


@torch.no_grad()
def predict(model: torch.nn.Module, dataset, batch_size: int, device: torch.device | str,
            desc: str = "eval", image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores ``[N, M]`` and 0/1 targets ``[N, M]`` of a dataset of ``(x, y, ...)`` items.

    ``image_size``: resize each batch to ``(H, W)`` on the device before the model (None = as stored).
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=getattr(dataset, "collate_fn", None))
    scores, targets = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None):
        x = resize_batch(batch[0].to(device), image_size)
        scores.append(torch.sigmoid(model(x)).float().cpu())
        targets.append(batch[1])
    model.train(was_training)
    return torch.cat(scores).numpy(), (torch.cat(targets) > 0.5).numpy().astype(np.uint8)


@dataclass
class Evaluator:
    """Collects long-format metric rows over a run; see the module docstring for what is evaluated.

    ``image_size``: the test input size (``eval.image_size``, else ``model.image_size``; None = as stored).
    """

    benchmark: MultiLabelBenchmark
    cfg: EvalConfig
    device: torch.device | str
    labels: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    matrix: dict[str, np.ndarray] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None

    def _groups(self, classes: Iterable[int]) -> dict[str, list[int]]:
        wanted = set(classes)
        groups = {"all": sorted(wanted)}
        for name, cols in self.benchmark.meta.groups.items():
            kept = [c for c in cols if c in wanted]
            if kept:
                groups[name] = kept
        return groups

    def _add(self, trained_through: int, eval_on: str, group: str, values: dict[str, float]) -> None:
        for metric, value in values.items():
            self.rows.append({**self.labels, "trained_through_task": trained_through,
                              "eval_on": eval_on, "group": group, "metric": metric,
                              "value": float(value)})

    def __post_init__(self) -> None:
        if self.benchmark.meta.kind not in FAMILY_METRICS:
            raise ValueError(f"Benchmark '{self.benchmark.meta.name}' has kind "
                             f"'{self.benchmark.meta.kind}'; expected one of {', '.join(FAMILY_METRICS)}.")

    @property
    def headline(self) -> str:
        """The metric a progress line shows (mAP, or mA for attribute streams)."""
        return HEADLINE_METRIC[self.benchmark.meta.kind]

    def _family_metrics(self, scores: np.ndarray, targets: np.ndarray, cols: list[int],
                        ignore: np.ndarray | None) -> dict[str, float]:
        kind, threshold = self.benchmark.meta.kind, self.cfg.threshold
        if kind == "attribute":
            if ignore is not None:
                raise ValueError(f"Benchmark '{self.benchmark.meta.name}' gives an evaluation ignore mask, "
                                 f"which the attribute metrics do not take.")
            return metrics.attribute_metrics(scores[:, cols], targets[:, cols], threshold=threshold)
        values = metrics.multilabel_metrics(scores, targets, cols, threshold=threshold, ignore=ignore)
        if kind == "generic" and scores.shape[1] >= TOP_K:
            # an image's top 3 are chosen among all its columns, then scored on the group's columns
            values.update(metrics.topk_metrics(scores, targets, k=TOP_K, classes=cols, ignore=ignore))
        return values

    def _score(self, scores: np.ndarray, targets: np.ndarray, classes: Iterable[int],
               ignore: np.ndarray | None = None) -> dict[str, dict]:
        return {group: self._family_metrics(scores, targets, cols, ignore)
                for group, cols in self._groups(classes).items()}

    def _ignore(self, task: int) -> np.ndarray | None:
        """Test task ``task``'s evaluation ignore mask (bool ``[N, M]``, VOC's difficult pairs), or None."""
        masks = self.benchmark.extra.get("eval_ignore")
        return None if masks is None or masks[task] is None else np.asarray(masks[task], dtype=bool)

    def after_task(self, model: torch.nn.Module, trained_through: int) -> dict[str, dict[str, float]]:
        """Evaluate after training through task ``trained_through``; returns the 'seen' results."""
        meta = self.benchmark.meta
        seen_scores, seen_targets, seen_ignore, seen_classes = [], [], [], []
        seen_rows = self.benchmark.extra.get("seen_rows")  # None: every row joins the union
        for j in range(trained_through + 1):
            exp = self.benchmark.test_stream[j]
            scores, targets = predict(model, exp.dataset, self.cfg.batch_size, self.device,
                                      desc=f"eval task {j}", image_size=self.image_size)
            ignore = self._ignore(j)
            for group, values in self._score(scores, targets, meta.task_classes[j], ignore).items():
                self._add(trained_through, f"task{j}", group, values)
                if group == "all":
                    for metric, value in values.items():
                        self._matrix(metric)[trained_through, j] = value
            keep = slice(None) if seen_rows is None else np.asarray(seen_rows[j], dtype=np.int64)
            seen_scores.append(scores[keep])
            seen_targets.append(targets[keep])
            seen_ignore.append(None if ignore is None else ignore[keep])
            seen_classes.extend(meta.task_classes[j])
        # the union's mask: each task's own, nothing ignored in a task without one
        union_ignore = None if all(m is None for m in seen_ignore) else np.concatenate(
            [np.zeros(t.shape, dtype=bool) if m is None else m for m, t in zip(seen_ignore, seen_targets)])
        seen = self._score(np.concatenate(seen_scores), np.concatenate(seen_targets), seen_classes, union_ignore)
        for group, values in seen.items():
            self._add(trained_through, "seen", group, values)
        return seen

    def _matrix(self, metric: str) -> np.ndarray:
        t = self.benchmark.meta.num_tasks
        return self.matrix.setdefault(metric, np.full((t, t), np.nan))

    def finish(self) -> None:
        """Add forgetting rows (per task and mean) for every metric, from the task x task matrix."""
        last = self.benchmark.meta.num_tasks - 1
        if self.benchmark.meta.kind == mlcil.KIND:  # NaN for a joint run: it has one evaluation point
            self.rows.append({**self.labels, "trained_through_task": last, "eval_on": "seen", "group": "all",
                              "metric": mlcil.AVERAGE_METRIC,
                              "value": mlcil.session_average(self.rows, last + 1)})
        for metric, matrix in self.matrix.items():
            if np.isnan(matrix[:-1]).all():  # joint training has a single evaluation point
                continue
            forgetting = metrics.forgetting(matrix)
            for j, value in enumerate(forgetting[:-1]):
                self.rows.append({**self.labels, "trained_through_task": last, "eval_on": f"task{j}",
                                  "group": "all", "metric": f"forgetting_{metric}", "value": float(value)})
            self.rows.append({**self.labels, "trained_through_task": last, "eval_on": "seen",
                              "group": "all", "metric": f"forgetting_{metric}",
                              "value": float(np.nanmean(forgetting[:-1]))})
