"""The lnzoo-ordinal plugin: the CORAL head and the elastography_score task.

The plugin is loaded from this folder's ``src`` whether it is pip-installed or not (lnzoo.testing.plugin_host
hands its module to lnzoo exactly as its entry point would). lnzoo's conformance kit checks the contract;
the tests below it check what CORAL means.
"""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lnzoo.testing as kit

PROJECT = Path(__file__).resolve().parents[1]
DIST = "lnzoo-ordinal"
HOST = kit.plugin_host(PROJECT, builtins=False)  # only this plugin: independent of lnzoo's built-ins


@pytest.fixture
def host():
    return HOST


@pytest.fixture
def coral(host):
    def build(in_features: int = 8, num_classes: int = 4, **kwargs):
        torch.manual_seed(0)
        return host.get("head", "coral").build(in_features, num_classes, **kwargs)
    return build


# --- lnzoo's conformance kit: one test item per check ---------------------------------------------

@kit.parametrize_with_checks([kit.head("coral", host=HOST), kit.head("coral", host=HOST, hidden=8, dropout=0.1),
                              kit.head("coral", host=HOST, num_classes=2), kit.task("elastography_score", host=HOST)])
def test_conforms(component, check):
    check(component)


def test_the_kit_catches_a_broken_coral(monkeypatch):
    from lnzoo_ordinal.heads import CoralHead

    monkeypatch.setattr(CoralHead, "probabilities", lambda self, outputs: torch.sigmoid(outputs.float()))
    with pytest.raises(AssertionError, match="probabilities_sum_to_one: probabilities must be"):
        kit.check_head("coral", host=HOST)


def _cum_levels(target: torch.Tensor, k: int) -> torch.Tensor:
    """[y > j] for j = 0..K-2, built element by element (independent of the head's code)."""
    return torch.tensor([[1.0 if int(y) > j else 0.0 for j in range(k - 1)] for y in target])


def _hand_probs(outputs: torch.Tensor) -> torch.Tensor:
    cum = torch.sigmoid(outputs)
    k = outputs.shape[1] + 1
    cols = [1 - cum[:, 0]] + [cum[:, j - 1] - cum[:, j] for j in range(1, k - 1)] + [cum[:, k - 2]]
    p = torch.stack(cols, dim=1).clamp_min(0)
    return p / p.sum(dim=1, keepdim=True)


# --- the plugin as lnzoo sees it ------------------------------------------------------------------

def test_plugin_module_imports_without_torch():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import lnzoo_ordinal.plugin; "
            "assert 'torch' not in sys.modules, 'the plugin module imported torch'")
    done = subprocess.run([sys.executable, "-c", code, str(PROJECT / "src")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_host_with_builtins_lists_coral_and_task():
    host = kit.plugin_host(PROJECT)  # lnzoo's built-ins too, less this plugin's entry point if it is installed
    assert {"linear", "coral"} <= set(host.registry("head").names())
    info = next(p for p in host.plugins if p.distribution == DIST)
    assert info.error is None
    assert info.registered == {"head": ["coral"], "task": ["elastography_score"]}
    assert "coral" in host.registry("head")
    assert "elastography_score" in host.registry("task")
    head = host.get("head", "coral")
    assert head.provenance.distribution == DIST and head.overrides is None
    assert head.description and "\n" not in head.description
    assert host.get("task", "elastography_score").provenance.distribution == DIST


def test_elastography_task(host):
    task = host.get("task", "elastography_score").build()
    assert task.name == "elastography_score"
    assert task.classes == ("1", "2", "3", "4")
    assert task.ordinal is True and task.class_weighting == "balanced"
    assert task.description and "\n" not in task.description
    assert [task.index_of(s) for s in ("1", "score 2", "3分", "SCORE 4")] == [0, 1, 2, 3]
    assert task.try_index("5") is None


def test_factory_signature_and_validation(host):
    entry = host.get("head", "coral")
    params = entry.parameters()
    assert params["hidden"].default == 0 and params["dropout"].default == 0.0
    for bad in ({"num_classes": 1}, {"hidden": -1}, {"dropout": 1.0}):
        args = {"in_features": 4, "num_classes": 3, **bad}
        with pytest.raises(ValueError):
            entry.build(args.pop("in_features"), args.pop("num_classes"), **args)


# --- forward and probabilities --------------------------------------------------------------------

@pytest.mark.parametrize("k,hidden", list(itertools.product([2, 3, 4, 6], [0, 16])))
def test_output_shape(coral, k, hidden):
    head = coral(8, k, hidden=hidden, dropout=0.1).eval()
    out = head(torch.randn(5, 8))
    assert out.shape == (5, k - 1)
    probs = head.probabilities(out)
    assert probs.shape == (5, k)


def test_thresholds_ordered_for_any_parameters(coral):
    """Rank consistency is built in: whatever the weights, P(y > k) never increases with k."""
    head = coral(8, 6, hidden=16)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 5)
        b = head.biases
        assert torch.all(b[1:] < b[:-1]), b
        cum = torch.sigmoid(head(torch.randn(64, 8, generator=gen) * 3))
        assert torch.all(cum[:, 1:] <= cum[:, :-1])


@pytest.mark.parametrize("k", [2, 4, 5])
def test_probabilities_are_a_distribution(coral, k):
    head = coral(8, k, hidden=8)
    with torch.no_grad():  # make it non-trivial: spread thresholds and a strong score
        head.bias_params.normal_(0, 2)
        head.score.weight.mul_(4)
    out = head(torch.randn(100, 8) * 3)
    probs = head.probabilities(out)
    assert torch.all(probs >= 0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(100))
    torch.testing.assert_close(probs, _hand_probs(out))
    # cumulative probs recovered from the class probabilities: non-increasing and equal to sigmoid
    tail = probs.flip(1).cumsum(1).flip(1)[:, 1:]  # P(y > k) = sum_{j > k} P(y = j)
    torch.testing.assert_close(tail, torch.sigmoid(out), atol=1e-5, rtol=1e-5)
    assert torch.all(tail[:, 1:] <= tail[:, :-1] + 1e-6)


def test_probabilities_formula_by_hand(coral):
    head = coral(3, 4)
    out = torch.tensor([[2.0, 0.0, -1.0], [-3.0, -4.0, -5.0]])
    s = torch.sigmoid(out)
    expected = torch.stack([1 - s[:, 0], s[:, 0] - s[:, 1], s[:, 1] - s[:, 2], s[:, 2]], dim=1)
    torch.testing.assert_close(head.probabilities(out), expected)
    binary = coral(3, 2)
    o = torch.tensor([[0.7], [-1.2]])
    torch.testing.assert_close(binary.probabilities(o), torch.cat([1 - torch.sigmoid(o), torch.sigmoid(o)], 1))


def test_probabilities_clamped_and_renormalised(coral):
    """Outputs not made by the ordered biases (increasing cumulative logits) still give a distribution."""
    head = coral(3, 3)
    out = torch.tensor([[-2.0, 2.0]])
    s = torch.sigmoid(out)[0]
    raw = torch.tensor([1 - s[0], 0.0, s[1]])  # the middle difference is negative -> 0
    torch.testing.assert_close(head.probabilities(out)[0], raw / raw.sum())


# --- loss ------------------------------------------------------------------------------------------

def test_task_loss_matches_hand_computation(coral):
    k = 5
    head = coral(8, k)
    torch.manual_seed(3)
    out = torch.randn(12, k - 1)
    target = torch.tensor([0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 2, 2])
    levels = _cum_levels(target, k)
    per = F.binary_cross_entropy_with_logits(out, levels, reduction="none").sum(dim=1)
    torch.testing.assert_close(head.task_loss(out, target), per.mean())
    # against the explicit sum of logs, too
    s = torch.sigmoid(out)
    manual = -(levels * s.log() + (1 - levels) * (1 - s).log()).sum(1).mean()
    torch.testing.assert_close(head.task_loss(out, target), manual, atol=1e-5, rtol=1e-5)


def test_task_loss_is_zero_only_for_confident_correct(coral):
    head = coral(2, 4)
    target = torch.tensor([0, 1, 2, 3])
    good = (_cum_levels(target, 4) * 2 - 1) * 30  # +30 where y > k, -30 elsewhere
    assert head.task_loss(good, target) < 1e-6
    assert head.task_loss(-good, target) > 10


def test_class_weights(coral):
    k = 4
    head = coral(8, k)
    torch.manual_seed(4)
    out = torch.randn(10, k - 1)
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    weight = torch.tensor([0.5, 2.0, 3.0, 1.0])
    per = F.binary_cross_entropy_with_logits(out, _cum_levels(target, k), reduction="none").sum(1)
    w = weight[target]
    weighted = head.task_loss(out, target, weight=weight)
    torch.testing.assert_close(weighted, (w * per).sum() / w.sum())
    assert not torch.allclose(weighted, head.task_loss(out, target))
    # normalised: uniform or rescaled weights change nothing
    torch.testing.assert_close(head.task_loss(out, target, weight=torch.ones(k)), head.task_loss(out, target))
    torch.testing.assert_close(head.task_loss(out, target, weight=weight * 7), weighted)
    # a zero-weighted class drops out of the mean
    zero = torch.tensor([0.0, 1.0, 1.0, 1.0])
    keep = target != 0
    torch.testing.assert_close(head.task_loss(out, target, weight=zero), head.task_loss(out[keep], target[keep]))


def test_label_smoothing_is_ignored(coral):
    head = coral(8, 4)
    out, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 1, 2])
    torch.testing.assert_close(head.task_loss(out, target, label_smoothing=0.2), head.task_loss(out, target))


def test_task_loss_edge_cases(coral):
    head = coral(8, 4)
    out = torch.randn(0, 3, requires_grad=True)
    loss = head.task_loss(out, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError):
        head.task_loss(torch.randn(2, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError):
        head.task_loss(torch.randn(2, 3), torch.tensor([-1, 0]))
    with pytest.raises(ValueError):
        head.task_loss(torch.randn(2, 4), torch.tensor([0, 1]))


def test_gradient_flows(coral):
    head = coral(8, 4, hidden=16)
    x = torch.randn(16, 8, requires_grad=True)
    target = torch.arange(16) % 4
    head.task_loss(head(x), target, weight=torch.tensor([1.0, 2.0, 2.0, 1.0])).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- it learns an ordinal problem ----------------------------------------------------------------

def _ordinal_data(n: int, gen: torch.Generator, k: int = 4):
    y = torch.randint(0, k, (n,), generator=gen)
    score = (y.float() - (k - 1) / 2) + 0.3 * torch.randn(n, generator=gen)  # noisy score
    x = torch.cat([score[:, None], torch.randn(n, 3, generator=gen)], dim=1)  # plus 3 nuisance features
    return x, y


@pytest.mark.slow  # trains
def test_learns_synthetic_ordinal_problem(coral):
    k = 4
    gen = torch.Generator().manual_seed(0)
    x_tr, y_tr = _ordinal_data(512, gen, k)
    x_te, y_te = _ordinal_data(1000, gen, k)
    head = coral(4, k)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        head.task_loss(head(x_tr), y_tr).backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        out = head(x_te)
        pred = head.probabilities(out).argmax(dim=1)
    acc = (pred == y_te).float().mean().item()
    mae = (pred - y_te).abs().float().mean().item()
    best_constant_mae = min((y_te - c).abs().float().mean().item() for c in range(k))
    random_mae = (torch.randint(0, k, (1000,), generator=gen) - y_te).abs().float().mean().item()
    assert acc > 0.8, acc
    assert mae < 0.5 * best_constant_mae and mae < random_mae, (mae, best_constant_mae, random_mae)
    # the learned thresholds sit between the class means (-1.5, -0.5, 0.5, 1.5) along +score
    w = head.score.weight[0, 0].item()
    assert w > 0
    cuts = (-head.biases / w).detach()
    torch.testing.assert_close(cuts, torch.tensor([-1.0, 0.0, 1.0]), atol=0.25, rtol=0)
    assert (head.rank(out) == pred).float().mean() > 0.95


# --- lnzoo itself calling the head ----------------------------------------------------------------

def test_lnzoo_multitask_loss_dispatches_to_task_loss(coral, host):
    """lnzoo masks missing labels (-1), passes class weights, and calls the head's task_loss."""
    from lnzoo.loss import MISSING, MultiTaskLoss
    task = host.get("task", "elastography_score").build()
    head = coral(8, task.num_classes)
    weight = [0.5, 1.0, 2.0, 4.0]
    mtl = MultiTaskLoss({task.name: task}, {task.name: 1.0}, {task.name: weight})
    out = head(torch.randn(6, 8))
    target = torch.tensor([0, MISSING, 3, 2, MISSING, 1])
    total, _ = mtl({task.name: out}, {task.name: target}, heads={task.name: head})
    keep = target != MISSING
    expected = head.task_loss(out[keep], target[keep], weight=torch.tensor(weight))
    torch.testing.assert_close(total, expected)


def test_lnzoo_resolves_the_heads_probabilities_and_loss(coral):
    from lnzoo.contracts import Head, has_own_probabilities, head_loss, head_probabilities
    head = coral(8, 4)
    out = head(torch.randn(5, 8))
    target = torch.tensor([0, 1, 2, 3, 1])
    assert isinstance(head, Head) and has_own_probabilities(head)
    torch.testing.assert_close(head_probabilities(head, out), _hand_probs(out.detach()), atol=1e-6, rtol=0)
    torch.testing.assert_close(head_loss(head, out, target, label_smoothing=0.1), head.task_loss(out, target))


def test_coral_is_registered_lazily(host):
    entry = host.get("head", "coral")
    assert entry.target == "lnzoo_ordinal.heads:CoralHead"
    assert list(entry.parameters()) == ["in_features", "num_classes", "hidden", "dropout"]
