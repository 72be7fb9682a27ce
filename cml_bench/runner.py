"""One run: a strategy (with its head) on a benchmark for one seed, from config to run folder."""
from __future__ import annotations

import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cml_bench.config import ConfigError, RunConfig, image_hw
from cml_bench.evaluator import Evaluator
from cml_bench.models import build_model
from cml_bench.checkpoint import CheckpointError, load_checkpoint, restore_checkpoint, save_checkpoint
from cml_bench.results import (RunLock, cleanup_partials, find_partial, finish_run, manifest, set_aside, start_run,
                               summary_table)
from cml_bench.recording import RunRecorder, check_loggers
from cml_bench.replay import OnlineReplayPlugin
# resolve_config, resolve_run, strategy_label: the Python API resolves and runs from this module
from cml_bench.resolved import ResolvedRun, resolve_config, resolve_run, strategy_label  # noqa: F401
from cml_bench.store import record_store_use
from cml_bench.strategy import StrategyContext
from cml_bench.stream import MultiLabelBenchmark, joint_experience
from cml_bench.training import MultiLabelTemplate

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import SupervisedPlugin


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device '{name}'. Use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device '{name}' requested but no CUDA GPU is available; use --device cpu.")
    return device


class ProgressPlugin(SupervisedPlugin):
    """A tqdm bar per training task, showing the running loss."""

    def before_training_exp(self, strategy, **kwargs):
        self.bar = tqdm(total=len(strategy.dataloader), leave=False, disable=None,
                        desc=f"train task {strategy.experience.current_experience}")

    def after_training_iteration(self, strategy, **kwargs):
        if self.bar.disable:  # no terminal: a disabled bar never counts, so n % 20 == 0 held on every step
            return  # (and its loss.item() stalled a GPU's queue once per step)
        self.bar.update()
        if self.bar.n % 20 == 0:
            self.bar.set_postfix(loss=f"{strategy.loss.item():.4f}")

    def after_training_exp(self, strategy, **kwargs):
        self.bar.close()


@dataclass
class RunResult:
    """A finished run: its folder, metric rows, printed summary and wall time."""

    path: Path
    rows: list[dict[str, Any]]
    summary: str
    wall_time_s: float


def build_benchmark(config: RunConfig | ResolvedRun) -> MultiLabelBenchmark:
    """The benchmark a (resolved) config names, built from its options."""
    return ResolvedRun.of(config).build_benchmark()


@dataclass
class _Session:
    """What one run trains with, built before any folder is written (a bad setting leaves nothing)."""

    plan: ResolvedRun
    benchmark: MultiLabelBenchmark
    template: MultiLabelTemplate  # Avalanche's training loop (not the strategy: that is its plugins)
    plugins: list  # the strategy's plugins, then the recorder: what a checkpoint holds
    evaluator: Evaluator
    recorder: RunRecorder


def run(config: RunConfig | ResolvedRun, out: str | Path, benchmark: MultiLabelBenchmark | None = None,
        log=print, resume: bool = True, lock_wait_s: float = 0.0,
        loggers: Sequence[str] = ()) -> RunResult:
    """Train ``config.strategy`` on ``config.benchmark`` and write the run folder under ``out``.

    ``config``: a :class:`~cml_bench.resolved.ResolvedRun`, or a resolved config (resolved into one).
    A checkpoint is written after every task into the run's hidden staging folder; with
    ``resume`` (the default) an unfinished run of the same config and
    :func:`~cml_bench.resolved.run_identity` continues after its last finished task. The working
    folder is locked while the run works in it; ``lock_wait_s`` is how long to wait for a lock held
    on another host to go stale (a run whose node died) before giving up.
    ``loggers``: Avalanche loggers to feed as well (``tensorboard``, ``wandb``; ``cml_bench/recording.py``).
    """
    start = time.perf_counter()
    plan = ResolvedRun.of(config)
    config, label = plan.config, plan.label
    device = resolve_device(config.device)
    session = _build_session(plan, benchmark or plan.build_benchmark(), device, loggers)
    identity = plan.identity(torch.get_num_threads())
    staging, lock, done = _stage(session, out, identity, resume, lock_wait_s, log, device)
    session.recorder.open_loggers(loggers, staging, f"{label}-seed{config.seed}", config.to_dict())
    try:
        path = _train(session, staging, done, identity, log, start)
    except BaseException:
        lock.release()
        if not (staging / "checkpoint.pt").exists():  # nothing to resume from: leave nothing behind
            shutil.rmtree(staging, ignore_errors=True)
        raise
    lock.release()
    removed = cleanup_partials(out, config, label)
    if removed:
        log(f"  removed {len(removed)} superseded unfinished run(s) of this config: {', '.join(p.name for p in removed)}")
    summary = summary_table(pd.DataFrame(session.evaluator.rows))
    return RunResult(path, session.evaluator.rows, summary, time.perf_counter() - start)


def _build_session(plan: ResolvedRun, benchmark: MultiLabelBenchmark, device: torch.device,
                   loggers: Sequence[str]) -> _Session:
    """Seed, then build the model, the strategy's plugins, the evaluator, the recorder and the template."""
    config, meta, spec = plan.config, benchmark.meta, plan.strategy
    seed_everything(config.seed)
    model = build_model(config.model, meta.num_classes).to(device)
    ctx = StrategyContext(meta=meta, train=config.train, seed=config.seed, device=device)
    plugins = list(spec.build(plan.strategy_options, ctx))
    train_size = image_hw(config.model.image_size, "model.image_size")
    eval_size = image_hw(config.eval.image_size, "eval.image_size") or train_size
    for size in {train_size, eval_size} - {None}:  # fail before training, not at the first evaluation
        model.backbone.check_input_size(size)
    evaluator = Evaluator(benchmark, config.eval, device,
                          run_columns={"benchmark": meta.name, "strategy": plan.label, "seed": config.seed},
                          image_size=eval_size, precision=config.train.precision,
                          channels_last=config.train.channels_last)
    check_loggers(loggers)
    recorder = RunRecorder(evaluator, config.eval, [p for p in plugins if isinstance(p, OnlineReplayPlugin)],
                           seed=config.seed, batch_size=config.train.batch_size, joint=spec.joint,
                           epochs=config.train.epochs)
    plugins.append(recorder)  # after the strategy's plugins (the memory has taken the step); checkpointed
    template = MultiLabelTemplate(model=model, cfg=config.train, device=device,
                                  plugins=plugins + [ProgressPlugin()], seed=config.seed, image_size=train_size)
    return _Session(plan, benchmark, template, plugins, evaluator, recorder)


def _stage(session: _Session, out: str | Path, identity: dict[str, Any], resume: bool, lock_wait_s: float,
           log, device: torch.device) -> tuple[Path, RunLock, int]:
    """The locked working folder: an interrupted run of this config and identity restored from its
    checkpoint (with ``resume``), else a new one; returns it, its lock and the last task done (-1)."""
    config, label, meta = session.plan.config, session.plan.label, session.benchmark.meta
    notes: list[str] = []
    staging = find_partial(out, config, label, identity, notes) if resume else None
    for note in notes:
        log(f"{label} on {meta.name}, seed {config.seed}: {note}")
    if staging is None:
        staging = start_run(out, config, label)
        lock = RunLock(staging).acquire()
        log(f"{label} on {meta.name}: {meta.num_tasks} task{'s' * (meta.num_tasks != 1)}, {meta.num_classes} classes, "
            f"seed {config.seed}, device {device}")
        return staging, lock, -1
    lock = RunLock(staging).acquire(lock_wait_s)
    try:
        state = load_checkpoint(staging)
    except CheckpointError as err:
        lock.release()
        moved = set_aside(staging)
        raise CheckpointError(f"{err}. Its folder was set aside as {moved}; the same command now starts "
                              f"this run from task 0.") from None
    done = restore_checkpoint(state, session.template, session.plugins, session.evaluator)
    log(f"{label} on {meta.name}, seed {config.seed}: resuming after task {done} from {staging} "
        f"(an interrupted run of this config)")
    return staging, lock, done


def _train(session: _Session, staging: Path, done: int, identity: dict[str, Any], log, start: float) -> Path:
    """Train the tasks after ``done`` (checkpointing each), then write the run folder; return it."""
    config, benchmark, template = session.plan.config, session.benchmark, session.template
    evaluator, recorder, plugins = session.evaluator, session.recorder, session.plugins
    meta, model = benchmark.meta, template.model
    if session.plan.strategy.joint:
        template.train(joint_experience(benchmark))
        evaluator.after_task(model, meta.num_tasks - 1)
        recorder.end_of_task(model, meta.num_tasks - 1)
    else:
        for experience in benchmark.train_stream:
            task = experience.current_experience
            if task <= done:
                continue
            template.train(experience)
            seen = evaluator.after_task(model, task)
            recorder.end_of_task(model, task)
            log(f"  after task {task}: {evaluator.headline} on seen tasks {seen['all'][evaluator.headline]:.1f}")
            if task < meta.num_tasks - 1:
                save_checkpoint(staging, task, template, plugins, evaluator, identity)
    evaluator.finish()
    recorder.finish(staging)  # A_auc rows, anytime.csv, memory.csv, scores.npz; closes the loggers
    wall = time.perf_counter() - start
    extra = {"strategy_label": session.plan.label, "benchmark_kind": meta.kind,
             "resumed_after_task": done if done >= 0 else None,
             "train_images": sum(len(e.dataset) for e in benchmark.train_stream), "identity": identity,
             "weights": model.backbone.weights_info,
             "recording": {k: round(v, 3) for k, v in recorder.cost.items()}}
    if benchmark.store is not None:  # a prepared store: which one, and which images it left out
        extra["data"] = record_store_use(benchmark.store, staging)
    info = manifest(config, wall, extra)
    return finish_run(staging, config, evaluator.rows, info, model_state=model.state_dict())
