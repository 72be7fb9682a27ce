"""Every registered strategy, with every head, runs on a tiny stream and reports sane metrics.

Parametrised over the registry: a new strategy module is tested the moment it exists.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest

from cml_bench.registry import HEADS, STRATEGIES
from cml_bench.runner import resolve_config, run

CASES = [(name, head) for name in STRATEGIES.names() for head in HEADS]


@pytest.mark.parametrize("name,head", CASES, ids=[f"{n}+{h}" for n, h in CASES])
def test_strategy_runs_with_head(name, head, tiny_layer, tmp_path):
    strategy = name if head == "pooled" else f"{name}+{head}"
    config = resolve_config(tiny_layer, {"strategy": {"name": strategy}})
    result = run(config, tmp_path, log=lambda *_: None)
    frame = pd.DataFrame(result.rows)
    final = frame[(frame.trained_through_task == 3) & (frame.eval_on == "seen") & (frame.group == "all")]
    values = dict(zip(final.metric, final.value))
    assert set(values) >= {"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"}
    assert all(0.0 <= values[m] <= 100.0 for m in ("mAP", "CF1", "OF1"))
    assert not math.isnan(values["mAP"])
    spec = STRATEGIES.get(name)
    trained = set(frame.trained_through_task)
    assert trained == ({3} if spec.joint else {0, 1, 2, 3})
    assert (result.path / "metrics.csv").is_file() and (result.path / "model.pt").is_file()
