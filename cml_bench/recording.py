"""What a run records besides its end-of-task metrics: anytime evaluation, what the replay memory
held, the final per-image scores, and the feed of Avalanche's standard loggers.

:class:`RunRecorder` is an Avalanche plugin placed after the strategy's own plugins (so the replay
memory has taken the step's samples when it looks). It counts training iterations and stream
samples over the whole run and:

- **anytime evaluation** (``eval.every: N``): every N iterations, and once more at the end of the
  stream, scores the model on the union of the seen tasks' test sets (the task being trained
  included; a joint run sees every task), each cut to ``eval.anytime_subset`` images drawn once per
  task from the run seed's own generator. The evaluation runs in eval mode under ``no_grad`` (no
  batch-norm statistics move), restores train mode, and saves and restores every global random
  state (Python, NumPy, torch, CUDA), so the training trajectory is the same with it or without
  it. Rows go to ``anytime.csv``; A_auc (:func:`cml_bench.metrics.area_under_curve` of each group's
  mAP over samples) is added to the run's metrics as ``A_auc_mAP`` rows;
- **memory composition**: for every replay plugin, the memory's per-class counts (stored samples
  carrying the class), the stream's own counts so far and PRS's target share n_c^rho / sum n_k^rho,
  after every task and at every anytime point, into ``memory.csv``;
- **loggers** (``--logger tensorboard`` / ``wandb``): Avalanche's ``TensorboardLogger`` and
  ``WandBLogger``, fed explicitly (our evaluator is not Avalanche's): the training loss every
  iteration, every evaluator row after its task, every anytime point; x = the iteration.
"""
from __future__ import annotations

import math
import os
import random
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from cml_bench.buffers.ocdm import target_distribution
from cml_bench.config import ConfigError, EvalConfig
from cml_bench.metrics import area_under_curve
from cml_bench.scores import SCORES_FILE, save_scores

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import SupervisedPlugin

ANYTIME_FILE, MEMORY_FILE = "anytime.csv", "memory.csv"
ANYTIME_COLUMNS = ["benchmark", "strategy", "seed", "trained_through_task", "iteration", "samples",
                   "task_end_samples", "eval_on", "group", "metric", "value"]
MEMORY_COLUMNS = ["benchmark", "strategy", "seed", "task", "iteration", "samples", "point", "class", "name",
                  "group", "count", "seen", "target", "fill", "capacity"]
LOGGERS = ("tensorboard", "wandb")
AUC_METRIC = "A_auc_mAP"


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without moving any global random generator (Python, NumPy, torch, CUDA)."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def check_loggers(names: Sequence[str]) -> None:
    """ConfigError for a logger name other than those of :data:`LOGGERS`."""
    unknown = sorted(set(names) - set(LOGGERS))
    if unknown:
        raise ConfigError(f"Unknown logger '{unknown[0]}'. Available: {', '.join(LOGGERS)}.")


def make_loggers(names: Sequence[str], folder: Path, run_name: str, config: dict[str, Any]) -> list:
    """Avalanche loggers writing into the run folder: ``tensorboard/`` (event files) and ``wandb/``
    (offline unless ``WANDB_MODE`` says otherwise: no network needed)."""
    check_loggers(names)
    if not names:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from avalanche.logging import TensorboardLogger
    _WandB = _wandb_logger_class()
    loggers = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            loggers.append(TensorboardLogger(tb_log_dir=folder / "tensorboard"))
        else:
            (folder / "wandb").mkdir(exist_ok=True)
            import wandb

            # our own run id: Avalanche 0.6 would call wandb.util.generate_id, which wandb 0.31 no longer has;
            # silent: wandb's banner would name the hidden staging folder, renamed when the run finishes
            params = {"mode": os.environ.get("WANDB_MODE", "offline"), "id": uuid.uuid4().hex[:12],
                      "settings": wandb.Settings(silent=True, console="off")}
            loggers.append(_WandB(project_name="cml_bench", run_name=run_name, dir=str(folder), save_code=False,
                                  config=config, params=params))
    return loggers


def _wandb_logger_class():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from avalanche.logging import WandBLogger

    class WandBScalars(WandBLogger):
        """Avalanche's WandBLogger; numbers go straight to ``wandb.log`` (its own dispatch reads
        ``wandb.viz``, which wandb 0.31 removed)."""

        def log_single_metric(self, name, value, x_plot):
            if isinstance(value, (int, float)):
                self.step = x_plot
                self.wandb.log({name: value}, step=x_plot)
            else:
                super().log_single_metric(name, value, x_plot)

    return WandBScalars


def close_loggers(loggers: Sequence[Any]) -> None:
    for logger in loggers:
        if hasattr(logger, "writer"):
            logger.writer.close()
        if getattr(logger, "wandb", None) is not None:
            logger.wandb.finish()


class RunRecorder(SupervisedPlugin):
    """Anytime evaluation, memory composition and the logger feed of one run (module docstring).

    Args:
        evaluator: the run's :class:`cml_bench.evaluator.Evaluator` (its labels, test sets, rows).
        cfg: ``eval`` settings (``every``, ``anytime_subset``).
        replay: the strategy's replay plugins (objects with a ``buffer``); empty for none.
        loggers: Avalanche loggers from :func:`make_loggers`.
        seed: the run seed (draws the anytime subsets).
        batch_size: incoming samples per step (``train.batch_size``).
        joint: a joint (multitask) run, which trains on every task at once.
        epochs: passes over each task (``train.epochs``).
    """

    def __init__(self, evaluator, cfg: EvalConfig, replay: Sequence[Any] = (), loggers: Sequence[Any] = (),
                 seed: int = 0, batch_size: int = 10, joint: bool = False, epochs: int = 1):
        super().__init__()
        for key in ("every", "anytime_subset"):
            value = getattr(cfg, key)
            if value is not None and value < 1:
                raise ConfigError(f"eval.{key} must be a positive integer or null (off), got {value}.")
        self.evaluator, self.cfg, self.replay, self.loggers = evaluator, cfg, list(replay), list(loggers)
        self.meta = evaluator.benchmark.meta
        self.seed, self.batch_size, self.joint, self.epochs = seed, batch_size, joint, epochs
        self.group_of = {c: g for g, cols in self.meta.groups.items() for c in cols}
        self.iteration = self.samples = self._left = 0
        self.task = 0
        self.anytime_rows: list[dict[str, Any]] = []
        self.memory_rows: list[dict[str, Any]] = []
        self._logged = 0  # evaluator rows already sent to the loggers
        self._last_point = -1  # iteration of the last anytime point
        self.cost = {"anytime_cpu_s": 0.0, "anytime_points": 0, "loggers_cpu_s": 0.0, "memory_cpu_s": 0.0}

    @contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        """Add the block's process CPU time (all threads) to ``self.cost[key]``: the manifest's
        ``recording`` entry, what each feature cost this run."""
        start = time.process_time()
        try:
            yield
        finally:
            self.cost[key] += time.process_time() - start

    # ------------------------------------------------------------------ Avalanche hooks
    def before_training_exp(self, strategy, **kwargs):
        self.task = strategy.experience.current_experience

    def before_training_epoch(self, strategy, **kwargs):
        self._left = len(strategy.adapted_dataset)

    def after_training_iteration(self, strategy, **kwargs):
        n = min(self.batch_size, self._left)  # the last batch of an epoch may be short
        self._left -= n
        self.iteration += 1
        self.samples += n
        if self.loggers:
            with self._timed("loggers_cpu_s"):
                for logger in self.loggers:
                    logger.log_single_metric("train/loss", strategy.loss.item(), self.iteration)
        if self.cfg.every and self.iteration % self.cfg.every == 0:
            self._anytime_point(strategy.model)

    # ------------------------------------------------------------------ called by the runner
    def open_loggers(self, names: Sequence[str], folder: Path, run_name: str, config: dict[str, Any]) -> None:
        """Start the loggers named (:func:`make_loggers`) in the run folder ``folder``."""
        with self._timed("loggers_cpu_s"):
            self.loggers = make_loggers(names, folder, run_name, config)

    def end_of_task(self, model: torch.nn.Module, task: int) -> None:
        """After the evaluator's end-of-task evaluation: the memory's composition, the logger feed,
        and at the end of the stream a last anytime point."""
        self._memory("task", task)
        if self.cfg.every and task == self.meta.num_tasks - 1 and self._last_point != self.iteration:
            self._anytime_point(model)
        self._log_rows()

    def finish(self, folder: Path) -> None:
        """Add the A_auc rows to the evaluator's (call after ``evaluator.finish()``), write
        ``anytime.csv``, ``memory.csv`` and ``scores.npz`` into ``folder``, and close the loggers."""
        if self.anytime_rows:
            points = pd.DataFrame(self.anytime_rows)
            points = points[(points["eval_on"] == "seen") & (points["metric"] == "mAP")]
            for group, rows in points.groupby("group", sort=False):
                rows = rows.dropna(subset=["value"])
                if len(rows):
                    value = area_under_curve(rows["samples"], rows["value"])
                    self.evaluator.rows.append({**self.evaluator.run_columns,
                                                "trained_through_task": self.meta.num_tasks - 1, "eval_on": "seen",
                                                "group": group, "metric": AUC_METRIC, "value": value})
            # where each task ends, in stream samples (the plots' task lines); a joint run is one task
            sizes = [len(e.dataset) * self.epochs for e in self.evaluator.benchmark.train_stream]
            ends = [sum(sizes)] * len(sizes) if self.joint else np.cumsum(sizes).tolist()
            frame = pd.DataFrame(self.anytime_rows).assign(task_end_samples=lambda d: [
                ends[t] for t in d["trained_through_task"]])
            frame[ANYTIME_COLUMNS].to_csv(folder / ANYTIME_FILE, index=False)
        if self.memory_rows:
            pd.DataFrame(self.memory_rows, columns=MEMORY_COLUMNS).to_csv(folder / MEMORY_FILE, index=False)
        if self.evaluator.final_scores is not None:
            start = time.process_time()
            save_scores(folder / SCORES_FILE, self.evaluator.final_scores)
            self.cost["scores_cpu_s"] = time.process_time() - start
        self._log_rows()
        with self._timed("loggers_cpu_s"):
            close_loggers(self.loggers)

    # ------------------------------------------------------------------ internals
    def _subset(self, task: int) -> np.ndarray | None:
        size = len(self.evaluator.benchmark.test_stream[task].dataset)
        k = self.cfg.anytime_subset
        if k is None or k >= size:
            return None
        rng = np.random.default_rng([self.seed, task])  # its own generator: no global state moves
        return np.sort(rng.choice(size, size=k, replace=False))

    def _anytime_point(self, model: torch.nn.Module) -> None:
        tasks = range(self.meta.num_tasks) if self.joint else range(self.task + 1)
        with self._timed("anytime_cpu_s"), preserved_rng():
            seen = self.evaluator.anytime(model, tasks, {j: self._subset(j) for j in tasks})
        self._last_point = self.iteration
        self.cost["anytime_points"] += 1
        at = {**self.evaluator.run_columns, "trained_through_task": self.task, "iteration": self.iteration,
              "samples": self.samples, "eval_on": "seen"}
        for group, values in seen.items():
            for metric, value in values.items():
                self.anytime_rows.append({**at, "group": group, "metric": metric, "value": float(value)})
                for logger in self.loggers:
                    logger.log_single_metric(f"anytime/{group}/{metric}", float(value), self.iteration)
        for logger in self.loggers:
            logger.log_single_metric("anytime/samples", self.samples, self.iteration)
        self._memory("anytime", self.task)

    def _memory(self, point: str, task: int) -> None:
        with self._timed("memory_cpu_s"):
            self._memory_rows(point, task)

    def _memory_rows(self, point: str, task: int) -> None:
        for plugin in self.replay:
            buffer = plugin.buffer
            counts, seen = buffer.class_counts, buffer.n_c
            target = target_distribution(seen, self.meta.memory_rho)
            names = self.meta.class_names
            at = {**self.evaluator.run_columns, "task": task, "iteration": self.iteration, "samples": self.samples,
                  "point": point, "fill": len(buffer), "capacity": buffer.capacity}
            self.memory_rows += [{**at, "class": c, "name": names[c] if c < len(names) else str(c),
                                  "group": self.group_of.get(c, ""), "count": int(counts[c]), "seen": int(seen[c]),
                                  "target": float(target[c])} for c in range(len(counts))]

    def _log_rows(self) -> None:
        rows = self.evaluator.rows[self._logged:]
        self._logged = len(self.evaluator.rows)
        with self._timed("loggers_cpu_s"):
            for logger in self.loggers:
                for r in rows:
                    if not (isinstance(r["value"], float) and math.isnan(r["value"])):
                        logger.log_single_metric(f"{r['eval_on']}/{r['group']}/{r['metric']}", r["value"],
                                                 self.iteration)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "samples": self.samples, "anytime_rows": self.anytime_rows,
                "memory_rows": self.memory_rows, "logged": self._logged, "last_point": self._last_point,
                "cost": dict(self.cost)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.samples = state["iteration"], state["samples"]
        self.anytime_rows, self.memory_rows = list(state["anytime_rows"]), list(state["memory_rows"])
        self._logged, self._last_point = state["logged"], state["last_point"]
        self.cost.update(state["cost"])


def memory_shares(memory: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, strategy, seed, point, task, iteration, samples) and class group: the share of
    the memory's label occurrences (``memory``), of the stream's so far (``stream``) and PRS's
    target share (``target``, the sum of n_c^rho / sum n_k^rho over the group), each in percent."""
    keys = ["benchmark", "strategy", "seed", "point", "task", "iteration", "samples"]
    d = memory[memory["group"].notna() & (memory["group"] != "")]
    sums = d.groupby(keys + ["group"])[["count", "seen", "target"]].sum()
    totals = memory.groupby(keys)[["count", "seen"]].sum()
    shares = pd.DataFrame({"memory": sums["count"] / totals["count"].reindex(sums.index.droplevel("group")).to_numpy(),
                           "stream": sums["seen"] / totals["seen"].reindex(sums.index.droplevel("group")).to_numpy(),
                           "target": sums["target"]}, index=sums.index) * 100
    return shares.reset_index()
