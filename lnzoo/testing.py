"""Conformance kit: checks any registered backbone, head, fusion or input kind against lnzoo's contracts.

Plugin authors run it on their components::

    from lnzoo.testing import check_head
    check_head("coral")                      # builds it from the installed plugins

or parametrise pytest over a whole registry::

    @pytest.mark.parametrize("name", registered_names("head"))
    def test_head(name): check_head(name)

Each check builds the component, checks it is an ``nn.Module`` satisfying its Protocol in
:mod:`lnzoo.contracts`, runs a forward pass on a small batch, checks shapes and finite values,
backpropagates to every trainable parameter, and round-trips the state dict through safetensors
bytes (save, load into a fresh instance, identical outputs in eval mode).
"""
from __future__ import annotations

from typing import Any

from lnzoo import contracts
from lnzoo.plugins import PluginHost, get_host

__all__ = ["registered_names", "check_backbone", "check_head", "check_fusion", "check_input", "check_component"]


def registered_names(kind: str, host: PluginHost | None = None) -> list[str]:
    """Names registered for ``kind`` ("backbone", "head", "fusion"), for pytest parametrisation."""
    return (host or get_host()).registry(kind).names()


def _kwargs(entry: Any, kwargs: dict) -> dict:
    return {**getattr(entry.factory, "lnzoo_check_kwargs", {}), **kwargs}


def _conforms(obj: Any, proto: type, name: str) -> None:
    import torch

    kind = proto.__name__.lower()
    assert isinstance(obj, torch.nn.Module), f"{kind} {name!r} must be a torch.nn.Module, got {type(obj).__name__}"
    assert isinstance(obj, proto), (f"{kind} {name!r} ({type(obj).__name__}) does not satisfy lnzoo.contracts."
                                    f"{proto.__name__}: missing {contracts.missing_members(obj, proto)}")


def _roundtrip(build, forward) -> None:
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


def _backward(module, out) -> None:
    import torch

    assert torch.isfinite(out).all(), "forward produced non-finite values"
    out.float().pow(2).mean().backward()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert trainable, "component has no trainable parameters"
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters received no gradient: {no_grad[:5]}"


def check_backbone(name: str, host: PluginHost | None = None, image_size: int = 64, **kwargs: Any) -> None:
    """Backbone contract: (B,3,H,W) -> (B, num_features); cam_layer names a real submodule."""
    import torch

    entry = (host or get_host()).get("backbone", name)
    kw = _kwargs(entry, kwargs)
    model = entry.build(**kw)
    _conforms(model, contracts.Backbone, name)
    assert isinstance(model.num_features, int) and model.num_features > 0, "backbone num_features must be an int > 0"
    assert isinstance(model.cam_layer, str), "backbone cam_layer must be the dotted name of the Grad-CAM layer"
    assert model.cam_module() is model.get_submodule(model.cam_layer), "cam_module() must return cam_layer's module"
    assert model.tokens_layout in contracts.LAYOUTS, f"tokens_layout must be one of {contracts.LAYOUTS}"
    assert isinstance(model.num_prefix_tokens, int) and model.num_prefix_tokens >= 0, \
        "num_prefix_tokens must be an int >= 0"
    x = torch.randn(2, 3, image_size, image_size)
    model.train()
    out = model(x)
    assert out.shape == (2, model.num_features), f"expected (2, {model.num_features}), got {tuple(out.shape)}"
    _backward(model, out)
    _roundtrip(lambda: entry.build(**kw), lambda m: m(x))


def check_head(name: str, host: PluginHost | None = None, in_features: int = 32, num_classes: int = 3,
               **kwargs: Any) -> None:
    """Head contract: (B, in_features) -> outputs; probabilities sum to 1; a loss backpropagates."""
    import torch

    entry = (host or get_host()).get("head", name)
    kw = _kwargs(entry, kwargs)
    head = entry.build(in_features, num_classes, **kw)
    _conforms(head, contracts.Head, name)
    x = torch.randn(4, in_features)
    out = head(x)
    assert out.ndim == 2 and out.shape[0] == 4, f"head output must be (B, C), got {tuple(out.shape)}"
    probs = contracts.head_probabilities(head, out)
    assert probs.shape == (4, num_classes), f"probabilities must be (4, {num_classes}), got {tuple(probs.shape)}"
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-4) and (probs >= 0).all(), \
        "probabilities must be non-negative and sum to 1"
    target = torch.tensor([0, 1, num_classes - 1, 0])
    loss = contracts.head_loss(head, out, target, weight=torch.ones(num_classes), label_smoothing=0.0)
    assert loss.ndim == 0 and torch.isfinite(loss), "loss must be a finite scalar"
    loss.backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad), "a parameter got no gradient"
    _roundtrip(lambda: entry.build(in_features, num_classes, **kw), lambda m: m(x))


def check_fusion(name: str, host: PluginHost | None = None, num_views: int = 2, in_features: int = 16,
                 **kwargs: Any) -> None:
    """Fusion contract: N x (B, F) + presence mask -> (B, out_features); a missing view changes nothing else."""
    import torch

    entry = (host or get_host()).get("fusion", name)
    kw = _kwargs(entry, kwargs)
    num_views = min(num_views, contracts.fusion_max_views(entry.factory) or num_views)
    fusion = entry.build(num_views, in_features, **kw)
    _conforms(fusion, contracts.Fusion, name)
    assert isinstance(fusion.out_features, int), "fusion out_features must be an int"
    feats = [torch.randn(3, in_features, requires_grad=True) for _ in range(num_views)]
    present = torch.ones(3, num_views, dtype=torch.bool)
    out = fusion(feats, present)
    assert out.shape == (3, fusion.out_features), f"expected (3, {fusion.out_features}), got {tuple(out.shape)}"
    assert torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert all(f.grad is not None for f in feats), "every view must receive a gradient"
    if num_views > 1:  # a missing view must not leak its (garbage) features into the result
        garbage = [f.detach().clone() for f in feats]
        garbage[-1] = garbage[-1] * 1e3 + 7.0
        mask = present.clone()
        mask[:, -1] = False
        with torch.no_grad():
            fusion.eval()
            a = fusion([f.detach() for f in feats], mask)
            b = fusion(garbage, mask)
        assert torch.allclose(a, b, atol=1e-5), "output depends on a view marked missing"
    fusion.train()
    _roundtrip(lambda: entry.build(num_views, in_features, **kw), lambda m: m([f.detach() for f in feats], present))


def check_component(kind: str, name: str, host: PluginHost | None = None, **kwargs: Any) -> None:
    {"backbone": check_backbone, "head": check_head, "fusion": check_fusion,
     "input": check_input}[kind](name, host=host, **kwargs)


def check_input(name: str, samples, host: PluginHost | None = None, out_features: int = 16, **options: Any) -> None:
    """Input kind contract, on rows a plugin author provides (``lnzoo.data.samples.Sample`` objects, at least
    one of them with the input given): ``check`` names bad rows, ``fit`` returns JSON state that alone (after
    a JSON round trip, in a freshly built kind, as a checkpoint reloads it) encodes every row identically,
    ``encode`` gives ``shape``/``dtype`` arrays or None, the encoder maps a batch to (B, out_features) with
    gradients everywhere and survives a safetensors round trip."""
    import json

    import numpy as np
    import torch

    from lnzoo.inputs import build_kind

    h = host or get_host()
    table = {"name": name, **_kwargs(h.get("input", name), options)}
    kind = build_kind(name, table, h)
    assert kind.dtype in ("float32", "int64"), f"input {name!r}: dtype must be 'float32' or 'int64', got {kind.dtype!r}"
    assert isinstance(kind.column, str) and kind.column, f"input {name!r}: column must be a non-empty string"
    samples = list(samples)
    problems: list[str] = []
    bad = kind.check(samples, problems)
    assert isinstance(bad, set) and all(isinstance(i, int) and 0 <= i < len(samples) for i in bad), \
        f"input {name!r}: check must return a set of row indices, got {bad!r}"
    assert all(isinstance(p, str) for p in problems), "check must append strings to problems"
    assert len(problems) >= len(bad), "every bad row needs a problem naming it (file:line: reason)"
    good = [s for i, s in enumerate(samples) if i not in bad]
    state = kind.fit(good)
    stored = json.loads(json.dumps(state))  # what the sidecar keeps: JSON, nothing pickled
    shape = tuple(kind.shape(state))
    assert shape and all(isinstance(n, int) and n > 0 for n in shape), f"shape must be positive ints, got {shape}"
    encoded = [kind.encode(s, state) for s in good]
    given = [e for e in encoded if e is not None]
    assert given, f"input {name!r}: no row encoded to an array; give check_input rows that have the input"
    for e in given:
        arr = np.asarray(e)
        assert arr.shape == shape and arr.dtype == np.dtype(kind.dtype), \
            f"encode returned {arr.shape} {arr.dtype}, expected {shape} {kind.dtype}"
        assert np.isfinite(arr).all(), "encode returned non-finite values"
    again = build_kind(name, table, h)  # a checkpoint reload: a fresh kind and the stored state only
    for s, e in zip(good, encoded):
        r = again.encode(s, stored)
        assert (r is None) == (e is None) and (e is None or np.array_equal(np.asarray(r), np.asarray(e))), \
            f"{s.origin}: encodes differently from the JSON state a checkpoint stores"
    encoder = kind.encoder(state, out_features)
    assert isinstance(encoder, torch.nn.Module), f"encoder must be a torch.nn.Module, got {type(encoder).__name__}"
    batch = torch.from_numpy(np.stack([np.asarray(e) for e in given[:4]] * (2 if len(given) < 2 else 1)))
    encoder.train()
    out = encoder(batch)
    assert out.shape == (batch.shape[0], out_features), f"encoder output {tuple(out.shape)}, expected " \
        f"({batch.shape[0]}, {out_features})"
    _backward(encoder, out)
    _roundtrip(lambda: kind.encoder(state, out_features), lambda m: m(batch))
    # a checkpoint reload builds the encoder from a fresh kind and the stored JSON: its weights must fit it
    from safetensors.torch import load, save

    rebuilt = again.encoder(stored, out_features)
    weights = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    own = rebuilt.state_dict()
    assert set(own) == set(weights) and all(own[k].shape == v.shape for k, v in weights.items()), \
        (f"input {name!r}: the encoder rebuilt from the stored state does not fit the trained one's weights: put "
         "everything encoder() depends on (widths, layers) into the state fit() returns")
    rebuilt.load_state_dict(load(save(weights)))
    encoder.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(encoder(batch), rebuilt(batch), atol=1e-5), \
            f"input {name!r}: the encoder rebuilt from the stored state gives other features"
