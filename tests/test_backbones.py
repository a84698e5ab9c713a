"""Backbone weights: local .safetensors files load, hub failures are clear errors, widths and CAM layers."""
from __future__ import annotations

import pytest
import torch

from lnzoo.errors import LnzooError, UsageError
from lnzoo.plugins import load_plugins

HOST = load_plugins()


def test_local_safetensors_weights_are_loaded(tmp_path):
    from safetensors.torch import save_file

    entry = HOST.get("backbone", "timm")
    torch.manual_seed(0)
    source = entry.build(model_name="test_resnet")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.body.state_dict().items()}, str(path))
    torch.manual_seed(1)
    loaded = entry.build(model_name="test_resnet", pretrained=str(path))
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_weight_files_are_clear_errors(tmp_path):
    entry = HOST.get("backbone", "timm")
    with pytest.raises(UsageError, match="not found"):
        entry.build(model_name="test_resnet", pretrained=str(tmp_path / "nope.safetensors"))
    pickle_like = tmp_path / "w.pth"
    pickle_like.write_bytes(b"x")
    with pytest.raises(UsageError, match="no pickles"):
        entry.build(model_name="test_resnet", pretrained=str(pickle_like))


def test_hub_failure_offline_is_a_clear_error_not_a_traceback(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(*args, **kwargs)
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(LnzooError, match="Offline\\? Use pretrained = false"):
        HOST.get("backbone", "timm").build(model_name="resnet18", pretrained=True)


def test_unknown_timm_model_gets_did_you_mean():
    with pytest.raises(UsageError, match="did you mean 'resnet18'"):
        HOST.get("backbone", "timm").build(model_name="resnet81")


@pytest.mark.parametrize(("name", "kwargs", "width", "layout"), [
    ("tv_resnet50", {}, 2048, "nchw"), ("tv_swin_t", {}, 768, "nhwc"),
    ("timm", {"model_name": "test_vit"}, None, "tokens"),
])
def test_width_and_grad_cam_layer_are_exposed(name, kwargs, width, layout):
    bb = HOST.get("backbone", name).build(**kwargs)
    assert bb.tokens_layout == layout
    if width:
        assert bb.num_features == width
    bb.get_submodule(bb.cam_layer)


def test_builtin_backbones_register_the_nn_factories_lazily():
    from lnzoo.nn import backbones
    entry = HOST.get("backbone", "timm")
    assert entry.target == "lnzoo.nn.backbones:timm_backbone" and entry.factory is backbones.timm_backbone
    assert entry.factory.lnzoo_check_kwargs == {"model_name": "test_resnet"}  # the kit's tiny model
    params = entry.parameters()
    assert params["model_name"].default == "resnet50" and params["pretrained"].default is False
    assert list(HOST.get("backbone", "tv_resnet50").parameters()) == ["pretrained"]
