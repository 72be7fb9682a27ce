"""Checkpoints at task boundaries: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, the optimiser, every strategy plugin's state (buffer, replay memory,
EWC's importances, ...), Avalanche's training clock, the evaluator's results so far and every
random generator (Python, NumPy, torch, the data-order generator), so a resumed run on the same
machine ends with the same metrics as an uninterrupted one. It is written atomically (temporary
file, then rename), so a kill while writing leaves the previous checkpoint intact.
"""
from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def _plugin_state(plugin: Any) -> Any:
    # Our plugins say what their state is; Avalanche's (EWC, ...) keep it in plain attributes.
    if hasattr(plugin, "state_dict"):
        return plugin.state_dict()
    return copy.deepcopy(plugin.__dict__)


def _load_plugin_state(plugin: Any, state: Any) -> None:
    if hasattr(plugin, "load_state_dict"):
        plugin.load_state_dict(state)
    else:
        plugin.__dict__.update(state)


def save_checkpoint(folder: Path, task: int, strategy: Any, plugins: Sequence[Any], evaluator: Any) -> None:
    """Write ``checkpoint.pt`` (and a small ``checkpoint.json`` saying which task) into ``folder``."""
    state = {
        "task": task,
        "model": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "plugins": [_plugin_state(p) for p in plugins],
        "clock": dict(vars(strategy.clock)),
        "evaluator": {"rows": evaluator.rows, "matrix": evaluator.matrix},
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(), "data": strategy.data_generator.get_state()},
    }
    tmp = folder / f".checkpoint.pt.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / "checkpoint.pt")
    (folder / "checkpoint.json").write_text(json.dumps({"completed_task": task}) + "\n")


def load_checkpoint(folder: Path) -> dict[str, Any]:
    # Our own file, holding NumPy and Python objects besides tensors: not a weights-only load.
    return torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)


def restore_checkpoint(state: dict[str, Any], strategy: Any, plugins: Sequence[Any], evaluator: Any) -> int:
    """Put a run back in the state it had after ``state["task"]``; return that task index."""
    strategy.model.load_state_dict(state["model"])
    strategy.optimizer.load_state_dict(state["optimizer"])
    # Avalanche treats parameters it has not seen as new at the next experience and empties their
    # optimiser state; telling it these are the parameters it already optimises keeps Adam's moments.
    strategy.optimized_param_id = dict(strategy.model.named_parameters())
    for plugin, plugin_state in zip(plugins, state["plugins"], strict=True):
        _load_plugin_state(plugin, plugin_state)
    vars(strategy.clock).update(state["clock"])
    evaluator.rows[:] = state["evaluator"]["rows"]
    evaluator.matrix.update(state["evaluator"]["matrix"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    strategy.data_generator.set_state(state["rng"]["data"])
    return int(state["task"])
