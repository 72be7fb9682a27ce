"""Run configuration: typed dataclasses loaded from YAML, with one documented precedence.

Precedence (later wins): dataclass defaults < the benchmark's defaults < a YAML file (``--config``)
< command-line flags. Unknown keys are an error that names the key. Each component receives only its
own section (``ModelConfig``, ``TrainConfig``, ...), never the whole run config.

Strategy and benchmark *options* are free-form mappings here; each plugin validates them against
its own options dataclass with :func:`build_dataclass`, so an unknown option is reported with the
plugin's valid keys.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which and what is expected."""


def require(ok: bool, key: str, expected: str, value: Any) -> None:
    """Raise a one-line ConfigError naming ``key`` unless ``ok`` (range checks of config values).

    >>> require(10 >= 1, "train.batch_size", "an integer >= 1", 10)
    >>> require(0 >= 1, "train.batch_size", "an integer >= 1", 0)
    Traceback (most recent call last):
    cml_bench.config.ConfigError: train.batch_size: expected an integer >= 1, got 0.
    """
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}.")


@dataclass
class ModelConfig:
    """Backbone and head.

    Attributes:
        backbone: any timm model name usable with ``features_only=True`` (e.g. ``resnet101``).
        pretrained: load ImageNet weights through timm (needs network or a local cache/file).
        weights_path: a local weights file for ``pretrained`` on machines without network.
        weights: with ``pretrained``, this platform's backbone weights instead of timm's: a shipped
            name (``synth-resnet10t``, the embedded default's) or a file written by
            ``python -m cml_bench pretrain``; None = timm's ImageNet weights.
        feature_level: index into the backbone's feature levels (timm ``feature_info``); -1 = last.
        stem_pool: keep the stem max-pool; False halves the stride of every later level, which keeps
            a spatial map at small input sizes (a 64 px input gives 8x8 at level 3 of a ResNet).
        head: ``pooled`` (global average pooling + linear), ``cos`` (pooling + normalised
            classifier with scale ``gamma``) or ``ssca`` (DLFL's semantic spatial cross-attention).
            Usually set by the strategy suffix (``prs+ssca``), not here.
        gamma: logit scale of the normalised classifiers (``cos`` and ``ssca``).
        ssca_modules: number S of cascaded SSCA modules.
        ssca_dim: embedding dimension of the SSCA projections; None = the backbone's channels.
        image_size: training input size, ``448`` or ``[H, W]``; batches are resized to it on the
            device where they enter the model. None = as stored. Backbones with a fixed input size
            (Swin, ViT: timm ``PatchEmbed``) are built for it (timm ``img_size``).
        backbone_options: extra keyword arguments for ``timm.create_model`` (e.g. ``window_size: 9``
            for Swin at 576 px, ``dynamic_img_size: true`` to accept other input sizes).
    """

    backbone: str = "resnet101"
    pretrained: bool = False
    weights_path: str | None = None
    weights: str | None = None
    feature_level: int = -1
    stem_pool: bool = True
    head: str = "pooled"
    gamma: float = 30.0
    ssca_modules: int = 1
    ssca_dim: int | None = None
    image_size: int | list[int] | None = None
    backbone_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(bool(self.backbone), "model.backbone", "a timm model name (e.g. resnet101)", self.backbone)
        require(self.gamma > 0, "model.gamma", "a number > 0", self.gamma)
        require(self.ssca_modules >= 1, "model.ssca_modules", "an integer >= 1", self.ssca_modules)
        require(self.ssca_dim is None or self.ssca_dim >= 1, "model.ssca_dim", "an integer >= 1 or null "
                "(null: the backbone's channels)", self.ssca_dim)
        image_hw(self.image_size, "model.image_size")


@dataclass
class TrainConfig:
    """Optimisation. The defaults are the online protocol of PROTOCOL.md (one pass, batches of 10).

    Attributes:
        optimizer: ``adam`` or ``sgd``.
        lr, weight_decay, momentum: optimiser settings (momentum only for SGD).
        batch_size: incoming samples per step (replay adds its own on top).
        epochs: passes over each task (1 in the online protocol).
        grad_clip_value: clip every gradient element to [-v, v]; None disables.
        num_workers: DataLoader workers (0 = main process; data is in memory or memory-mapped).
        head_lr: learning rate of the head's parameters; None = ``lr`` (one parameter group).
        scheduler: ``none`` or ``plateau`` (ReduceLROnPlateau on the mean training loss of each
            epoch, multiplying every group's lr by ``plateau_factor`` after ``plateau_patience``
            epochs without improvement; reset at the end of every task).
        augment: per-sample augmentation of training batches: ``none``, ``multiscale`` (generic
            multi-label: multi-scale crop + horizontal flip) or ``pedestrian`` (pad-and-crop, flip,
            Gaussian blur, random erasing); see ``cml_bench/augment.py``.
        precision: ``fp32`` or ``bf16`` (``torch.autocast`` with bfloat16 around every forward pass,
            training and evaluation; the loss, gradients and weights stay fp32). bf16 changes results.
        channels_last: keep the model's weights and its input batches in channels-last memory layout
            (faster convolutions on GPUs and oneDNN CPUs; the numbers can differ in the last bits).
    """

    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    momentum: float = 0.9
    batch_size: int = 10
    epochs: int = 1
    grad_clip_value: float | None = 5.0
    num_workers: int = 0
    head_lr: float | None = None
    scheduler: str = "none"
    plateau_factor: float = 0.1
    plateau_patience: int = 4
    augment: str = "none"
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        require(self.lr > 0, "train.lr", "a learning rate > 0", self.lr)
        require(self.head_lr is None or self.head_lr > 0, "train.head_lr", "a learning rate > 0 or null "
                "(null: train.lr)", self.head_lr)
        require(self.weight_decay >= 0, "train.weight_decay", "a number >= 0", self.weight_decay)
        require(self.momentum >= 0, "train.momentum", "a number >= 0", self.momentum)
        require(self.batch_size >= 1, "train.batch_size", "an integer >= 1", self.batch_size)
        require(self.epochs >= 1, "train.epochs", "an integer >= 1", self.epochs)
        require(self.grad_clip_value is None or self.grad_clip_value > 0, "train.grad_clip_value",
                "a number > 0, or null to disable clipping", self.grad_clip_value)
        require(self.num_workers >= 0, "train.num_workers", "an integer >= 0 (0: the main process)",
                self.num_workers)
        require(0 < self.plateau_factor < 1, "train.plateau_factor", "a number in (0, 1)", self.plateau_factor)
        require(self.plateau_patience >= 0, "train.plateau_patience", "an integer >= 0", self.plateau_patience)


@dataclass
class EvalConfig:
    """Evaluation: batch size, the score threshold of the precision/recall metrics, and the test
    input size (``image_size``, ``640`` or ``[H, W]``; None = the training size ``model.image_size``).

    Anytime evaluation (``cml_bench/recording.py``): every ``every`` training iterations (None = off)
    the model is scored on the union of the seen tasks' test sets, each cut to ``anytime_subset``
    images drawn once per task (None = the whole test set)."""

    batch_size: int = 100
    threshold: float = 0.5
    image_size: int | list[int] | None = None
    every: int | None = None
    anytime_subset: int | None = None

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "eval.batch_size", "an integer >= 1", self.batch_size)
        require(0 < self.threshold < 1, "eval.threshold", "a score threshold in (0, 1)", self.threshold)
        image_hw(self.image_size, "eval.image_size")


@dataclass
class ComponentConfig:
    """A named plugin with its own options, validated by the plugin itself."""

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """Everything one run needs; written next to its results as ``config.yaml``."""

    benchmark: ComponentConfig = field(default_factory=lambda: ComponentConfig("synth-cocoseq"))
    strategy: ComponentConfig = field(default_factory=lambda: ComponentConfig("finetune"))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        require(0 <= self.seed < 2**32, "seed", "an integer in 0 .. 2**32 - 1", self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(value: Any, annotation: Any, path: str) -> Any:
    """Validate (and gently coerce int -> float) one value against a type annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}.")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}.")
        return list(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}.")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}{_non_finite_hint(value)}.")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}.")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}.")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}.")
        return value
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, path)
    return value


def build_dataclass(cls: type[T], values: Mapping[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    >>> build_dataclass(EvalConfig, {"batch_size": 8}).batch_size
    8
    """
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"Unknown config key '{where}{unknown[0]}'. Valid keys here: {', '.join(sorted(fields))}."
        )
    kwargs = {}
    for name, value in values.items():
        sub = f"{path}.{name}" if path else name
        kwargs[name] = _check_type(value, hints[name], sub)
    return cls(**kwargs)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins. Mappings merge, everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# Python's float spellings (1e-3, 1E3, .5, 5., 1_000.5): YAML 1.1 reads an exponent without a dot
# or without a sign ("1e-3", "1.0e3") as a string, which every user would take for a number.
_FLOAT = re.compile(r"[-+]?(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][-+]?\d(?:_?\d)*)?$")


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads every finite float spelling Python accepts as a float.

    >>> yaml.load("lr: 1e-3", ConfigLoader)
    {'lr': 0.001}
    """


def _construct_number(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    # Only scalars YAML's own resolvers left as strings get here (its int resolver comes first: 12 stays an int).
    return float(loader.construct_scalar(node))


ConfigLoader.add_implicit_resolver("tag:cml_bench:number", _FLOAT, list("-+0123456789."))
ConfigLoader.add_constructor("tag:cml_bench:number", _construct_number)


def _non_finite_hint(value: Any) -> str:
    """Why a string that Python would read as inf / nan is still not a number here."""
    try:
        return "" if math.isfinite(float(value)) else " (infinite and NaN values are not accepted)"
    except (TypeError, ValueError):
        return ""


def parse_value(text: str, key: str) -> Any:
    """A ``--set KEY=VALUE`` value read as YAML (``0.01`` a float, ``[1, 2]`` a list, ``null`` None).

    >>> parse_value("1e-3", "train.lr")
    0.001
    """
    try:
        return yaml.load(text, ConfigLoader)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError(f"--set {key}={text}: the value is not valid YAML ({problem}); quote it for a string "
                          f"or write a list as [1, 2].") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping, with one-line errors for the usual mistakes."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"Config file '{path}' is a folder: pass a YAML file.")
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.")
    try:
        data = yaml.load(path.read_text(), ConfigLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"Config file '{path}' is not valid YAML{where}.") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"Config file '{path}' must hold a mapping of sections, got {type(data).__name__}.")
    return dict(data)


SHIPPED_CONFIGS = Path(__file__).parent / "configs"
"""The paper's settings shipped with the package (``--config NAME`` finds ``NAME.yaml`` here)."""


def shipped_configs() -> list[str]:
    """Names of the shipped configs, for ``--config NAME``."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """A config layer from a YAML file, or from a shipped config given by name (e.g. ``coco2014-resnet101-448``)."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return load_yaml(path)  # a path: a missing one is reported as a missing file
    shipped = SHIPPED_CONFIGS / f"{name_or_path}.yaml"
    if shipped.is_file():
        return load_yaml(shipped)
    raise ConfigError(f"Config '{name_or_path}' is neither a file nor a shipped config name; shipped configs: "
                      f"{', '.join(shipped_configs())}.")


def image_hw(size: int | list[int] | tuple[int, ...] | None, key: str) -> tuple[int, int] | None:
    """``448`` -> ``(448, 448)``, ``[256, 192]`` -> ``(256, 192)``, None -> None; else a ConfigError naming ``key``.

    >>> image_hw([256, 192], "model.image_size")
    (256, 192)
    """
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ConfigError(f"{key}: expected a positive integer or [height, width], got {size!r}.")
    return hw


def resolve(*layers: Mapping[str, Any]) -> RunConfig:
    """Merge config layers (lowest precedence first) and validate them into a :class:`RunConfig`."""
    merged: dict[str, Any] = RunConfig().to_dict()  # so a partial section keeps its other defaults
    for layer in layers:
        merged = merge(merged, layer)
    return build_dataclass(RunConfig, merged)


def dump_yaml(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
