"""The previous task's model as a frozen teacher, for the label-absence baselines (pseudo-labelling, LwF).

After each training task the plugin keeps a frozen copy of the model (eval mode, no gradients). In
the next task a subclass reads the teacher's logits on the batch exactly as it entered the student
(``strategy.mb_input``: resized and augmented, replayed rows included) for the *old* classes: those
of the tasks before the current one (``BenchmarkMeta.task_classes``). The teacher is part of the
plugin's state, so a resumed run continues with the same one.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from cml_bench.stream import BenchmarkMeta

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from avalanche.training.plugins import SupervisedPlugin


class TeacherPlugin(SupervisedPlugin):
    """Keeps the model of the previous task; subclasses use :meth:`old_logits` in their hooks."""

    def __init__(self, meta: BenchmarkMeta):
        super().__init__()
        self.meta = meta
        self.teacher: torch.nn.Module | None = None
        self._restored: dict[str, Any] | None = None  # teacher weights from a checkpoint, loaded lazily

    def old_classes(self, strategy) -> list[int]:
        """Class columns of the tasks before the current one (empty in the first task)."""
        task = strategy.experience.current_experience
        return sorted(c for cols in self.meta.task_classes[:task] for c in cols)

    @torch.no_grad()
    def old_logits(self, strategy) -> tuple[torch.Tensor, list[int]] | None:
        """The teacher's final logits ``[N, len(old)]`` on the current batch and the old classes,
        or None when there is no teacher or no old class yet."""
        old = self.old_classes(strategy)
        if self.teacher is None or not old:
            return None
        return self.teacher(strategy.mb_input)[:, old], old

    def before_training_exp(self, strategy, **kwargs):
        if self._restored is not None:  # resumed: rebuild the teacher on the model's architecture
            self.teacher = self._freeze(strategy.model)
            self.teacher.load_state_dict(self._restored)
            self._restored = None

    def after_training_exp(self, strategy, **kwargs):
        self.teacher = self._freeze(strategy.model)

    @staticmethod
    def _freeze(model: torch.nn.Module) -> torch.nn.Module:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def state_dict(self) -> dict[str, Any]:
        weights = self.teacher.state_dict() if self.teacher is not None else self._restored
        return {"teacher": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher, self._restored = None, state["teacher"]
