"""Checkpoints at task boundaries: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, the optimiser, every strategy plugin's state (buffer, replay memory,
EWC's importances, ...), Avalanche's training clock, the evaluator's results so far and every
random generator (Python, NumPy, torch, the data-order generator), so a resumed run on the same
machine ends with the same metrics as an uninterrupted one. It is written atomically (temporary
file, then rename), so a kill while writing leaves the previous checkpoint intact.

A results folder may be shared (a cluster's file system), so a checkpoint found there is data, never
code: it is read with ``torch.load(weights_only=True)``, which builds tensors and plain Python values
only. Whatever is not a tensor or a plain value (NumPy arrays and scalars, Avalanche's ``ParamData``)
is stored in a tagged plain form by :func:`to_plain` and rebuilt exactly by :func:`from_plain`; a
file holding anything else is refused in one line (:class:`CheckpointError`).
"""
from __future__ import annotations

import copy
import errno
import json
import os
import pickle
import random
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

TAG = "__cml_bench__"  # marks a tagged value in a checkpoint's plain form


class CheckpointError(ValueError):
    """A checkpoint cannot be used (damaged, refused, or unwritable); the message says what to do."""


def _param_data_class() -> type | None:
    try:
        from avalanche.training.utils import ParamData
    except ImportError:  # pragma: no cover - avalanche is a dependency
        return None
    return ParamData


def to_plain(obj: Any) -> Any:
    """``obj`` as tensors and plain Python values only (loadable with ``weights_only=True``).

    NumPy arrays and scalars keep their dtype and bytes, tuples stay tuples, ``defaultdict(dict)``
    and Avalanche's ``ParamData`` (EWC's importances) are tagged; :func:`from_plain` inverts it
    exactly. Anything else is a TypeError: a checkpoint never holds arbitrary objects.
    """
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.Size)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("A checkpoint cannot hold a NumPy array of Python objects.")
        return {TAG: "ndarray", "dtype": obj.dtype.str, "shape": list(obj.shape),
                "data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.generic):
        return {TAG: "npscalar", "dtype": obj.dtype.str, "data": obj.tobytes()}
    if isinstance(obj, torch.device):
        return {TAG: "device", "name": str(obj)}
    if isinstance(obj, defaultdict):
        if obj.default_factory not in (dict, list):
            raise TypeError(f"A checkpoint cannot hold a defaultdict of {obj.default_factory!r}.")
        return {TAG: "defaultdict", "factory": obj.default_factory.__name__,
                "items": {k: to_plain(v) for k, v in obj.items()}}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    param_data = _param_data_class()
    if param_data is not None and type(obj) is param_data:
        if obj.init_function is not torch.zeros:  # how EWC creates them; anything else is not ours
            raise TypeError(f"A checkpoint cannot hold ParamData with init_function {obj.init_function!r}.")
        return {TAG: "ParamData", "name": obj.name, "shape": list(obj.shape), "device": str(obj.device),
                "data": obj.data}
    raise TypeError(f"A checkpoint cannot hold a {type(obj).__module__}.{type(obj).__qualname__}; "
                    f"give the plugin a state_dict() of tensors and plain values.")


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(obj, dict):
        kind = obj.get(TAG)
        if kind is None:
            return {k: from_plain(v) for k, v in obj.items()}
        if kind == "ndarray":
            return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        if kind == "npscalar":
            return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"]))[0]
        if kind == "device":
            return torch.device(obj["name"])
        if kind == "defaultdict":
            out = defaultdict({"dict": dict, "list": list}[obj["factory"]])
            out.update({k: from_plain(v) for k, v in obj["items"].items()})
            return out
        if kind == "ParamData":
            param_data = _param_data_class()
            return param_data(obj["name"], shape=tuple(obj["shape"]), init_tensor=obj["data"],
                              device=obj["device"])
        raise ValueError(f"unknown tagged value {kind!r}")
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    return obj


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


def save_checkpoint(folder: Path, task: int, strategy: Any, plugins: Sequence[Any], evaluator: Any,
                    identity: dict[str, Any] | None = None) -> None:
    """Write ``checkpoint.pt`` (and a small ``checkpoint.json`` saying which task, and the run's
    identity: data, weights, threads; see :mod:`cml_bench.identity`) into ``folder``."""
    state = {  # model and optimiser state dicts are tensors and plain values already (kept as they are)
        "model": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
    }
    state.update(to_plain({
        "task": task,
        "plugins": [_plugin_state(p) for p in plugins],
        "clock": dict(vars(strategy.clock)),
        "evaluator": {"rows": evaluator.rows, "matrix": evaluator.matrix},
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(), "data": strategy.data_generator.get_state()},
    }))
    tmp = folder / f".checkpoint.pt.{os.getpid()}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, folder / "checkpoint.pt")
        (folder / "checkpoint.json").write_text(json.dumps({"completed_task": task, "identity": identity}) + "\n")
    except OSError as err:
        tmp.unlink(missing_ok=True)  # never leave a half-written checkpoint taking the space
        raise CheckpointError(_write_failure(err, folder, task)) from None
    except RuntimeError as err:  # torch's zip writer reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise CheckpointError(_write_failure(OSError(errno.EIO, str(err).splitlines()[0]), folder, task)) from None


def _write_failure(err: OSError, folder: Path, task: int) -> str:
    kept = f"the checkpoint after task {task - 1} is kept" if task > 0 else "no checkpoint was kept"
    if err.errno == errno.ENOSPC:
        what = f"No space left on the device of {folder}"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = f"Cannot write to {folder} ({os.strerror(err.errno).lower()})"
    else:
        what = f"Writing the checkpoint into {folder} failed ({err.strerror or err})"
    return (f"{what} while saving the checkpoint after task {task}; the temporary file was removed and "
            f"{kept}: free space (or fix permissions) and run the same command again to continue.")


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """The checkpoint in ``folder``, loaded as data only (``weights_only=True``: no code can run).

    Raises :class:`CheckpointError` (one line naming the file, without a final period: callers add
    what happens next) when it is damaged (truncated, not a checkpoint) or holds anything but
    tensors and plain values (planted or foreign).
    """
    path = folder / "checkpoint.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "global" in str(err).lower():
            raise CheckpointError(f"Refused to load {path}: it holds objects a cml_bench checkpoint never has "
                                  f"(planted, or written by an older cml_bench); nothing in it was run") from None
        raise CheckpointError(f"Checkpoint {path} is damaged ({first_words(err)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"Checkpoint {path} is damaged (truncated or not a checkpoint: "
                              f"{first_words(err)})") from None
    if not isinstance(state, dict) or "task" not in state:
        raise CheckpointError(f"Checkpoint {path} is not a cml_bench checkpoint")
    return {**from_plain({k: v for k, v in state.items() if k not in ("model", "optimizer")}),
            "model": state.get("model"), "optimizer": state.get("optimizer")}


def first_words(err: BaseException, limit: int = 80) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
