"""One run: a strategy (with its head) on a benchmark for one seed, from config to run folder."""
from __future__ import annotations

import dataclasses
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cml_bench.config import ConfigError, RunConfig, build_dataclass, image_hw, resolve
from cml_bench.evaluator import Evaluator
from cml_bench.models import build_model
from cml_bench.registry import BENCHMARKS, HEADS, STRATEGIES, split_head
from cml_bench.checkpoint import CheckpointError, load_checkpoint, restore_checkpoint, save_checkpoint
from cml_bench.identity import run_identity
from cml_bench.results import (RunLock, cleanup_partials, find_partial, finish_run, manifest, set_aside, start_run,
                               summary_table)
from cml_bench.recording import RunRecorder, check_loggers
from cml_bench.replay import OnlineReplayPlugin
from cml_bench.store import record_store_use
from cml_bench.strategy import StrategyContext, StrategySpec
from cml_bench.stream import BenchmarkSpec, MultiLabelBenchmark, joint_experience
from cml_bench.training import MultiLabelTemplate

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import SupervisedPlugin


def resolve_config(*layers: Mapping[str, Any]) -> RunConfig:
    """Resolve a run config: defaults < benchmark defaults < ``layers`` (YAML, then CLI flags).

    The strategy's head suffix sets ``model.head``; benchmark and strategy options are validated
    against their plugins' option dataclasses and written back fully resolved.
    """
    probe = resolve(*layers)
    bench_spec: BenchmarkSpec = BENCHMARKS.get(probe.benchmark.name)
    base, head = split_head(probe.strategy.name)
    strategy_spec: StrategySpec = STRATEGIES.get(base)
    config = resolve(dict(bench_spec.defaults), *layers)
    if "+" in config.strategy.name:
        config.model.head = head
    if config.model.head not in HEADS:
        raise ConfigError(f"Unknown model.head '{config.model.head}'. Available: {', '.join(HEADS)}.")
    bench_options = build_dataclass(bench_spec.options, config.benchmark.options, "benchmark.options")
    strategy_options = build_dataclass(strategy_spec.options, config.strategy.options, "strategy.options")
    config.benchmark.options = dataclasses.asdict(bench_options)
    config.strategy.options = dataclasses.asdict(strategy_options)
    return config


def strategy_label(config: RunConfig) -> str:
    """``prs+ssca``-style name of what actually runs (the head made explicit when not pooled)."""
    base, _ = split_head(config.strategy.name)
    return base if config.model.head == "pooled" else f"{base}+{config.model.head}"


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
    path: Path
    rows: list[dict[str, Any]]
    summary: str
    wall_time_s: float


def build_benchmark(config: RunConfig) -> MultiLabelBenchmark:
    spec: BenchmarkSpec = BENCHMARKS.get(config.benchmark.name)
    return spec.build(build_dataclass(spec.options, config.benchmark.options, "benchmark.options"))


def run(config: RunConfig, out: str | Path, benchmark: MultiLabelBenchmark | None = None,
        log=print, resume: bool = True, lock_wait_s: float = 0.0,
        loggers: Sequence[str] = ()) -> RunResult:
    """Train ``config.strategy`` on ``config.benchmark`` and write the run folder under ``out``.

    A checkpoint is written after every task into the run's hidden staging folder; with
    ``resume`` (the default) an unfinished run of the same config and
    :func:`~cml_bench.identity.run_identity` continues after its last finished task. The working
    folder is locked while the run works in it; ``lock_wait_s`` is how long to wait for a lock held
    on another host to go stale (a run whose node died) before giving up.
    ``loggers``: Avalanche loggers to feed as well (``tensorboard``, ``wandb``; ``cml_bench/recording.py``).
    """
    start = time.perf_counter()
    device = resolve_device(config.device)
    label = strategy_label(config)
    benchmark = benchmark or build_benchmark(config)
    meta = benchmark.meta
    base, _ = split_head(config.strategy.name)
    spec: StrategySpec = STRATEGIES.get(base)
    options = build_dataclass(spec.options, config.strategy.options, "strategy.options")

    seed_everything(config.seed)
    model = build_model(config.model, meta.num_classes).to(device)
    ctx = StrategyContext(meta=meta, train=config.train, seed=config.seed, device=device)
    plugins = list(spec.build(options, ctx))
    train_size = image_hw(config.model.image_size, "model.image_size")
    eval_size = image_hw(config.eval.image_size, "eval.image_size") or train_size
    for size in {train_size, eval_size} - {None}:  # fail before training, not at the first evaluation
        model.backbone.check_input_size(size)
    evaluator = Evaluator(benchmark, config.eval, device,
                          run_columns={"benchmark": meta.name, "strategy": label, "seed": config.seed},
                          image_size=eval_size, precision=config.train.precision,
                          channels_last=config.train.channels_last)
    check_loggers(loggers)
    recorder = RunRecorder(evaluator, config.eval, [p for p in plugins if isinstance(p, OnlineReplayPlugin)],
                           seed=config.seed, batch_size=config.train.batch_size, joint=spec.joint,
                           epochs=config.train.epochs)
    plugins.append(recorder)  # after the strategy's plugins (the memory has taken the step); checkpointed
    strategy = MultiLabelTemplate(model=model, cfg=config.train, device=device,
                                  plugins=plugins + [ProgressPlugin()], seed=config.seed, image_size=train_size)

    identity = run_identity(config, torch.get_num_threads())
    notes: list[str] = []
    staging = find_partial(out, config, label, identity, notes) if resume else None
    for note in notes:
        log(f"{label} on {meta.name}, seed {config.seed}: {note}")
    done = -1
    if staging is not None:
        lock = RunLock(staging).acquire(lock_wait_s)
        try:
            state = load_checkpoint(staging)
        except CheckpointError as err:
            lock.release()
            moved = set_aside(staging)
            raise CheckpointError(f"{err}. Its folder was set aside as {moved}; the same command now starts "
                                  f"this run from task 0.") from None
        done = restore_checkpoint(state, strategy, plugins, evaluator)
        log(f"{label} on {meta.name}, seed {config.seed}: resuming after task {done} from {staging} "
            f"(an interrupted run of this config)")
    else:
        staging = start_run(out, config, label)
        lock = RunLock(staging).acquire()
        log(f"{label} on {meta.name}: {meta.num_tasks} task{'s' * (meta.num_tasks != 1)}, {meta.num_classes} classes, "
            f"seed {config.seed}, device {device}")
    recorder.open_loggers(loggers, staging, f"{label}-seed{config.seed}", config.to_dict())
    try:
        path = _train(config, out, benchmark, strategy, plugins, evaluator, recorder, spec, staging, done, identity,
                      log, start, label)
    except BaseException:
        lock.release()
        if not (staging / "checkpoint.pt").exists():  # nothing to resume from: leave nothing behind
            shutil.rmtree(staging, ignore_errors=True)
        raise
    lock.release()
    removed = cleanup_partials(out, config, label)
    if removed:
        log(f"  removed {len(removed)} superseded unfinished run(s) of this config: {', '.join(p.name for p in removed)}")
    summary = summary_table(pd.DataFrame(evaluator.rows))
    return RunResult(path, evaluator.rows, summary, time.perf_counter() - start)


def _train(config: RunConfig, out: str | Path, benchmark: MultiLabelBenchmark, strategy: MultiLabelTemplate,
           plugins: list, evaluator: Evaluator, recorder: RunRecorder, spec: StrategySpec, staging: Path, done: int,
           identity: dict[str, Any], log, start: float, label: str) -> Path:
    """Train the tasks after ``done`` (checkpointing each), then write the run folder; return it."""
    meta, model = benchmark.meta, strategy.model
    if spec.joint:
        strategy.train(joint_experience(benchmark))
        evaluator.after_task(model, meta.num_tasks - 1)
        recorder.end_of_task(model, meta.num_tasks - 1)
    else:
        for experience in benchmark.train_stream:
            task = experience.current_experience
            if task <= done:
                continue
            strategy.train(experience)
            seen = evaluator.after_task(model, task)
            recorder.end_of_task(model, task)
            log(f"  after task {task}: {evaluator.headline} on seen tasks {seen['all'][evaluator.headline]:.1f}")
            if task < meta.num_tasks - 1:
                save_checkpoint(staging, task, strategy, plugins, evaluator, identity)
    evaluator.finish()
    recorder.finish(staging)  # A_auc rows, anytime.csv, memory.csv, scores.npz; closes the loggers
    wall = time.perf_counter() - start
    extra = {"strategy_label": label, "benchmark_kind": meta.kind, "resumed_after_task": done if done >= 0 else None,
             "train_images": sum(len(e.dataset) for e in benchmark.train_stream), "identity": identity,
             "weights": model.backbone.weights_info,
             "recording": {k: round(v, 3) for k, v in recorder.cost.items()}}
    if "store" in benchmark.extra:  # a prepared store: which one, and which images it left out
        extra["data"] = record_store_use(benchmark.extra["store"], staging)
    info = manifest(config, wall, extra)
    return finish_run(staging, config, evaluator.rows, info, model_state=model.state_dict())
