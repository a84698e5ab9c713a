"""Seeds, optimiser and learning-rate schedule of the fit loop."""
from __future__ import annotations

import math
import random
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from lnzoo.config import as_config
from lnzoo.errors import UsageError


def set_deterministic(on: bool = True) -> None:
    """Deterministic kernels where torch has them (a warning where it has none), without NaN-filling every
    ``torch.empty``: that debugging aid took a fifth of a CPU training step and changes no result.

    ``torch.use_deterministic_algorithms`` also sets the compiler's flag, and importing the compiler for it
    took 3 s of every run's start; the compiler gets the flag when a model is compiled
    (:func:`deterministic_compile`)."""
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(on, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(on, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False


def deterministic_compile(module: nn.Module) -> nn.Module:
    """``torch.compile(module)`` under the deterministic setting :func:`set_deterministic` chose."""
    torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled(),
                                       warn_only=torch.is_deterministic_algorithms_warn_only_enabled())
    return torch.compile(module)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup to base_lr, cosine down to min_lr."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], steps_per_epoch: int):
    """A LambdaLR to be stepped once per optimizer step (not per epoch, not twice)."""
    cfg = as_config(cfg, "train")
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    base, floor = cfg.lr, cfg.min_lr
    if cfg.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    if base == 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total, base, floor) / base)


def make_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    from lnzoo.model import require_trainable

    require_trainable(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on biases and norms
    cfg = as_config(cfg, "train")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    name = cfg.optimizer
    cls, kwargs = {"sgd": (torch.optim.SGD, {"momentum": cfg.momentum, "nesterov": cfg.momentum > 0}),
                   "adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {})}[name]
    fused = cfg.get("fused", "auto")
    device = next(p.device for p in decay + no_decay)
    # fused: one kernel for all parameters instead of a loop (or foreach batches) of them, and a GradScaler
    # hands it the inf check on the device instead of reading it back every step. auto takes it on CUDA only,
    # so CPU runs keep their single-tensor arithmetic and with it their results
    if fused is True or (fused == "auto" and device.type == "cuda"):
        try:
            return cls(groups, lr=cfg.lr, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError) as exc:  # this torch has no fused kernel here
            if fused is True:
                raise UsageError(f"train.fused = true: torch {torch.__version__} has no fused {name} for parameters "
                                 f"on {device.type} ({exc}); set train.fused = \"auto\" or false") from None
    return cls(groups, lr=cfg.lr, **kwargs)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: numpy and random follow torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
