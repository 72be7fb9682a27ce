"""A timm model as a feature-map backbone, taking uint8 or float images."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be loaded; the message says how to provide them."""


class FeatureBackbone(nn.Module):
    """``timm.create_model(name, features_only=True)`` reduced to one feature level.

    Input: images ``[N, 3, H, W]``, uint8 in 0..255 or float already in 0..1. The backbone
    normalises them with its pretrained mean/std, so data pipelines and replay memories can keep
    uint8. Output: the feature map ``[N, C, H', W']`` of level ``feature_level``.

    Token-shaped outputs (channels-last ``[N, H', W', C]`` maps of Swin-style models) are permuted to
    ``[N, C, H', W']`` so every head sees the same layout.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        feature_level: int = -1,
        stem_pool: bool = True,
        weights_path: str | None = None,
    ):
        super().__init__()
        import timm

        probe = timm.create_model(name, pretrained=False, features_only=True)
        levels = len(probe.feature_info)
        level = feature_level % levels if -levels <= feature_level < levels else None
        if level is None:
            raise ValueError(
                f"feature_level {feature_level} is out of range for '{name}', which has {levels} "
                f"levels (reductions {probe.feature_info.reduction()}); use 0..{levels - 1} or -1."
            )
        kwargs = {}
        if pretrained and weights_path:
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
        self.channels = self.body.feature_info.channels()[-1]
        self.reduction = self.body.feature_info.reduction()[-1] // (1 if stem_pool else 2)
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._channels_last = "swin" in name or getattr(self.body, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        x = (x - self.mean) / self.std
        fmap = self.body(x)[-1]
        if self._channels_last:
            fmap = fmap.permute(0, 3, 1, 2)
        return fmap
