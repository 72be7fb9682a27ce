"""Avalanche's supervised template adapted to multi-label targets and the online protocol."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cml_bench.config import TrainConfig

with warnings.catch_warnings():  # Avalanche warns at import about optional QP solvers (GEM only)
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
    from avalanche.training.templates import SupervisedTemplate


def multilabel_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss: per-class sigmoid BCE averaged over classes and images.

    ``outputs`` is ``[N, M]`` logits or ``[S, N, M]`` per-module logits (SSCA); the per-module
    losses are summed (DLFL eq. 16). Equal to ``nn.MultiLabelSoftMarginLoss`` for ``[N, M]``.
    """
    if outputs.dim() == 2:
        return F.binary_cross_entropy_with_logits(outputs, targets)
    return sum(F.binary_cross_entropy_with_logits(o, targets) for o in outputs)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"Unknown train.optimizer '{cfg.optimizer}'. Available: adam, sgd.")


class MultiLabelTemplate(SupervisedTemplate):
    """Avalanche's ``SupervisedTemplate`` with multi-label loss, seeded data order and clipping.

    * ``forward`` returns per-module logits ``[S, N, M]`` so the loss sums over SSCA modules;
      plugins that call the model directly (EWC's Fisher pass) get the final ``[N, M]`` logits.
    * The training data order comes from a generator seeded by the run's seed.
    * ``grad_clip_value`` clips gradient values before every optimiser step (PRS protocol).
    * Avalanche's own metrics assume integer labels, so its evaluator runs with no metrics; the
      platform's evaluator (``cml_bench.evaluator``) does the multi-label evaluation.
    """

    def __init__(self, *, model: torch.nn.Module, cfg: TrainConfig, device: torch.device | str,
                 plugins: Sequence[SupervisedPlugin] = (), seed: int = 0):
        with warnings.catch_warnings():  # "no loggers": on purpose, see the class docstring
            warnings.simplefilter("ignore")
            evaluator = EvaluationPlugin(loggers=[])
        super().__init__(
            model=model,
            optimizer=make_optimizer(model, cfg),
            criterion=multilabel_loss,
            train_mb_size=cfg.batch_size,
            train_epochs=cfg.epochs,
            eval_mb_size=cfg.batch_size,
            device=device,
            plugins=list(plugins),
            evaluator=evaluator,
            eval_every=-1,
        )
        self.grad_clip_value = cfg.grad_clip_value
        self.num_workers = cfg.num_workers
        self.data_generator = torch.Generator().manual_seed(seed)

    def forward(self):
        return self.model.forward_modules(self.mb_x)

    def make_train_dataloader(self, shuffle: bool = True, **kwargs):
        self.dataloader = DataLoader(
            self.adapted_dataset,
            batch_size=self.train_mb_size,
            shuffle=shuffle,
            generator=self.data_generator,
            num_workers=self.num_workers,
            collate_fn=getattr(self.adapted_dataset, "collate_fn", None),
        )

    def optimizer_step(self):
        if self.grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.grad_clip_value)
        super().optimizer_step()
