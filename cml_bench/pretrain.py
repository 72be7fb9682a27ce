"""``python -m cml_bench pretrain``: the embedded default's backbone, pretrained on ``synth-pretrain``.

The paper's continual runs start from an ImageNet-pretrained backbone; the embedded default starts
from these weights, learnt the same way (supervised multi-label classification with a pooled
linear head, the head then thrown away) on the sprite world's "ImageNet": ``benchmarks/synth_pretrain.py``,
whose sprites are disjoint from every ``synth-cocoseq`` sprite.

Deterministic: the source is drawn from its seed, the model initialised and the data ordered from
``seed``, and training runs on ``threads`` CPU threads (recorded; bit-identical weights need the
same thread count, torch build and CPU kind). The weights are written as fp16 safetensors with a
record beside them (``NAME.json``: the resolved config, the sha256 of the file, validation mAP,
wall time, versions); the shipped ``cml_bench/weights/synth-resnet10t.safetensors`` is the output
of the command in its record.
"""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from cml_bench.config import ModelConfig, TrainConfig, build_dataclass, merge
from cml_bench.evaluator import predict
from cml_bench.metrics import average_precision
from cml_bench.models import build_model
from cml_bench.models.backbone import save_backbone_weights
from cml_bench.stream import MultiLabelTensorDataset
from cml_bench.training import make_optimizer, multilabel_loss


def _default_model() -> ModelConfig:
    # the synth-cocoseq default's backbone (tests check the two agree)
    return ModelConfig(backbone="resnet10t", feature_level=3, stem_pool=False, head="cos")


@dataclass
class PretrainConfig:
    """Pretraining settings (``--set KEY=VALUE`` overrides any of them).

    Attributes:
        source: options of ``benchmarks.synth_pretrain.SynthPretrainOptions`` (classes, images, size).
        model: the backbone to pretrain, with the head trained with it and then discarded: ``cos``
            (pooled features, normalised classifier), so that the pooled features, which every head
            of the benchmark starts from, separate sprites (a plain pooled head from scratch stayed
            at chance for a whole epoch on 400 classes; ``cos`` reaches 97 validation mAP in 3).
        epochs, batch_size: passes over the source's training split, images per step.
        lr, weight_decay: Adam; the learning rate warms up linearly over ``warmup_steps`` steps,
            then follows a cosine decay to zero at the last step.
        grad_clip_value: clip every gradient element to [-v, v] (as the benchmark's runs do).
        seed: model initialisation and data order.
        threads: torch CPU threads (part of what makes the weights bit-reproducible).
    """

    source: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=_default_model)
    epochs: int = 3
    batch_size: int = 50
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 200
    grad_clip_value: float | None = 5.0
    seed: int = 0
    threads: int = 1


def resolve_pretrain(*layers: Mapping[str, Any]) -> PretrainConfig:
    """Validated config from override layers; ``source`` fully resolved against its options."""
    from benchmarks.synth_pretrain import SynthPretrainOptions

    merged: dict[str, Any] = dataclasses.asdict(PretrainConfig())
    for layer in layers:
        merged = merge(merged, layer)
    config = build_dataclass(PretrainConfig, merged)
    if config.model.pretrained:
        raise ValueError("pretrain trains from scratch: leave model.pretrained false.")
    config.source = dataclasses.asdict(build_dataclass(SynthPretrainOptions, config.source, "source"))
    return config


@dataclass
class PretrainResult:
    path: Path
    sha256: str
    record: dict[str, Any]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def pretrain(config: PretrainConfig, out: str | Path, log: Callable[[str], None] = print,
             command: str | None = None) -> PretrainResult:
    """Train ``config.model`` on the pretraining source; write ``out`` (safetensors) and ``out``'s ``.json`` record."""
    from benchmarks.synth_pretrain import SynthPretrainOptions, generate

    start = time.perf_counter()
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"pretrain --out must end in .safetensors, got '{out}'.")
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        source = SynthPretrainOptions(**config.source)
        arrays = generate(source)
        train = MultiLabelTensorDataset(arrays["train_x"], arrays["train_y"])
        val = MultiLabelTensorDataset(arrays["val_x"], arrays["val_y"])
        log(f"pretrain {config.model.backbone} on synth-pretrain: {source.num_classes} classes, "
            f"{len(train)} training / {len(val)} validation images at {source.image_size} px "
            f"({time.perf_counter() - start:.0f} s to draw), {config.epochs} epochs, {config.threads} thread(s)")
        torch.manual_seed(config.seed)
        model = build_model(config.model, source.num_classes)
        optimizer = make_optimizer(model, TrainConfig(optimizer="adam", lr=config.lr, weight_decay=config.weight_decay))
        steps_per_epoch = math.ceil(len(train) / config.batch_size)
        total = steps_per_epoch * config.epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, config.warmup_steps))
        images = torch.as_tensor(arrays["train_x"])
        targets = train.multi_hot
        generator = torch.Generator().manual_seed(config.seed)
        history = []
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(train), generator=generator)
            losses = []
            for begin in range(0, len(order), config.batch_size):
                rows = order[begin:begin + config.batch_size]
                loss = multilabel_loss(model.forward_modules(images[rows]), targets[rows])
                optimizer.zero_grad()
                loss.backward()
                if config.grad_clip_value is not None:
                    torch.nn.utils.clip_grad_value_(model.parameters(), config.grad_clip_value)
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
            scores, truth = predict(model, val, 250, "cpu", desc="validate")
            val_map = float(np.nanmean(average_precision(scores, truth)))
            history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 5),
                            "val_mAP": round(val_map, 2), "elapsed_s": round(time.perf_counter() - start, 1)})
            log(f"  epoch {epoch}: training loss {history[-1]['train_loss']:.4f}, validation mAP {val_map:.1f} "
                f"({history[-1]['elapsed_s']:.0f} s)")
        resolved = dataclasses.asdict(config)
        meta = {"backbone": config.model.backbone, "feature_level": model.backbone.feature_level,
                "pretrain_config": resolved}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        sha = save_backbone_weights(model.backbone.body, tmp, meta)
        tmp.replace(out)
        record = {
            "name": out.stem,
            "file": out.name,
            "sha256": sha,
            "bytes": out.stat().st_size,
            "command": command,
            "config": resolved,
            "history": history,
            "val_mAP": history[-1]["val_mAP"] if history else None,
            "wall_time_s": round(time.perf_counter() - start, 1),
            "threads": config.threads,
            "torch": torch.__version__,
            "platform": platform.platform(),
            "machine": platform.machine(),
        }
        out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    finally:
        torch.set_num_threads(threads)
    log(f"wrote {out} (sha256 {sha[:16]}..., {record['bytes'] / 1e6:.1f} MB) and {out.with_suffix('.json').name}")
    return PretrainResult(out, sha, record)
