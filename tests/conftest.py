"""Shared fixtures: a tiny synth-cocoseq configuration that trains in seconds on a CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
if not SHARED.is_dir():  # CI clones the repo beside a copy of shared/
    SHARED = Path(__file__).resolve().parents[1].parent / "shared"

TINY_BENCHMARK = {"scale": 0.02, "image_size": 32, "test_per_class": 2, "clutter": 2, "sprite_min": 4, "sprite_max": 6}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth-cache")


@pytest.fixture
def tiny_layer(cache_dir) -> dict:
    """A config layer for a run of a few seconds: 2% of the synth stream at 32 px."""
    return {
        "benchmark": {"name": "synth-cocoseq", "options": {**TINY_BENCHMARK, "cache_dir": str(cache_dir)}},
        "eval": {"batch_size": 256},
    }


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared research data not present")
    return SHARED


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    # The test models are tiny: intra-op threads cost more than they save, badly so on a busy
    # machine (a 7-image resnet10t pass: 0.8 s with 2 threads on a loaded 2-core box, 13 ms with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
