"""A backbone's checks: (B, 3, H, W) -> (B, num_features), with the layer Grad-CAM uses."""
from __future__ import annotations

from lnzoo import contracts
from lnzoo.testing import _shared as shared
from lnzoo.testing._component import Component
from lnzoo.testing._registry import checks_of

check = checks_of("backbone")


def _images(c: Component) -> tuple:
    import torch

    return (torch.randn(2, 3, c.sizes["image_size"], c.sizes["image_size"],
                        generator=torch.Generator().manual_seed(0)),)


check("builds_module", shared.builds_module)
check("satisfies_protocol", shared.satisfies(contracts.Backbone))


@check("feature_attributes")
def _attributes(c: Component) -> None:
    model, problems = c.build(), []
    if not (isinstance(getattr(model, "num_features", None), int) and model.num_features > 0):
        problems.append("num_features must be an int > 0")
    if getattr(model, "tokens_layout", None) not in contracts.LAYOUTS:
        problems.append(f"tokens_layout must be one of {contracts.LAYOUTS}")
    prefix = getattr(model, "num_prefix_tokens", None)
    if not (isinstance(prefix, int) and prefix >= 0):
        problems.append("num_prefix_tokens must be an int >= 0")
    assert not problems, "; ".join(problems)


@check("cam_module_is_cam_layer")
def _cam(c: Component) -> None:
    model = c.build()
    assert isinstance(model.cam_layer, str), "cam_layer must be the dotted name of the Grad-CAM layer"
    assert model.cam_module() is model.get_submodule(model.cam_layer), "cam_module() must return cam_layer's module"


@check("forward_shape")
def _shape(c: Component) -> None:
    model = c.build().train()
    out = model(*_images(c))
    assert tuple(out.shape) == (2, model.num_features), f"expected (2, {model.num_features}), got {tuple(out.shape)}"


check("forward_is_finite", shared.forward_is_finite(_images, train=True))
check("backward_reaches_parameters", shared.backward_reaches_parameters(_images))
check("safetensors_round_trip", shared.safetensors_round_trip(_images))
