"""A head's checks: (B, in_features) -> outputs; probabilities and a loss, its own or softmax and cross-entropy."""
from __future__ import annotations

from lnzoo import contracts
from lnzoo.testing import _shared as shared
from lnzoo.testing._component import Component
from lnzoo.testing._registry import checks_of

check = checks_of("head")


def _features(c: Component, rows: int = 6):
    import torch

    return torch.randn(rows, c.sizes["in_features"], generator=torch.Generator().manual_seed(0))


def _inputs(c: Component) -> tuple:
    return (_features(c),)


def _targets(c: Component, rows: int = 6):
    import torch

    return torch.arange(rows) % c.sizes["num_classes"]


check("builds_module", shared.builds_module)
check("satisfies_protocol", shared.satisfies(contracts.Head))


@check("forward_shape")
def _shape(c: Component) -> None:
    h = c.build()
    out = h(_features(c))
    assert out.ndim == 2 and out.shape[0] == 6, f"head output must be (B, K'), got {tuple(out.shape)}"
    k = c.sizes["num_classes"]
    assert out.shape[1] == k or contracts.has_own_probabilities(h), \
        (f"head output is (B, {out.shape[1]}) for {k} classes: outputs that are not one logit per class need the "
         "head's own probabilities() and task_loss()")


check("forward_is_finite", shared.forward_is_finite(_inputs))


@check("probabilities_sum_to_one")
def _probabilities(c: Component) -> None:
    import torch

    h, k = c.build(), c.sizes["num_classes"]
    probs = contracts.head_probabilities(h, h(_features(c)))
    assert tuple(probs.shape) == (6, k), f"probabilities must be (6, {k}), got {tuple(probs.shape)}"
    sums_to_one = torch.allclose(probs.sum(1), torch.ones(6), atol=1e-4)
    assert torch.isfinite(probs).all() and (probs >= 0).all() and sums_to_one, \
        "probabilities must be non-negative and sum to 1"


@check("own_probabilities_with_own_loss")
def _own_methods(c: Component) -> None:
    h = c.build()
    own_probs, own_loss = contracts.has_own_probabilities(h), callable(getattr(h, "task_loss", None))
    assert own_probs == own_loss, (
        "the head defines probabilities() but no task_loss(): lnzoo would train its outputs with cross-entropy as "
        "if they were logits" if own_probs else
        "the head defines task_loss() but no probabilities(): lnzoo would read its outputs through softmax as if "
        "they were logits")


@check("loss_is_finite_scalar")
def _loss(c: Component) -> None:
    import torch

    h = c.build()
    loss = contracts.head_loss(h, h(_features(c)), _targets(c), weight=None, label_smoothing=0.1)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and torch.isfinite(loss), \
        f"loss must be a finite scalar tensor, got {loss!r}"
    assert loss.requires_grad, "loss does not depend on the head's outputs"


@check("loss_weight_normalised")
def _weights(c: Component) -> None:
    import torch

    h, k = c.build(), c.sizes["num_classes"]
    out, target = h(_features(c)), _targets(c)
    w = torch.arange(1.0, k + 1)
    plain, ones = (contracts.head_loss(h, out, target, weight=x) for x in (None, torch.ones(k)))
    assert torch.allclose(plain, ones, atol=1e-5), \
        (f"class weights of 1 changed the loss ({float(plain):.6g} -> {float(ones):.6g}): normalise as "
         "F.cross_entropy does")
    scaled, once = contracts.head_loss(h, out, target, weight=5 * w), contracts.head_loss(h, out, target, weight=w)
    assert torch.allclose(scaled, once, atol=1e-5), \
        "scaling every class weight by 5 changed the loss: normalise by the weights' sum, as F.cross_entropy does"


@check("backward_reaches_parameters")
def _backward(c: Component) -> None:
    import torch

    h = c.build().train()
    k = c.sizes["num_classes"]
    shared.reaches_parameters(h, contracts.head_loss(h, h(_features(c)), _targets(c), weight=torch.ones(k)))


check("safetensors_round_trip", shared.safetensors_round_trip(_inputs))
