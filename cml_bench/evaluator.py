"""Evaluation during a continual run: after every task, every seen task's test set.

After training through task i the evaluator scores each seen task j <= i on its own test set with
its own classes (``eval_on = "task<j>"``; these fill the task x task matrix used for forgetting),
and the union of the seen test sets on all seen classes (``eval_on = "seen"``; after the last task
this is PRS's 'tally' evaluation on every test set). Each is reported for all classes and for each
class group (majority / moderate / minority) restricted to the classes evaluated.

Which metrics are computed depends on ``BenchmarkMeta.kind`` (``metrics.FAMILY_METRICS``):
``continual`` streams get mAP, CP/CR/CF1 and OP/OR/OF1; ``generic`` single-task streams add the
top-3 variants (CP@3 ... OF1@3); ``attribute`` streams (pedestrian attributes) get mA, Accu, Prec,
Recall and F1. A single-task stream is one experience: its ``task0`` and ``seen`` rows coincide
and it has no forgetting rows. A benchmark may give an evaluation ignore mask per test experience,
``benchmark.eval_ignore`` (bool ``[N, M]`` or None; VOC's difficult pairs): those (image, class)
pairs are left out of every metric (``metrics.multilabel_metrics(..., ignore=)``), in the task rows
and in the 'seen' union. A benchmark whose test experiences share images (``mlcil``: an image is in
every session whose classes it shows) says which rows of each join the 'seen' union,
``benchmark.seen_rows`` (one index array per test experience), so each image counts once there;
``mlcil`` runs also get ``avg_mAP``, the 'seen' mAP averaged over the sessions (``cml_bench.mlcil``).

Conventions as PRS evaluates (``cml_bench.metrics``' docstring cites its code): a label is predicted
iff its score is > ``eval.threshold`` (strictly), and a class with no positive in the evaluated test
set is dropped from every metric of that row; each (eval_on, group) of the continual and generic
families gets a ``classes_dropped`` row with how many (a count, never a score: no forgetting row).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cml_bench import metrics, mlcil
from cml_bench import scores as test_scores
from cml_bench.augment import resize_batch
from cml_bench.config import EvalConfig
from cml_bench.stream import MultiLabelBenchmark
from cml_bench.training import autocast, model_input

@torch.inference_mode()
def predict(model: torch.nn.Module, dataset, batch_size: int, device: torch.device | str,
            desc: str = "eval", image_size: tuple[int, int] | None = None, precision: str = "fp32",
            channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores ``[N, M]`` and 0/1 targets ``[N, M]`` of a dataset of ``(x, y, ...)`` items.

    ``image_size``: resize each batch to ``(H, W)`` on the device before the model (None = as stored).
    ``precision`` / ``channels_last``: as in training (``train.precision``, ``train.channels_last``).
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=getattr(dataset, "collate_fn", None))
    scores, targets = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None):
        x = model_input(resize_batch(batch[0].to(device), image_size), channels_last)
        with autocast(device, precision):
            logits = model(x)
        scores.append(torch.sigmoid(logits.float()).cpu())  # fp32 sigmoid: no bf16 ties in the ranking
        targets.append(batch[1])
    model.train(was_training)
    return torch.cat(scores).numpy(), (torch.cat(targets) > 0.5).numpy().astype(np.uint8)


@dataclass
class Evaluator:
    """Collects long-format metric rows over a run; see the module docstring for what is evaluated.

    ``run_columns``: the columns that say which run a row belongs to (benchmark, strategy, seed),
    put in front of every row.
    ``image_size``: the test input size (``eval.image_size``, else ``model.image_size``; None = as stored).
    ``precision`` / ``channels_last``: the training run's (``train.precision``, ``train.channels_last``).
    """

    benchmark: MultiLabelBenchmark
    cfg: EvalConfig
    device: torch.device | str
    run_columns: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    matrix: dict[str, np.ndarray] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    precision: str = "fp32"
    channels_last: bool = False
    final_scores: test_scores.TestScores | None = None  # the last task's 'seen' scores (scores.npz)

    def _add(self, trained_through: int, eval_on: str, group: str, values: dict[str, float]) -> None:
        for metric, value in values.items():
            self.rows.append({**self.run_columns, "trained_through_task": trained_through,
                              "eval_on": eval_on, "group": group, "metric": metric,
                              "value": float(value)})

    def __post_init__(self) -> None:
        if self.benchmark.meta.kind not in metrics.FAMILY_METRICS:
            raise ValueError(f"Benchmark '{self.benchmark.meta.name}' has kind "
                             f"'{self.benchmark.meta.kind}'; expected one of {', '.join(metrics.FAMILY_METRICS)}.")

    @property
    def headline(self) -> str:
        """The metric a progress line shows (mAP, or mA for attribute streams)."""
        return metrics.HEADLINE_METRIC[self.benchmark.meta.kind]

    def _score(self, scores: np.ndarray, targets: np.ndarray, classes: Iterable[int],
               ignore: np.ndarray | None = None) -> dict[str, dict]:
        """Each class group's metrics on the evaluated ``classes`` (``metrics.family_metrics``)."""
        meta = self.benchmark.meta
        return metrics.family_metrics(meta.kind, scores, targets, meta.groups, self.cfg.threshold,
                                      classes=sorted(set(classes)), ignore=ignore, benchmark=meta.name)

    def _ignore(self, task: int) -> np.ndarray | None:
        """Test task ``task``'s evaluation ignore mask (bool ``[N, M]``, VOC's difficult pairs), or None."""
        masks = self.benchmark.eval_ignore
        return None if masks is None or masks[task] is None else np.asarray(masks[task], dtype=bool)

    def after_task(self, model: torch.nn.Module, trained_through: int) -> dict[str, dict[str, float]]:
        """Evaluate after training through task ``trained_through``; returns the 'seen' results."""
        meta = self.benchmark.meta
        seen_scores, seen_targets, seen_ignore, seen_classes = [], [], [], []
        seen_rows = self.benchmark.seen_rows  # None: every row joins the union
        for j in range(trained_through + 1):
            exp = self.benchmark.test_stream[j]
            scores, targets = predict(model, exp.dataset, self.cfg.batch_size, self.device,
                                      desc=f"eval task {j}", image_size=self.image_size,
                                      precision=self.precision, channels_last=self.channels_last)
            ignore = self._ignore(j)
            for group, values in self._score(scores, targets, meta.task_classes[j], ignore).items():
                self._add(trained_through, f"task{j}", group, values)
                if group == "all":
                    for metric, value in values.items():
                        if metric != metrics.CLASSES_DROPPED:  # a count, not a score: no forgetting
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
        if trained_through == meta.num_tasks - 1:  # kept for the leaderboard's bootstrap
            groups = metrics.group_columns(meta.groups, meta.num_classes, sorted(set(seen_classes)))
            self.final_scores = test_scores.from_evaluation(
                seen_scores, seen_targets, seen_ignore, range(trained_through + 1), groups,
                self.cfg.threshold, meta.kind)
        return seen

    def anytime(self, model: torch.nn.Module, tasks: Iterable[int],
                subsets: dict[int, np.ndarray | None]) -> dict[str, dict[str, float]]:
        """The 'seen' metrics on the union of ``tasks``' test sets, each cut to its ``subsets`` rows
        (None = all), on their classes: an anytime point (``cml_bench/recording.py``); records nothing."""
        parts = []
        for j in tasks:
            dataset, rows, ignore = self.benchmark.test_stream[j].dataset, subsets.get(j), self._ignore(j)
            if rows is not None:
                dataset, ignore = dataset.subset(rows), None if ignore is None else ignore[rows]
            scores, targets = predict(model, dataset, self.cfg.batch_size, self.device, desc=f"anytime task {j}",
                                      image_size=self.image_size, precision=self.precision,
                                      channels_last=self.channels_last)
            parts.append((scores, targets, np.zeros(targets.shape, dtype=bool) if ignore is None else ignore))
        classes = [c for j in tasks for c in self.benchmark.meta.task_classes[j]]
        ignore = np.concatenate([m for _, _, m in parts])
        return self._score(np.concatenate([s for s, _, _ in parts]), np.concatenate([t for _, t, _ in parts]),
                           classes, ignore if ignore.any() else None)

    def _matrix(self, metric: str) -> np.ndarray:
        t = self.benchmark.meta.num_tasks
        return self.matrix.setdefault(metric, np.full((t, t), np.nan))

    def finish(self) -> None:
        """Add forgetting rows (per task and mean) for every metric, from the task x task matrix."""
        last = self.benchmark.meta.num_tasks - 1
        if self.benchmark.meta.kind == mlcil.KIND:  # NaN for a joint run: it has one evaluation point
            self.rows.append({**self.run_columns, "trained_through_task": last, "eval_on": "seen", "group": "all",
                              "metric": mlcil.AVERAGE_METRIC,
                              "value": mlcil.session_average(self.rows, last + 1)})
        for metric, matrix in self.matrix.items():
            if np.isnan(matrix[:-1]).all():  # joint training has a single evaluation point
                continue
            forgetting = metrics.forgetting(matrix)
            for j, value in enumerate(forgetting[:-1]):
                self.rows.append({**self.run_columns, "trained_through_task": last, "eval_on": f"task{j}",
                                  "group": "all", "metric": f"forgetting_{metric}", "value": float(value)})
            self.rows.append({**self.run_columns, "trained_through_task": last, "eval_on": "seen",
                              "group": "all", "metric": f"forgetting_{metric}",
                              "value": float(np.nanmean(forgetting[:-1]))})
