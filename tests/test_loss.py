"""The weighted multi-task loss: exact composition, masking of missing labels, empty batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lnzoo.loss import MISSING, MultiTaskLoss, balanced_class_weights
from lnzoo.plugins import load_plugins

TASKS = {name: load_plugins().get("task", name).build() for name in ("malignancy", "enlargement")}


def test_total_is_exactly_one_main_plus_half_aux_with_masked_labels():
    torch.manual_seed(0)
    out = {"malignancy": torch.randn(6, 2, requires_grad=True), "enlargement": torch.randn(6, 2, requires_grad=True)}
    # as in the seed: main and auxiliary labels come from different lists; some rows carry one, some both
    tgt = {"malignancy": torch.tensor([0, 1, MISSING, 1, MISSING, 0]),
           "enlargement": torch.tensor([MISSING, 1, 0, MISSING, 1, MISSING])}
    loss_fn = MultiTaskLoss(TASKS, {"malignancy": 1.0, "enlargement": 0.5})
    total, parts = loss_fn(out, tgt)
    main = F.cross_entropy(out["malignancy"][[0, 1, 3, 5]], torch.tensor([0, 1, 1, 0]))
    aux = F.cross_entropy(out["enlargement"][[1, 2, 4]], torch.tensor([1, 0, 1]))
    assert torch.allclose(total, 1.0 * main + 0.5 * aux, atol=0, rtol=1e-6)
    assert {t: float(v) for t, v in parts.items()} == pytest.approx({"malignancy": float(main.detach()),
                                                                     "enlargement": float(0.5 * aux.detach())})
    total.backward()
    # a missing label must not pull on its row's logits
    assert torch.all(out["malignancy"].grad[[2, 4]] == 0) and torch.all(out["enlargement"].grad[[0, 3, 5]] == 0)


def test_batch_without_any_label_for_a_task_gives_zero_and_still_backpropagates():
    out = {"malignancy": torch.randn(3, 2, requires_grad=True), "enlargement": torch.randn(3, 2, requires_grad=True)}
    tgt = {"malignancy": torch.tensor([0, 1, 1]), "enlargement": torch.full((3,), MISSING)}
    total, parts = MultiTaskLoss(TASKS, {"malignancy": 1.0, "enlargement": 0.5})(out, tgt)
    assert parts["enlargement"] == 0.0 and torch.isfinite(total)
    total.backward()
    assert torch.all(out["enlargement"].grad == 0)


def test_class_weights_and_label_smoothing_are_applied():
    out = {"malignancy": torch.randn(5, 2)}
    tgt = {"malignancy": torch.tensor([0, 0, 0, 0, 1])}
    w = balanced_class_weights(tgt["malignancy"].numpy(), 2)
    assert w == pytest.approx([5 / 8, 5 / 2])
    task = {"malignancy": TASKS["malignancy"].with_options(label_smoothing=0.1)}
    total, _ = MultiTaskLoss(task, {"malignancy": 1.0}, {"malignancy": w})(out, tgt)
    ref = F.cross_entropy(out["malignancy"], tgt["malignancy"], weight=torch.tensor(w, dtype=torch.float32),
                          label_smoothing=0.1)
    assert torch.allclose(total, ref)


def test_weighted_smoothed_loss_with_missing_labels_equals_the_loss_of_the_labelled_rows():
    torch.manual_seed(1)
    out = {"malignancy": torch.randn(7, 2, requires_grad=True)}
    tgt = {"malignancy": torch.tensor([0, MISSING, 1, 1, MISSING, 0, 0])}
    w = np.array([0.7, 1.9])
    task = {"malignancy": TASKS["malignancy"].with_options(label_smoothing=0.2)}
    total, _ = MultiTaskLoss(task, {"malignancy": 1.0}, {"malignancy": w})(out, tgt)
    rows = [0, 2, 3, 5, 6]
    ref = F.cross_entropy(out["malignancy"][rows], tgt["malignancy"][rows], weight=torch.tensor(w, dtype=torch.float32),
                          label_smoothing=0.2)
    assert torch.allclose(total, ref, atol=0, rtol=1e-6)
    total.backward()
    assert torch.all(out["malignancy"].grad[[1, 4]] == 0)


def test_a_batch_labelled_only_with_a_class_weighted_zero_gives_an_exact_zero():
    out = {"malignancy": torch.randn(3, 2, requires_grad=True)}
    tgt = {"malignancy": torch.tensor([1, MISSING, 1])}
    task = {"malignancy": TASKS["malignancy"].with_options(label_smoothing=0.1)}
    total, _ = MultiTaskLoss(task, {"malignancy": 1.0}, {"malignancy": np.array([1.0, 0.0])})(out, tgt)
    assert float(total) == 0.0  # not 0/1e-12 of the smoothing term
    total.backward()
    assert torch.all(out["malignancy"].grad == 0)


def test_balanced_weights_ignore_missing_and_absent_classes():
    w = balanced_class_weights(np.array([0, 0, 2, MISSING, MISSING]), 3)
    assert w[1] == 0 and w[0] == pytest.approx(3 / 4) and w[2] == pytest.approx(3 / 2)


def test_task_weights_naming_an_unknown_task_is_an_error():
    with pytest.raises(Exception, match="not in the model"):
        MultiTaskLoss(TASKS, {"malignancy": 1.0, "enlargment": 0.5})


class _OwnHead(torch.nn.Module):
    """Outputs that are not logits: a head that maps them to probabilities and scores them itself."""

    def probabilities(self, outputs):
        return outputs / outputs.sum(1, keepdim=True)

    def task_loss(self, outputs, target, weight=None, label_smoothing=0.0):
        return outputs.sum() * 0 + 7.0 + label_smoothing


def test_head_probabilities_and_loss_resolve_the_optional_methods_in_one_place():
    from lnzoo.contracts import has_own_probabilities, head_loss, head_probabilities
    torch.manual_seed(0)
    out, tgt, w = torch.randn(5, 3).half(), torch.tensor([0, 1, 2, 2, 0]), torch.tensor([1.0, 2.0, 0.5])
    plain = torch.nn.Linear(4, 3)
    assert not has_own_probabilities(plain) and not has_own_probabilities(None)
    probs = head_probabilities(plain, out)
    assert probs.dtype == torch.float32 and torch.allclose(probs, out.float().softmax(1))
    ref = F.cross_entropy(out.float(), tgt, weight=w, label_smoothing=0.2)
    assert torch.allclose(head_loss(plain, out, tgt, weight=w, label_smoothing=0.2), ref)
    assert torch.allclose(head_loss(None, out, tgt), F.cross_entropy(out.float(), tgt))  # no head: plain CE
    own, pos = _OwnHead(), torch.rand(5, 3) + 0.1
    assert has_own_probabilities(own) and torch.allclose(head_probabilities(own, pos), pos / pos.sum(1, keepdim=True))
    assert float(head_loss(own, pos, tgt, weight=w, label_smoothing=0.5)) == 7.5


def test_multitask_loss_uses_a_heads_own_task_loss_with_the_tasks_smoothing():
    task = {"malignancy": TASKS["malignancy"].with_options(label_smoothing=0.25)}
    out = {"malignancy": torch.rand(4, 2)}
    tgt = {"malignancy": torch.tensor([0, MISSING, 1, 1])}
    total, _ = MultiTaskLoss(task, {"malignancy": 2.0})(out, tgt, heads={"malignancy": _OwnHead()})
    assert float(total) == 2.0 * 7.25
