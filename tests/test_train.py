"""Training-loop behaviour users rely on: EMA incl. BatchNorm buffers, oversampling vs class weights."""
from __future__ import annotations

import numpy as np
import torch

from lnzoo.data.samples import Sample
from lnzoo.train import Trainer
from lnzoo.plugins import load_plugins
from lnzoo.recipe import load_recipe
from tests.conftest import REPO

HOST = load_plugins()


def _trainer(sets):
    recipe = load_recipe(REPO / "recipes" / "stage1_aux.toml", host=HOST, sets=sets)
    tasks = {n: HOST.get("task", n).build() for n in recipe.tasks}
    return Trainer(recipe, HOST, tasks, cache=None)


class _DS:
    def __init__(self, labels):
        self._labels = {"malignancy": np.array(labels), "enlargement": np.array([-1] * len(labels))}

    def labels(self, task):
        return self._labels[task]


def test_oversampling_replaces_class_weights_for_the_main_task_never_both():
    ds = _DS([0, 0, 0, 1])
    weighted = _trainer(["data.sampling='class_weights'"]).class_weights(ds)
    assert weighted["malignancy"] is not None and weighted["malignancy"][1] > weighted["malignancy"][0]
    over = _trainer(["data.sampling='oversample'"]).class_weights(ds)
    assert over["malignancy"] is None
    assert _trainer(["data.sampling='none'"]).class_weights(ds)["malignancy"] is None


def test_ema_tracks_batchnorm_statistics():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)
    model.train()
    for _ in range(5):
        model(torch.randn(8, 1, 4, 4) * 3 + 10)
        ema.update_parameters(model)
    # the averaged model's running mean moved with the raw model's instead of staying at its initial 0
    assert torch.all(ema.module[1].running_mean.abs() > 0.1)
    assert torch.allclose(ema.module[1].running_mean, model[1].running_mean, rtol=0.5)
