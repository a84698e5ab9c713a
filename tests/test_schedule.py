"""The LR schedule: warmup then cosine to min_lr, stepped once per optimizer step (the seed stepped twice)."""
from __future__ import annotations

import math

import pytest
import torch

from lnzoo.train import make_scheduler, warmup_cosine


def _curve(epochs=4, steps=10, warmup=1.0, lr=0.1, min_lr=0.001):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    cfg = {"epochs": epochs, "warmup_epochs": warmup, "lr": lr, "min_lr": min_lr, "scheduler": "cosine"}
    sched = make_scheduler(opt, cfg, steps)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_rises_linearly_to_the_base_lr_then_cosine_falls_to_the_floor():
    lrs = _curve()
    assert lrs[0] == pytest.approx(0.1 / 10)           # first step of a 10-step warmup
    assert lrs[9] == pytest.approx(0.1)                 # peak = base LR, never above
    assert max(lrs) == pytest.approx(0.1)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[9:], lrs[10:]))  # monotone after warmup
    assert lrs[-1] == pytest.approx(0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi * 29 / 30)))
    assert min(lrs[10:]) >= 0.001 - 1e-12               # floor respected, and below base


def test_curve_matches_the_closed_form_at_every_step():
    lrs = _curve(epochs=3, steps=7, warmup=0.5, lr=0.05, min_lr=0.0)
    warm = int(round(0.5 * 7))
    assert lrs == pytest.approx([warmup_cosine(s, warm, 21, 0.05, 0.0) for s in range(21)])
