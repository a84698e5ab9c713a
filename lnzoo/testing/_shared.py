"""What the checks of several kinds share: a torch module, a Protocol met, finite outputs, gradients that reach
the parameters, the same outputs after a safetensors round trip; and those checks made for one kind's inputs."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lnzoo import contracts
from lnzoo.testing._component import Component

Inputs = Callable[[Component], tuple]  # a kind's forward arguments for a component


def is_module(obj: Any, c: Component) -> None:
    import torch

    assert isinstance(obj, torch.nn.Module), f"{c.kind} {c.name!r} must be a torch.nn.Module, got {type(obj).__name__}"


def conforms(obj: Any, proto: type, c: Component) -> None:
    assert isinstance(obj, proto), (f"{c.kind} {c.name!r} ({type(obj).__name__}) does not satisfy lnzoo.contracts."
                                    f"{proto.__name__}: missing {contracts.missing_members(obj, proto)}")


def finite(out: Any, what: str = "forward") -> None:
    import torch

    assert torch.isfinite(out).all(), f"{what} produced non-finite values"


def reaches_parameters(module: Any, loss: Any, need_parameters: bool = True) -> None:
    loss.backward()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert trainable or not need_parameters, "component has no trainable parameters"
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters received no gradient: {no_grad[:5]}"


def squared_output_reaches_parameters(module: Any, *inputs: Any, need_parameters: bool = True) -> None:
    """The mean squared output of a module in training mode, backpropagated: every parameter gets a gradient."""
    reaches_parameters(module, module(*inputs).float().pow(2).mean(), need_parameters)


def same_after_safetensors(build: Callable[[], Any], forward: Callable[[Any], Any]) -> None:
    import torch
    from safetensors.torch import load, save

    torch.manual_seed(0)
    a = build()
    torch.manual_seed(1)
    b = build()
    state = {k: v.detach().contiguous() for k, v in a.state_dict().items()}
    b.load_state_dict(load(save(state)), strict=True)
    a.eval(), b.eval()
    with torch.no_grad():
        out_a, out_b = forward(a), forward(b)
    assert torch.allclose(out_a, out_b, atol=1e-5), "outputs differ after a safetensors state-dict round trip"


# checks a backbone, a head and a fusion share, given the kind's forward arguments

def builds_module(c: Component) -> None:
    is_module(c.build(), c)


def satisfies(proto: type) -> Callable[[Component], None]:
    def satisfies_protocol(c: Component) -> None:
        conforms(c.build(), proto, c)
    return satisfies_protocol


def forward_is_finite(inputs: Inputs, train: bool = False) -> Callable[[Component], None]:
    def check(c: Component) -> None:
        module = c.build()
        finite((module.train() if train else module)(*inputs(c)))
    return check


def backward_reaches_parameters(inputs: Inputs, need_parameters: bool = True) -> Callable[[Component], None]:
    def check(c: Component) -> None:
        module = c.build().train()
        squared_output_reaches_parameters(module, *inputs(c), need_parameters=need_parameters)
    return check


def safetensors_round_trip(inputs: Inputs) -> Callable[[Component], None]:
    def check(c: Component) -> None:
        x = inputs(c)
        same_after_safetensors(c.build, lambda m: m(*x))
    return check
