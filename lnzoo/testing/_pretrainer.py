"""A self-supervised pretraining method's checks: it wraps the backbone it is given, gives a finite scalar loss for
two views of a batch, trains that backbone, stays trainable after its per-step update, and resumes from its state."""
from __future__ import annotations

from lnzoo import contracts
from lnzoo.testing import _shared as shared
from lnzoo.testing._component import Component
from lnzoo.testing._registry import checks_of

check = checks_of("pretrainer")


def _views(c: Component) -> tuple:
    import torch

    g, size = torch.Generator().manual_seed(0), c.sizes["image_size"]
    return torch.randn(4, 3, size, size, generator=g), torch.randn(4, 3, size, size, generator=g)


check("builds_module", shared.builds_module)
check("satisfies_protocol", shared.satisfies(contracts.Pretrainer))


@check("keeps_the_backbone")
def _keeps(c: Component) -> None:
    wrapped, method = c.build_pretrainer()
    assert method.backbone is wrapped, ("self.backbone must be the backbone the factory was given: it is what the "
                                        "pretraining saves for model.init_from")


@check("loss_is_a_finite_scalar")
def _loss(c: Component) -> None:
    import torch

    loss = c.build().train()(*_views(c))
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0, \
        f"forward(view0, view1) must return the batch's scalar loss, got {getattr(loss, 'shape', type(loss))}"
    shared.finite(loss, "the loss")


@check("backward_reaches_the_backbone")
def _reaches(c: Component) -> None:
    wrapped, method = c.build_pretrainer()
    method.train()(*_views(c)).backward()
    no_grad = [n for n, p in wrapped.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"backbone parameters received no gradient from the loss: {no_grad[:5]}"


@check("trainable_after_step")
def _after_step(c: Component) -> None:
    import torch

    wrapped, method = c.build_pretrainer()
    method.train()
    before = [p.detach().clone() for p in wrapped.parameters()]
    method(*_views(c)).backward()
    torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1).step()
    method.after_step(0.5)  # a momentum teacher follows the student here, never by gradient
    assert any(not torch.equal(a, b) for a, b in zip(before, wrapped.parameters())), \
        "an optimiser step on the method's parameters did not change the backbone"
    assert all(p.requires_grad for p in wrapped.parameters()), "after_step() froze backbone parameters"
    shared.finite(method(*_views(c)), "the loss after a step")


@check("safetensors_round_trip")
def _round_trip(c: Component) -> None:  # what --resume restores: the method's whole state (teacher, centre...)
    views = _views(c)
    shared.same_after_safetensors(c.build, lambda m: m(*views))
