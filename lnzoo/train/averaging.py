"""Weight averages of the model being trained: the EMA kept for evaluation, and the mean teacher."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lnzoo.config import as_config
from lnzoo.contracts import head_loss
from lnzoo.data.samples import MISSING


def ema_of(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``; it averages BatchNorm buffers too (``use_buffers``),
    which the seed's EMA forgot."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class MeanTeacher:
    """Consistency on images without a main-task label: an EMA teacher, shown a flipped view of the image,
    gives a pseudo-label when confident enough; the student learns it, ramped up over the first epochs."""

    def __init__(self, model: nn.Module, cfg: dict, main: str):
        cfg = as_config(cfg, "train.mean_teacher")
        self.teacher, self.cfg, self.main = ema_of(model, cfg.ema), cfg, main

    def ramp(self, epoch: int, step: int, steps: int) -> float:
        if self.cfg.rampup_epochs <= 0:
            return 1.0
        progress = min(1.0, (epoch + step / max(steps, 1)) / self.cfg.rampup_epochs)
        return math.exp(-5.0 * (1.0 - progress) ** 2)

    def loss(self, model, x, present, inputs, student_out, main_y) -> torch.Tensor:
        unlabelled = main_y == MISSING
        if not bool(unlabelled.any()):
            return student_out.sum() * 0.0
        self.teacher.eval()
        with torch.no_grad():
            t_out = self.teacher.module(x[unlabelled].flip(-1), present[unlabelled],
                                        {k: v[unlabelled] for k, v in (inputs or {}).items()})[self.main]
            t_prob = self.teacher.module.probabilities({self.main: t_out.float()})[self.main]
        conf, pseudo = t_prob.max(1)
        confident = conf >= self.cfg.threshold
        if not bool(confident.any()):
            return student_out.sum() * 0.0
        return head_loss(model.heads[self.main], student_out[unlabelled][confident].float(), pseudo[confident])

    def update(self, model: nn.Module) -> None:
        self.teacher.update_parameters(model)

