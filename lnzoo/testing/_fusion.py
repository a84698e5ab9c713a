"""A fusion's checks: N x (B, F) + presence mask -> (B, out_features); an absent member never reaches the result."""
from __future__ import annotations

from lnzoo import contracts
from lnzoo.testing import _shared as shared
from lnzoo.testing._component import Component
from lnzoo.testing._registry import NotApplicable, checks_of

check = checks_of("fusion")


def _views(c: Component, grad: bool = False):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, c.sizes["in_features"], generator=g).requires_grad_(grad) for _ in range(c.num_views)]


def _mixed_presence(n: int):
    """Row 0: every view; row 1: all but the first; row 2: all but the last (one view: always present)."""
    import torch

    mask = torch.ones(3, n, dtype=torch.bool)
    if n > 1:
        mask[1, 0] = mask[2, -1] = False
    return mask


def _inputs(c: Component, grad: bool = False) -> tuple:
    """The views and a mixed presence mask: a fusion's forward arguments."""
    return _views(c, grad), _mixed_presence(c.num_views)


check("builds_module", shared.builds_module)


@check("satisfies_protocol")
def _protocol(c: Component) -> None:
    f = c.build()
    shared.conforms(f, contracts.Fusion, c)
    assert isinstance(f.out_features, int) and f.out_features > 0, "fusion out_features must be an int > 0"


@check("forward_shape")
def _shape(c: Component) -> None:
    f = c.build()
    out = f(*_inputs(c))
    assert tuple(out.shape) == (3, f.out_features), f"expected (3, {f.out_features}), got {tuple(out.shape)}"


check("forward_is_finite", shared.forward_is_finite(_inputs))


@check("present_none_means_all_present")
def _none(c: Component) -> None:
    import torch

    f, feats = c.build().eval(), _views(c)
    with torch.no_grad():
        a, b = f(feats, None), f(feats, torch.ones(3, c.num_views, dtype=torch.bool))
    assert torch.allclose(a, b, atol=1e-5), "present=None must mean every view is present"


@check("every_view_gets_gradient")
def _view_grads(c: Component) -> None:
    f, feats = c.build().train(), _views(c, grad=True)
    f(feats, _mixed_presence(c.num_views)).float().pow(2).mean().backward()
    missing = [i for i, x in enumerate(feats) if x.grad is None or not x.grad.abs().sum() > 0]
    assert not missing, f"views {missing} received no gradient from the rows they are present in"


# a fusion may have no parameters (concat); the views carry gradients then
check("backward_reaches_parameters",
      shared.backward_reaches_parameters(lambda c: _inputs(c, grad=True), need_parameters=False))


@check("masked_member_cannot_leak")
def _leak(c: Component) -> None:
    import torch

    if c.num_views < 2:
        raise NotApplicable(f"{c.num_views} view: there is no member to mask")
    f, feats = c.build().eval(), _views(c)
    garbage = [x.clone() for x in feats]
    garbage[-1] = garbage[-1] * 1e3 + 7.0
    mask = torch.ones(3, c.num_views, dtype=torch.bool)
    mask[:, -1] = False
    with torch.no_grad():
        a, b = f(feats, mask), f(garbage, mask)
    assert torch.allclose(a, b, atol=1e-5), "output depends on a view marked missing"


check("safetensors_round_trip", shared.safetensors_round_trip(_inputs))
