"""Every registered backbone, head and fusion passes the conformance kit offered to plugin authors."""
from __future__ import annotations

import pytest

from lnzoo.plugins import load_plugins
from lnzoo.testing import check_component

HOST = load_plugins()
CASES = [(kind, name) for kind in ("backbone", "head", "fusion") for name in HOST.registry(kind).names()]


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_registered_component_conforms(kind, name):
    check_component(kind, name, host=HOST)


def test_kit_catches_a_head_with_wrong_output_shape():
    import types

    import lnzoo

    def bad(in_features, num_classes):
        import torch
        return torch.nn.Linear(in_features, num_classes + 1)

    mod = types.ModuleType("badhead")
    mod.lnzoo_register_heads = lnzoo.hookimpl(lambda register: register("bad", bad))
    host = load_plugins(extra=[("bad-heads", mod)])
    with pytest.raises(AssertionError, match="probabilities must be"):
        check_component("head", "bad", host=host)


def test_kit_catches_a_fusion_that_leaks_a_missing_view():
    import types

    import lnzoo

    def leaky(num_views, in_features):
        import torch

        class Leaky(torch.nn.Module):
            out_features = in_features

            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(1))

            def forward(self, feats, present=None):
                return self.w * torch.stack(feats).mean(0)
        return Leaky()

    mod = types.ModuleType("leaky")
    mod.lnzoo_register_fusions = lnzoo.hookimpl(lambda register: register("leaky", leaky))
    host = load_plugins(extra=[("leaky-fusions", mod)])
    with pytest.raises(AssertionError, match="marked missing"):
        check_component("fusion", "leaky", host=host)


# --- the Protocols of lnzoo.contracts -------------------------------------------------------------

def _host_with(kind, factory):
    import types

    import lnzoo

    mod = types.ModuleType("acme")
    setattr(mod, f"lnzoo_register_{kind}s", lnzoo.hookimpl(lambda register: register("acme", factory)))
    return load_plugins(extra=[("acme-parts", mod)])


def test_kit_names_what_a_backbone_lacks_of_the_contract():
    def no_cam(pretrained=False):
        import torch

        class Flat(torch.nn.Module):
            num_features, cam_layer = 8, "fc"  # no tokens_layout, num_prefix_tokens, cam_module

            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(3, 8)

            def forward(self, x):
                return self.fc(x.mean((2, 3)))
        return Flat()

    host = _host_with("backbone", no_cam)
    with pytest.raises(AssertionError, match=r"backbone 'acme' \(Flat\) does not satisfy lnzoo.contracts.Backbone: "
                                             r"missing \['cam_module', 'num_prefix_tokens', 'tokens_layout'\]"):
        check_component("backbone", "acme", host=host)


def test_kit_names_a_fusion_without_out_features():
    def bare(num_views, in_features):
        import torch

        class Bare(torch.nn.Module):
            def forward(self, feats, present=None):
                return feats[0]
        return Bare()

    with pytest.raises(AssertionError, match=r"lnzoo.contracts.Fusion: missing \['out_features'\]"):
        check_component("fusion", "acme", host=_host_with("fusion", bare))


def test_kit_refuses_a_head_that_is_not_a_module():
    def plain(in_features, num_classes):
        return lambda x: x[:, :num_classes]

    with pytest.raises(AssertionError, match="head 'acme' must be a torch.nn.Module, got function"):
        check_component("head", "acme", host=_host_with("head", plain))


def test_builtin_components_satisfy_their_protocols():
    from lnzoo import contracts
    assert isinstance(HOST.get("backbone", "timm").build(model_name="test_resnet"), contracts.Backbone)
    assert isinstance(HOST.get("fusion", "attention").build(2, 8), contracts.Fusion)
    head = HOST.get("head", "cosine").build(8, 3)
    assert isinstance(head, contracts.Head) and not contracts.has_own_probabilities(head)
    assert contracts.missing_members(object(), contracts.Fusion) == ["forward", "out_features"]
