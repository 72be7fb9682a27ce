"""Online replay (PRS protocol) as an Avalanche plugin.

Each incoming mini-batch is joined with ``min(|buffer|, replay_batch_size)`` samples drawn uniformly
from the buffer; one optimiser step runs on the union; then the incoming samples are offered to the
buffer one by one. Replay starts within the first task. Avalanche's ``ReplayPlugin`` updates its
buffer only at task boundaries, which is not this protocol.

The buffer (``cml_bench.buffers``) decides which slot a sample goes to; this plugin keeps the
payload: uint8 images and multi-hot targets in preallocated tensors on the training device.

A buffer that decides on more than labels (a ``KeyedBuffer``: GSS's gradients, ExStream's features)
gets its per-sample vectors from a ``KeyFunction`` the strategy passes as ``keys``: the plugin calls
it on the incoming batch, and on stored samples when the buffer asks (``slot_keys``), with the model
in eval mode (no batch-norm statistics move) after the optimiser step.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from cml_bench.buffers import ReplayBuffer
from cml_bench.config import require
from cml_bench.strategy import StrategyContext

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import SupervisedPlugin


class ReplayMemory:
    """Slot-addressed storage of images and targets, allocated on the first write."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.images: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None

    def write(self, slots: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> None:
        if self.images is None:
            self.images = images.new_empty((self.capacity, *images.shape[1:]))
            self.targets = targets.new_zeros((self.capacity, *targets.shape[1:]))
        self.images[slots] = images
        self.targets[slots] = targets

    def read(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.images is not None and self.targets is not None
        if self.images.device != slots.device:  # restored from a checkpoint loaded on the CPU
            self.images, self.targets = self.images.to(slots.device), self.targets.to(slots.device)
        return self.images[slots], self.targets[slots]

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "targets": self.targets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images, self.targets = state["images"], state["targets"]


def to_device(values: Any, device: torch.device) -> torch.Tensor:
    """``torch.as_tensor(values, device=device)``; to a GPU through pinned memory without waiting, so
    the step's host work does not stall the device's queue (a pageable copy waits for it to drain)."""
    tensor = torch.as_tensor(values)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def host_labels(y: torch.Tensor) -> Callable[[], np.ndarray]:
    """``(y > 0.5)`` as a numpy array, returned by the function this gives back. On a GPU the copy
    starts now, without waiting; the function waits only for it (not for the model's step queued
    after it), so the incoming labels reach the buffer without a device-wide synchronisation."""
    labels = y > 0.5
    if labels.device.type != "cuda":
        return lambda: labels.cpu().numpy()
    host = torch.empty(labels.shape, dtype=labels.dtype, pin_memory=True)
    host.copy_(labels, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def wait() -> np.ndarray:
        copied.synchronize()
        return host.numpy()
    return wait


KeyFunction = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``keys(model, images, targets)`` -> float [N, D]: one vector per sample for a ``KeyedBuffer``."""


def model_keys(keys: KeyFunction, model: torch.nn.Module, images: torch.Tensor,
               targets: torch.Tensor) -> np.ndarray:
    """``keys`` on a batch with the model in eval mode (restored after), as a float64 numpy array."""
    was_training = model.training
    model.eval()
    try:
        out = keys(model, images, targets)
    finally:
        model.train(was_training)
    return out.detach().to("cpu", torch.float64).numpy()


class OnlineReplayPlugin(SupervisedPlugin):
    """Replay from a pure buffer, updated after every optimiser step (not at task boundaries).

    ``keys`` is required exactly when the buffer is a ``KeyedBuffer`` (its ``key_kind`` says what
    the vectors must be).
    """

    def __init__(self, buffer: ReplayBuffer, replay_batch_size: int = 10, keys: KeyFunction | None = None):
        super().__init__()
        if (buffer.key_kind is None) != (keys is None):
            need = "no keys" if buffer.key_kind is None else f"keys= (per-sample {buffer.key_kind})"
            raise ValueError(f"{type(buffer).__name__} needs {need} from the replay plugin.")
        self.buffer = buffer
        self.replay_batch_size = replay_batch_size
        self.keys = keys
        self.memory = ReplayMemory(buffer.capacity)
        self._incoming: tuple[torch.Tensor, torch.Tensor] | None = None

    def before_training_iteration(self, strategy, **kwargs):
        x, y = strategy.mbatch[0], strategy.mbatch[1]
        self._incoming = (x, y, host_labels(y))
        k = min(len(self.buffer), self.replay_batch_size)
        if k == 0:
            return
        slots = to_device(self.buffer.sample(k), x.device)
        x_old, y_old = self.memory.read(slots)
        t = strategy.mbatch[-1]
        strategy.mbatch[0] = torch.cat([x, x_old])
        strategy.mbatch[1] = torch.cat([y, y_old])
        strategy.mbatch[-1] = torch.cat([t, t.new_zeros(k)])

    def after_training_iteration(self, strategy, **kwargs):
        x, y, labels = self._incoming
        labels = labels()
        if self.keys is None:
            decisions = self.buffer.offer_batch(labels)
        else:
            model, keys = strategy.model, self.keys

            def slot_keys(slots: np.ndarray) -> np.ndarray:
                return model_keys(keys, model, *self.memory.read(torch.as_tensor(slots, device=x.device)))

            decisions = self.buffer.offer_batch(labels, keys=model_keys(keys, model, x, y), slot_keys=slot_keys)
        rows, slots = [], []
        for row, slot in enumerate(decisions):
            if slot is not None:
                rows.append(row)
                slots.append(slot)
        if rows:
            # A later sample of the same batch may take the slot an earlier one just got: keep the last.
            order = {s: r for r, s in zip(rows, slots)}
            slot_t = to_device(list(order), x.device)
            row_t = to_device(list(order.values()), x.device)
            self.memory.write(slot_t, x[row_t], y[row_t])
        self._incoming = None

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.memory.load_state_dict(state["memory"])


@dataclass(frozen=True)
class ReplayOptions:
    """The options every replay strategy has (its own options dataclass extends this one).

    Attributes:
        buffer_size: memory slots; None (the default) is the benchmark's protocol size
            (``BenchmarkMeta.default_buffer_size``: 2000 on COCOseq). 0 or less is an error, never
            the default.
        replay_batch_size: stored samples joined to each incoming mini-batch.
    """

    buffer_size: int | None = None
    replay_batch_size: int = 10

    def __post_init__(self) -> None:
        require(self.buffer_size is None or self.buffer_size >= 1, "strategy.options.buffer_size",
                "an integer >= 1, or null for the benchmark's protocol size", self.buffer_size)
        require(self.replay_batch_size >= 1, "strategy.options.replay_batch_size",
                "an integer >= 1 (no replay at all is the finetune strategy)", self.replay_batch_size)


def replay_plugin(buffer_cls: type[ReplayBuffer], options: ReplayOptions, ctx: StrategyContext,
                  keys: KeyFunction | None = None, **buffer_options: Any) -> OnlineReplayPlugin:
    """The online replay plugin of a replay strategy: a ``buffer_cls`` of ``options.buffer_size``
    slots (None: the benchmark's size) seeded by the run, ``buffer_options`` passed to it."""
    size = ctx.meta.default_buffer_size if options.buffer_size is None else options.buffer_size
    buffer = buffer_cls(size, ctx.meta.num_classes, seed=ctx.seed, **buffer_options)
    return OnlineReplayPlugin(buffer, options.replay_batch_size, keys=keys)
