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
