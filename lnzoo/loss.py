"""The weighted multi-task loss ``L = sum_t w_t * L_t`` with per-sample masking of missing labels."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lnzoo.contracts import head_loss
from lnzoo.errors import UsageError
from lnzoo.tasks import MISSING, Task


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n_samples / (n_classes * count) over the labelled samples; absent classes get weight 0."""
    labels = np.asarray(labels)
    labels = labels[labels != MISSING]
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


class MultiTaskLoss(nn.Module):
    """Combine each task's loss with its weight from ``task_weights``.

    ``forward(outputs, targets, heads=None)`` takes per-task outputs and targets (``-1`` = no label),
    and returns ``(total, parts)`` where ``parts[t] = w_t * L_t`` (detached tensors) for logging. A task
    whose batch has no labelled sample contributes an exact zero that still backpropagates.
    """

    def __init__(self, tasks: Mapping[str, Task], task_weights: Mapping[str, float],
                 class_weights: Mapping[str, np.ndarray | None] | None = None):
        super().__init__()
        unknown = set(task_weights) - set(tasks)
        if unknown:
            raise UsageError(f"task_weights name tasks that are not in the model: {sorted(unknown)}")
        self.tasks = dict(tasks)
        self.task_weights = {t: float(task_weights.get(t, 1.0)) for t in tasks}
        for name, w in self.task_weights.items():
            if w < 0:
                raise UsageError(f"task weight of {name!r} must be >= 0, got {w}")
        for name, task in self.tasks.items():
            cw = (class_weights or {}).get(name)
            tensor = torch.as_tensor(np.asarray(cw), dtype=torch.float32) if cw is not None else None
            if tensor is not None and tensor.shape != (task.num_classes,):
                raise UsageError(f"class weights of {name!r} must have {task.num_classes} entries")
            self.register_buffer(f"cw_{name}", tensor, persistent=False)

    def class_weight(self, task: str) -> torch.Tensor | None:
        return getattr(self, f"cw_{task}")

    def task_loss(self, task: str, output: torch.Tensor, target: torch.Tensor, head: nn.Module | None = None,
                  world: int = 1, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Loss of one task over the labelled samples only (exact zero with a graph when none are). With
        ``world`` > 1 processes (DDP, which averages their gradients; ``reduce`` sums over them) each divides by
        the mean labelled weight
        over all of them, so the update is the global batch's labelled-rows mean however labels fall."""
        labelled = target != MISSING
        weight, smoothing = self.class_weight(task), self.tasks[task].label_smoothing
        if callable(getattr(head, "task_loss", None)):  # a head's own loss sees its labelled rows only
            if not bool(labelled.any()):
                return output.sum() * 0.0
            return head_loss(head, output[labelled], target[labelled], weight=weight, label_smoothing=smoothing)
        # cross-entropy's weighted mean over the labelled rows, without reading the mask back to the host:
        # boolean indexing and .any() each wait for the GPU, every step
        safe = target.clamp_min(0)
        per = F.cross_entropy(output.float(), safe, weight=weight, label_smoothing=smoothing, reduction="none")
        share = (labelled.to(per.dtype) if weight is None else weight[safe] * labelled).sum()
        if world > 1:  # ``reduce`` (the trainer's: a sum over the processes) keeps DDP out of the loss
            if reduce is None:
                raise ValueError("a loss over several processes needs their reduce (a global sum)")
            share = reduce(share) / world
        total = torch.where(labelled, per, 0.0).sum()
        # no labelled weight at all (no label, or only a class weighted 0): an exact zero, never 0/0 or x/1e-12
        return torch.where(share > 0, total / share.clamp_min(1e-12), total * 0.0)

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                heads: Mapping[str, nn.Module] | None = None, world: int = 1,
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total, parts): ``parts`` are detached 0-d tensors, read back only by a caller that logs them."""
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for name, weight in self.task_weights.items():
            loss = self.task_loss(name, outputs[name], targets[name], (heads or {}).get(name), world, reduce) * weight
            parts[name] = loss.detach()
            total = loss if total is None else total + loss
        assert total is not None, "a model has at least one task"
        return total, parts
