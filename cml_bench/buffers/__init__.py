"""Replay buffers as pure slot allocators over multi-hot labels (numpy only).

A buffer decides WHICH slot an incoming sample goes to (``offer(labels) -> slot | None``); whoever
owns the images writes the payload into that slot. A ``KeyedBuffer`` (GSS, ExStream) also takes a
vector per sample (``offer_batch(labels, keys, slot_keys)``). Buffers are built from their class,
``PRSBuffer(2000, 70, seed=0, rho=-0.03)``; a replay strategy passes its class to
``cml_bench.replay.replay_plugin``. ``check_contract(MyBuffer)`` checks a buffer of one's own against
the rules every buffer keeps (``contract.py``).
"""
from __future__ import annotations

from cml_bench.buffers.base import KeyedBuffer, ReplayBuffer, SlotKeys
from cml_bench.buffers.contract import BufferContractError, buffer_classes, check_contract
from cml_bench.buffers.exstream import ExStreamBuffer
from cml_bench.buffers.gss import GSSBuffer
from cml_bench.buffers.ocdm import OCDMBuffer
from cml_bench.buffers.prs import PRSBuffer
from cml_bench.buffers.reservoir import ReservoirBuffer

__all__ = ["BufferContractError", "ExStreamBuffer", "GSSBuffer", "KeyedBuffer", "OCDMBuffer", "PRSBuffer",
           "ReplayBuffer", "ReservoirBuffer", "SlotKeys", "buffer_classes", "check_contract"]
