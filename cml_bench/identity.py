"""What makes two runs "the same": the one home of config hashes and run identities.

Two questions are asked of every run folder, and both are answered here:

* **Is it the same experiment?** (the leaderboard pools seeds of one experiment into a row):
  :func:`experiment_key` hashes the fully resolved config without what does not define the
  experiment (:data:`NOT_THE_EXPERIMENT`: the seed, the device, where caches live), together with
  the data's identity. Runs of different keys are never averaged together.
* **Is it this very run, already done?** (``run`` / ``sweep`` skip it, ``--resume`` continues it):
  the resolved config must be equal (seed and device included; see
  :func:`cml_bench.results.find_finished`) *and* the run identity
  (:func:`cml_bench.resolved.run_identity`, built from the functions here) recorded in the run's
  manifest must equal today's: the data's identity (a prepared store's fingerprint and build, the
  synthetic generator's version), the pretrained weights' hash, and on a CPU the torch thread
  count (results are not bitwise equal across thread counts).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

# Dotted config keys left out of the experiment key: they change where a run executes or where it
# caches data, not what it computes (the device only changes floating-point rounding).
NOT_THE_EXPERIMENT = ("seed", "device", "benchmark.options.cache_dir")


def config_hash(config: Mapping[str, Any], exclude: tuple[str, ...] = (), length: int = 12) -> str:
    """Hex digest of a (resolved) config mapping, without the dotted keys ``exclude``.

    Canonical: key order does not matter, tuples equal lists.

    >>> config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    True
    >>> config_hash({"seed": 0, "x": 1}, ("seed",)) == config_hash({"seed": 5, "x": 1}, ("seed",))
    True
    """
    data = copy.deepcopy(dict(config))
    for dotted in exclude:
        node: Any = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def experiment_key(config: Mapping[str, Any], data: str | None = None, weights: str | None = None) -> str:
    """The leaderboard's row key: config without :data:`NOT_THE_EXPERIMENT`, plus the data and
    weights identities (when known)."""
    return config_hash({"config": config_hash(config, NOT_THE_EXPERIMENT, 64), "data": data,
                        "weights": weights})


def flat_items(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (for notes naming the keys that differ)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_items(value, name + "."))
        else:
            out[name] = value
    return out


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (cached per path, size and modification time within this process)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def data_identity(spec: Any, options: Any) -> str | None:
    """What a run's data is, beyond its config, for the benchmark ``spec`` with typed ``options``:
    the benchmark's ``identity(options)`` when it defines one (synthetic generators: their version),
    else the prepared store's identity when ``options.root`` names a store (see
    :func:`cml_bench.store.store_identity`)."""
    from cml_bench.store import store_identity

    if getattr(spec, "identity", None) is not None:
        return spec.identity(options)
    root = getattr(options, "root", None)
    return store_identity(root) if root else None


def _weights_file(value: str) -> Path | None:
    """The file a weights setting names: a path, or a name the backbone module resolves (shipped
    weights); None when neither."""
    if Path(value).is_file():
        return Path(value)
    from cml_bench.models import backbone

    resolver = getattr(backbone, "resolve_weights", None)
    try:
        path = resolver(value) if resolver is not None else None
    except Exception:  # noqa: BLE001 - unresolvable: the run itself will say why, in one line
        return None
    return Path(path) if path is not None and Path(path).is_file() else None


def weights_identity(config: Any) -> str | None:
    """sha256 of the pretrained weights file the model loads (``model.weights`` /
    ``model.weights_path``: a path or a shipped name); None otherwise (no pretrained weights, or
    timm's published ones, named by the backbone in the config)."""
    model = config.model
    if not getattr(model, "pretrained", False):
        return None
    for key in ("weights", "weights_path"):
        value = getattr(model, key, None)
        path = _weights_file(str(value)) if value else None
        if path is not None:
            return "sha256:" + file_sha256(path)[:16]
    return None
