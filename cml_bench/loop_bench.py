"""Cost of the training loop itself: cml_bench (Avalanche template + plugins) vs a bare PyTorch loop.

Both loops train the same model (same seed, same initial weights) on the same task's data with the
same batch size, loss, clipping, optimiser, precision (``train.precision``) and memory layout
(``train.channels_last``); the difference is the machinery around the step.
Repeats alternate between the two so that machine noise hits both alike; the median throughput of
each is reported. ``python -m cml_bench bench-loop`` prints the figures.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from cml_bench.config import RunConfig
from cml_bench.models import build_model
from cml_bench.runner import build_benchmark, seed_everything
from cml_bench.training import MultiLabelTemplate, autocast, make_optimizer, model_input, multilabel_loss


@dataclass
class LoopBenchResult:
    images: int
    cml_bench_ips: list[float]
    bare_ips: list[float]

    @property
    def ratio(self) -> float:
        """cml_bench throughput / bare throughput (1.0 = no overhead)."""
        return statistics.median(self.cml_bench_ips) / statistics.median(self.bare_ips)


def bare_loop(model: torch.nn.Module, dataset, config: RunConfig, seed: int) -> int:
    """The plain PyTorch loop the platform's loop is measured against; returns images trained on."""
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config.train)
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=config.train.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    model.train()
    seen = 0
    for x, y, *_ in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        with autocast(device, config.train.precision):
            out = model.forward_modules(model_input(x, config.train.channels_last))
        loss = multilabel_loss(out.float(), y)
        loss.backward()
        if config.train.grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), config.train.grad_clip_value)
        optimizer.step()
        seen += len(x)
    return seen


def run_loop_bench(config: RunConfig, repeats: int = 3, task: int = 0, log=print) -> LoopBenchResult:
    """Time ``repeats`` alternating passes over one task's training data through both loops."""
    benchmark = build_benchmark(config)
    experience = benchmark.train_stream[task]
    num_classes = benchmark.meta.num_classes
    device = torch.device(config.device)
    result = LoopBenchResult(len(experience.dataset), [], [])
    def ours() -> float:
        seed_everything(config.seed)
        model = build_model(config.model, num_classes).to(device)
        strategy = MultiLabelTemplate(model=model, cfg=config.train, device=device, seed=config.seed)
        start = time.perf_counter()
        strategy.train(experience)
        return len(experience.dataset) / (time.perf_counter() - start)

    def bare() -> float:
        seed_everything(config.seed)
        model = build_model(config.model, num_classes).to(device)
        start = time.perf_counter()
        seen = bare_loop(model, experience.dataset, config, config.seed)
        return seen / (time.perf_counter() - start)

    for r in range(repeats + 1):  # round 0 warms caches and allocators, and is dropped
        # alternate which loop goes first, so that neither always inherits the other's warm state
        first, second = (ours, bare) if r % 2 else (bare, ours)
        timed = {first: first(), second: second()}
        if r > 0:
            result.cml_bench_ips.append(timed[ours])
            result.bare_ips.append(timed[bare])
            log(f"  repeat {r}: cml_bench {timed[ours]:.1f} img/s, bare loop {timed[bare]:.1f} img/s")
    return result
