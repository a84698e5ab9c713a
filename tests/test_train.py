"""Training-loop behaviour users rely on: EMA incl. BatchNorm buffers, oversampling vs class weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

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
    from lnzoo.train.averaging import ema_of

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    ema = ema_of(model, 0.5)
    model.train()
    for _ in range(5):
        model(torch.randn(8, 1, 4, 4) * 3 + 10)
        ema.update_parameters(model)
    # the averaged model's running mean moved with the raw model's instead of staying at its initial 0
    assert torch.all(ema.module[1].running_mean.abs() > 0.1)
    assert torch.allclose(ema.module[1].running_mean, model[1].running_mean, rtol=0.5)


def test_fit_returns_its_results_and_never_accumulates_gradients_across_steps():
    from lnzoo.data.dataset import ImageCache
    from lnzoo.data.images import Preprocessing
    from lnzoo.data.run_data import load_run_data

    tr = _trainer(["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=32",
                   "data.phantom.patients=24", "train.epochs=2", "data.batch_size=4", "train.ema=0.5"])
    tr.cache = ImageCache(Preprocessing(32))
    pool = load_run_data(tr.recipe, tr.tasks, HOST).pool
    seen = []
    tr.emit = seen.append
    result = tr.fit(pool[:12], pool[12:18], seed=0, fold=3)
    assert result.fold == 3 and len(result.history) == 2 and result.best_epoch in (1, 2)
    assert set(result.last_state) == set(result.model.state_dict())
    assert result.predictor.predict(pool[18:20]).proba["malignancy"].shape == (2, 2)
    assert [type(e).__name__ for e in seen].count("EpochEnded") == 2
    # zero_grad after every optimizer step: a gradient left behind would leak into the next step's update
    assert all(p.grad is None for p in result.model.parameters())


def test_mean_teacher_consistency_uses_confident_pseudo_labels_on_unlabelled_images_only():
    from lnzoo.model import build_model
    from lnzoo.train.averaging import MeanTeacher

    tr = _trainer(["model.backbone={name='timm', model_name='test_resnet'}", "train.mean_teacher.weight=0.1"])
    torch.manual_seed(0)
    model = build_model(tr.recipe, HOST, tr.tasks)
    cfg = dict(tr.cfg["mean_teacher"])
    mt = MeanTeacher(model, {**cfg, "threshold": 0.95}, tr.main)
    with torch.no_grad():  # a teacher certain that everything is malignant
        mt.teacher.module.heads["malignancy"].fc.bias.copy_(torch.tensor([-20.0, 20.0]))
    x, present, inputs = torch.randn(4, 1, 3, 32, 32), torch.ones(4, 1, dtype=torch.bool), {}
    student = torch.zeros(4, 2, requires_grad=True)
    y_main = torch.tensor([0, -1, 1, -1])
    loss = mt.loss(model, x, present, inputs, student, y_main)
    assert torch.isclose(loss, torch.log(torch.tensor(2.0)))  # CE of a uniform student vs label 1
    loss.backward()
    assert torch.all(student.grad[[0, 2]] == 0) and torch.all(student.grad[[1, 3]] != 0)
    strict = MeanTeacher(model, {**cfg, "threshold": 1.01}, tr.main)
    strict.teacher.module.load_state_dict(mt.teacher.module.state_dict())
    assert float(strict.loss(model, x, present, inputs, student, y_main)) == 0.0  # nothing confident: no pseudo-labels
    assert float(mt.loss(model, x, present, inputs, student, torch.tensor([0, 1, 1, 0]))) == 0.0


def test_channels_last_is_on_for_cpu_by_default_and_changes_no_prediction():
    from lnzoo.data.dataset import ImageCache
    from lnzoo.data.images import Preprocessing
    from lnzoo.model import build_model
    from lnzoo.data.run_data import load_run_data

    sets = ["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=48", "train.device='cpu'",
            "data.phantom.patients=24"]
    auto, off = _trainer(sets), _trainer([*sets, "train.channels_last=false"])
    assert auto.channels_last and not off.channels_last
    samples = load_run_data(auto.recipe, auto.tasks, HOST).pool[:6]
    cache = ImageCache(Preprocessing(48))
    torch.manual_seed(0)
    model = build_model(auto.recipe, HOST, auto.tasks).eval()
    for t in (auto, off):
        t.cache = cache
    nchw = off.predictor(model).predict(samples).proba
    nhwc = auto.predictor(model.to(memory_format=torch.channels_last)).predict(samples).proba
    for task in nchw:
        np.testing.assert_allclose(nhwc[task], nchw[task], atol=1e-5)


def test_a_recipe_with_every_augmentation_off_trains_on_the_images_as_they_are(tmp_path):
    from lnzoo.data.dataset import build_augment
    from lnzoo.pipeline import fit_folds
    from tests.conftest import TINY

    off = ["data.augment.rotation=0", "data.augment.hflip=0", "data.augment.color_jitter=0", "data.augment.blur=0",
           "data.augment.scale=[1.0, 1.0]"]
    recipe = load_recipe(REPO / "recipes" / "stage1_aux.toml", host=load_plugins(),
                         sets=[*TINY, *off, "cv.run_folds=[0]", "train.epochs=1"])
    assert build_augment(recipe.data["data"]["augment"], 48) is None
    metrics = fit_folds(recipe, load_plugins(), tmp_path / "run")
    assert metrics["folds_run"] == [0]


@pytest.mark.parametrize("y, values, oversample, expect", [
    # a scanner confounded with the class: within each class, each scanner drawn equally often
    ([0, 0, 0, 1, 1, 1], ["A", "A", "B", "B", "B", "A"], False, [0.75, 0.75, 1.5, 0.75, 0.75, 1.5]),
    # one value in a class: nothing to balance there
    ([0, 0, 1, 1], ["A", "A", "A", "B"], False, [1.0, 1.0, 1.0, 1.0]),
    # with oversampling the classes are balanced too: 2 of class 0, 4 of class 1
    ([0, 0, 1, 1, 1, 1], ["A", "A", "A", "B", "B", "B"], True, [0.5, 0.5, 0.5, 1 / 6, 1 / 6, 1 / 6]),
    # no confounder: oversampling alone; an unlabelled image gets the mean weight
    ([0, 1, 1, -1], None, True, [1.0, 0.5, 0.5, 2 / 3]),
])
def test_sampling_weights_balance_a_confounder_within_each_class(y, values, oversample, expect):
    from lnzoo.data.samples import MISSING
    from lnzoo.train.loop import sampling_weights

    y = np.asarray([MISSING if v == -1 else v for v in y])
    w = sampling_weights(y, 2, oversample, values)
    np.testing.assert_allclose(w, expect)
    if values is not None and not oversample:
        v = np.asarray(values)
        for c in (0, 1):  # each class keeps its total weight, split evenly over its values
            assert w[y == c].sum() == pytest.approx((y == c).sum())
            totals = {k: w[(y == c) & (v == k)].sum() for k in set(v[y == c])}
            assert len(set(np.round(list(totals.values()), 9))) == 1
