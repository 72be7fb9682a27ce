"""Avalanche's supervised template adapted to multi-label targets and the online protocol."""
from __future__ import annotations

import contextlib
import warnings
from typing import ContextManager, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cml_bench.augment import augment_batch, check_augment, resize_batch
from cml_bench.config import TrainConfig

with warnings.catch_warnings():  # Avalanche warns at import about optional QP solvers (GEM only)
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import EvaluationPlugin, LRSchedulerPlugin, SupervisedPlugin
    from avalanche.training.templates import SupervisedTemplate


def multilabel_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss: per-class sigmoid BCE averaged over classes and images.

    ``outputs`` is ``[N, M]`` logits or ``[S, N, M]`` per-module logits (SSCA); the per-module
    losses are summed (DLFL eq. 16). Equal to ``nn.MultiLabelSoftMarginLoss`` for ``[N, M]``.
    """
    if outputs.dim() == 2:
        return F.binary_cross_entropy_with_logits(outputs, targets)
    return sum(F.binary_cross_entropy_with_logits(o, targets) for o in outputs)


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict] | Iterable[torch.nn.Parameter]:
    """All parameters (one group at ``lr``), or with ``head_lr`` set: backbone at ``lr``, head at ``head_lr``."""
    if cfg.head_lr is None:
        return model.parameters()  # one group, exactly as before head_lr existed
    if not (hasattr(model, "backbone") and hasattr(model, "head")):
        raise ValueError("train.head_lr needs a model with a backbone and a head (cml_bench.models.MultiLabelNet).")
    return [{"params": list(model.backbone.parameters()), "lr": cfg.lr},
            {"params": list(model.head.parameters()), "lr": cfg.head_lr}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = parameter_groups(model, cfg)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"Unknown train.optimizer '{cfg.optimizer}'. Available: adam, sgd.")


SCHEDULERS = ("none", "plateau")
PRECISIONS = ("fp32", "bf16")


def check_precision(name: str) -> None:
    if name not in PRECISIONS:
        raise ValueError(f"Unknown train.precision '{name}'. Available: {', '.join(PRECISIONS)}.")


def autocast(device: torch.device | str, precision: str) -> ContextManager:
    """The context every forward pass runs in: nothing for ``fp32`` (results exactly as before the
    option existed), ``torch.autocast`` to bfloat16 on ``device``'s type for ``bf16``."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def model_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch in the memory layout of the model's weights (``train.channels_last``)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


class TrainLossScheduler(LRSchedulerPlugin):
    """Avalanche's scheduler plugin, without its per-step warning about reading the loss as a float."""

    def after_training_iteration(self, strategy, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            super().after_training_iteration(strategy, **kwargs)


def make_scheduler_plugins(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> list[SupervisedPlugin]:
    """``plateau``: ReduceLROnPlateau stepped after every epoch on that epoch's mean training loss
    (over every sample the step saw, replayed ones included); lr and schedule reset after each task."""
    if cfg.scheduler == "none":
        return []
    if cfg.scheduler == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
        return [TrainLossScheduler(scheduler, metric="train_loss", step_granularity="epoch")]
    raise ValueError(f"Unknown train.scheduler '{cfg.scheduler}'. Available: {', '.join(SCHEDULERS)}.")


class MultiLabelTemplate(SupervisedTemplate):
    """Avalanche's ``SupervisedTemplate`` with multi-label loss, seeded data order and clipping.

    * ``forward`` returns per-module logits ``[S, N, M]`` so the loss sums over SSCA modules;
      plugins that call the model directly (EWC's Fisher pass) get the final ``[N, M]`` logits.
    * The training data order comes from a generator seeded by the run's seed.
    * ``grad_clip_value`` clips gradient values before every optimiser step (PRS protocol).
    * Batches enter the model at ``image_size`` (``model.image_size``; None = as stored), training
      batches augmented per sample by ``cfg.augment`` with draws from the data-order generator.
    * ``cfg.scheduler`` adds Avalanche's ``LRSchedulerPlugin`` (see ``make_scheduler_plugins``).
    * ``cfg.precision`` / ``cfg.channels_last``: forward passes under bf16 autocast (logits returned
      as fp32, so the loss is fp32) / weights and batches in channels-last layout.
    * Training batches come from pinned memory on CUDA, so their copies to the device overlap compute.
    * Avalanche's own metrics assume integer labels, so its evaluator runs with no metrics; the
      platform's evaluator (``cml_bench.evaluator``) does the multi-label evaluation.
    """

    def __init__(self, *, model: torch.nn.Module, cfg: TrainConfig, device: torch.device | str,
                 plugins: Sequence[SupervisedPlugin] = (), seed: int = 0,
                 image_size: tuple[int, int] | None = None):
        check_augment(cfg.augment)
        check_precision(cfg.precision)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, cfg)
        with warnings.catch_warnings():  # "no loggers": on purpose, see the class docstring
            warnings.simplefilter("ignore")
            evaluator = EvaluationPlugin(loggers=[])
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=multilabel_loss,
            train_mb_size=cfg.batch_size,
            train_epochs=cfg.epochs,
            eval_mb_size=cfg.batch_size,
            device=device,
            plugins=list(plugins) + make_scheduler_plugins(optimizer, cfg),
            evaluator=evaluator,
            eval_every=-1,
        )
        self.grad_clip_value = cfg.grad_clip_value
        self.num_workers = cfg.num_workers
        self.data_generator = torch.Generator().manual_seed(seed)
        self.image_size = image_size
        self.augment = cfg.augment
        self.precision, self.channels_last = cfg.precision, cfg.channels_last

    def forward(self):
        x = self.mb_x
        if self.is_training and self.augment != "none":
            x = augment_batch(x, self.augment, self.image_size, self.data_generator)
        else:
            x = resize_batch(x, self.image_size)
        self.mb_input = x  # the batch as it entered the model: what a teacher must see (distillation)
        with autocast(self.device, self.precision):
            out = self.model.forward_modules(model_input(x, self.channels_last))
        return out.float()  # a no-op in fp32

    def make_train_dataloader(self, shuffle: bool = True, **kwargs):
        self.dataloader = DataLoader(
            self.adapted_dataset,
            batch_size=self.train_mb_size,
            shuffle=shuffle,
            generator=self.data_generator,
            num_workers=self.num_workers,
            collate_fn=getattr(self.adapted_dataset, "collate_fn", None),
            pin_memory=self.device.type == "cuda",  # Avalanche copies batches with non_blocking=True
        )

    def optimizer_step(self):
        if self.grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.grad_clip_value)
        super().optimizer_step()
