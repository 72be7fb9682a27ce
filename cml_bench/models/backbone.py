"""A timm model as a feature-map backbone, taking uint8 or float images."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _patch_embed(model: nn.Module) -> nn.Module | None:
    """The timm ``PatchEmbed`` of a Swin/ViT-style model (it holds ``img_size``), None for CNNs."""
    from timm.layers import PatchEmbed

    return next((m for m in model.modules() if isinstance(m, PatchEmbed)), None)


def check_backbone_name(name: str) -> None:
    """A one-line ValueError naming the nearest timm models when ``name`` is not one."""
    import difflib

    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    family = re.match(r"[A-Za-z]*", name).group() or name
    raise ValueError(f"model.backbone: '{name}' is not a timm model.{hint} `python -c \"import timm; "
                     f"print(timm.list_models('{family}*'))\"` lists the names.")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be loaded; the message says how to provide them."""


SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
"""Backbone weights shipped with the package (``model.weights: NAME`` finds ``NAME.safetensors`` here,
with its record ``NAME.json``: the command, resolved config and sha256 that produced it)."""
WEIGHTS_FORMAT = "cml_bench-backbone/1"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_weights() -> list[str]:
    return sorted(p.stem for p in SHIPPED_WEIGHTS.glob("*.safetensors"))


def resolve_weights(name_or_path: str) -> Path:
    """``model.weights``: a shipped name (``synth-resnet10t``) or a file written by ``cml_bench pretrain``."""
    shipped = SHIPPED_WEIGHTS / f"{name_or_path}.safetensors"
    if shipped.is_file():
        return shipped
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise PretrainedWeightsError(
        f"model.weights '{name_or_path}' is neither a shipped name ({', '.join(shipped_weights()) or 'none'}) "
        f"nor a file; write one with `python -m cml_bench pretrain --out FILE`, or set model.pretrained: false.")


def save_backbone_weights(body: nn.Module, path: str | Path, meta: dict[str, Any]) -> str:
    """Write a backbone body's weights as fp16 safetensors (no code on load) and return the file's sha256.

    Floating tensors are stored in fp16 (half the size; loaded back into fp32), others as they are.
    ``meta`` (backbone, feature_level, the producing config) goes into the file's metadata as JSON.
    """
    from safetensors.torch import save_file

    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in body.state_dict().items()}
    # one metadata entry: safetensors writes a metadata map in arbitrary order, so several entries
    # would make the file's bytes (and its recorded sha256) vary from one save to the next
    save_file(state, str(path), metadata={"cml_bench": json.dumps({"format": WEIGHTS_FORMAT, **meta}, sort_keys=True)})
    return file_sha256(path)


def load_backbone_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The fp32 state dict and metadata of a file written by :func:`save_backbone_weights`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("cml_bench", "{}"))
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file: one line for the user
        raise PretrainedWeightsError(f"model.weights file '{path}' is not a readable cml_bench weights file "
                                     f"({type(err).__name__}); write it again with `python -m cml_bench pretrain`.") from None
    if meta.get("format") != WEIGHTS_FORMAT:
        raise PretrainedWeightsError(f"model.weights file '{path}' was not written by `cml_bench pretrain` "
                                     f"(format {meta.get('format')!r}, expected {WEIGHTS_FORMAT!r}).")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}, meta


class FeatureBackbone(nn.Module):
    """``timm.create_model(name, features_only=True)`` reduced to one feature level.

    Input: images ``[N, 3, H, W]``, uint8 in 0..255 or float already in 0..1. The backbone
    normalises them with its pretrained mean/std, so data pipelines and replay memories can keep
    uint8. Output: the feature map ``[N, C, H', W']`` of level ``feature_level``.

    Token-shaped outputs (channels-last ``[N, H', W', C]`` maps of Swin-style models) are permuted to
    ``[N, C, H', W']`` so every head sees the same layout.

    ``image_size`` (``(H, W)``) is passed to timm as ``img_size`` for models with a fixed input size
    (a timm ``PatchEmbed``: Swin, ViT); CNNs take any size and ignore it. ``options`` are further
    ``timm.create_model`` keyword arguments (``window_size``, ``dynamic_img_size``, ...). A
    fixed-size model refuses other input sizes with a one-line error (see ``check_input_size``).

    Pretrained weights (``pretrained``): timm's own (ImageNet, from the hub or ``weights_path``), or,
    with ``weights`` (a shipped name or a file of ``cml_bench pretrain``), backbone weights of this
    platform, which must be for the same backbone and feature level. ``weights_info`` says which
    were loaded (name and sha256; None from scratch), for the run's manifest.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        feature_level: int = -1,
        stem_pool: bool = True,
        weights_path: str | None = None,
        image_size: tuple[int, int] | None = None,
        options: dict[str, Any] | None = None,
        weights: str | None = None,
    ):
        super().__init__()
        import timm

        self.name = name
        kwargs = dict(options or {})
        check_backbone_name(name)
        try:
            # Built in full only to read what the body will be (its feature levels, a PatchEmbed). A
            # second build costs a fraction of a second, and its random draws come before the body's
            # as they always have, so a seeded run's initial weights stay what they were.
            probe = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
        except TypeError as err:  # an option the model's constructor does not take
            raise ValueError(f"model.backbone_options {sorted(kwargs)}: timm's '{name}' refuses them ({err}); "
                             f"remove the option or pick a backbone that takes it.") from None
        except RuntimeError as err:  # e.g. "feature_info not supported" for a classifier-only model
            raise ValueError(f"model.backbone '{name}' cannot serve as a feature-map backbone (timm: {err}).") \
                from None
        if image_size is not None and _patch_embed(probe) is not None:
            kwargs["img_size"] = tuple(image_size)
        levels = len(probe.feature_info)
        level = feature_level % levels if -levels <= feature_level < levels else None
        if level is None:
            raise ValueError(
                f"feature_level {feature_level} is out of range for '{name}', which has {levels} "
                f"levels (reductions {probe.feature_info.reduction()}); use 0..{levels - 1} or -1."
            )
        own = None
        if pretrained and weights:
            if weights_path:
                raise ValueError("model.weights and model.weights_path both set: weights_path is for timm's "
                                 "ImageNet weights, weights for `cml_bench pretrain` weights; set one.")
            path = resolve_weights(weights)
            own = (path, *load_backbone_weights(path))
            pretrained = False  # timm builds the body from scratch; the state is loaded below
        elif pretrained and weights_path:
            if not Path(weights_path).is_file():
                raise PretrainedWeightsError(f"model.weights_path '{weights_path}' does not exist.")
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights_path)}
        try:
            self.body = timm.create_model(
                name, pretrained=pretrained, features_only=True, out_indices=(level,), **kwargs
            )
        except Exception as err:  # noqa: BLE001 - hub, network and file errors all mean the same here
            if not pretrained:
                raise
            raise PretrainedWeightsError(
                f"Could not load pretrained weights for '{name}' ({type(err).__name__}). Without network "
                f"access, download them elsewhere and set model.weights_path to the file, or fill the "
                f"Hugging Face cache and set HF_HUB_OFFLINE=1; or set model.pretrained: false."
            ) from None
        if not stem_pool:
            if not hasattr(self.body, "maxpool"):
                raise ValueError(f"stem_pool: false needs a backbone with a stem max-pool; '{name}' has none.")
            self.body.maxpool = nn.Identity()
        self.feature_level = level
        self.weights_info: dict[str, Any] | None = None
        if own is not None:
            path, state, meta = own
            for key, want in (("backbone", name), ("feature_level", level)):
                if meta.get(key) != want:
                    raise PretrainedWeightsError(
                        f"model.weights '{weights}' holds {meta.get('backbone')} feature level "
                        f"{meta.get('feature_level')}, but the model is {name} feature level {level}: set "
                        f"model.weights: null (timm's own weights) or model.pretrained: false.")
            missing, unexpected = self.body.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise PretrainedWeightsError(f"model.weights '{weights}' does not fit {name} (missing "
                                             f"{missing[:3]}, unexpected {unexpected[:3]}).")
            self.weights_info = {"name": weights, "file": path.name, "sha256": file_sha256(path)}
        elif pretrained:
            self.weights_info = {"name": f"timm:{name}", "file": Path(weights_path).name if weights_path else None,
                                 "sha256": file_sha256(weights_path) if weights_path else None}
        self.channels = self.body.feature_info.channels()[-1]
        self.reduction = self.body.feature_info.reduction()[-1] // (1 if stem_pool else 2)
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._channels_last = "swin" in name or getattr(self.body, "output_fmt", "NCHW") == "NHWC"
        embed = _patch_embed(self.body)
        # The input size a fixed-size model was built for (its position embeddings / window masks);
        # None where any size works (CNNs, and timm's dynamic_img_size models).
        self.fixed_input_size: tuple[int, int] | None = (
            tuple(embed.img_size) if embed is not None and embed.strict_img_size and embed.img_size else None)

    def check_input_size(self, size: tuple[int, int]) -> None:
        """Raise a one-line ValueError if this backbone cannot take ``[H, W] = size`` inputs."""
        fixed = self.fixed_input_size
        if fixed is not None and tuple(size) != fixed:
            raise ValueError(
                f"Backbone '{self.name}' was built for {fixed[0]}x{fixed[1]} inputs (model.image_size) and "
                f"got {size[0]}x{size[1]}: use the training size (eval.image_size: null), or build it with "
                f"model.backbone_options.dynamic_img_size: true (timm then pads Swin windows / interpolates "
                f"ViT position embeddings for other sizes).")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.fixed_input_size is not None:
            self.check_input_size(x.shape[-2:])
        x = (x - self.mean) / self.std
        fmap = self.body(x)[-1]
        if self._channels_last:
            fmap = fmap.permute(0, 3, 1, 2)
        return fmap
