"""Replay buffers as pure slot allocators over multi-hot labels (numpy only).

A buffer decides WHICH slot an incoming sample goes to (``offer(labels) -> slot | None``); whoever
owns the images writes the payload into that slot. A ``KeyedBuffer`` (GSS, ExStream) also takes a
vector per sample (``offer_batch(labels, keys, slot_keys)``).
``make_buffer("prs", 2000, 70, seed=0, rho=-0.03)``.
"""
from __future__ import annotations

import inspect
from typing import Any

from cml_bench.buffers.base import KeyedBuffer, ReplayBuffer, SlotKeys
from cml_bench.buffers.exstream import ExStreamBuffer
from cml_bench.buffers.gss import GSSBuffer
from cml_bench.buffers.ocdm import OCDMBuffer
from cml_bench.buffers.prs import PRSBuffer
from cml_bench.buffers.reservoir import ReservoirBuffer

BUFFERS: dict[str, type[ReplayBuffer]] = {
    "reservoir": ReservoirBuffer,
    "prs": PRSBuffer,
    "ocdm": OCDMBuffer,
    "gss": GSSBuffer,
    "exstream": ExStreamBuffer,
}
"""Buffer name -> class; every class takes (capacity, num_classes, seed, **its options)."""


def make_buffer(name: str, capacity: int, num_classes: int, seed: int, **options: Any) -> ReplayBuffer:
    """Build the buffer registered as ``name`` (``options``: e.g. ``rho`` for ``prs``)."""
    if name not in BUFFERS:
        raise ValueError(f"Unknown buffer '{name}'. Available: {', '.join(sorted(BUFFERS))}.")
    cls = BUFFERS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "capacity", "num_classes", "seed"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        allowed = ", ".join(sorted(accepted)) or "none"
        raise ValueError(
            f"Buffer '{name}' does not take option(s) {', '.join(unknown)}; its options: {allowed}."
        )
    return cls(capacity, num_classes, seed=seed, **options)


__all__ = ["BUFFERS", "ExStreamBuffer", "GSSBuffer", "KeyedBuffer", "OCDMBuffer", "PRSBuffer", "ReplayBuffer",
           "ReservoirBuffer", "SlotKeys", "make_buffer"]
