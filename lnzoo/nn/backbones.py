"""Backbones: an image batch (B, 3, H, W) in, pooled features (B, num_features) out (``lnzoo.contracts.Backbone``)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lnzoo.errors import LnzooError, UsageError


class Backbone(nn.Module):
    """Wraps a feature extractor with the metadata the rest of lnzoo needs."""

    def __init__(self, body: nn.Module, num_features: int, cam_layer: str, tokens_layout: str = "nchw",
                 num_prefix_tokens: int = 0, source: str = ""):
        super().__init__()
        self.body = body
        self.num_features = int(num_features)
        self.cam_layer = f"body.{cam_layer}" if cam_layer else "body"
        self.tokens_layout = tokens_layout
        self.num_prefix_tokens = num_prefix_tokens
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def cam_module(self) -> nn.Module:
        return self.get_submodule(self.cam_layer)


def load_local_weights(model: nn.Module, path: str | Path, what: str) -> dict[str, list[str]]:
    """Load a local .safetensors file into ``model`` (classifier keys may be absent); report what matched."""
    from lnzoo.checkpoint import read_weights

    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"pretrained weights file not found: {path}")
    if path.suffix != ".safetensors":
        raise UsageError(f"pretrained weights must be a .safetensors file (no pickles), got {path}")
    state = read_weights(path)
    own = model.state_dict()
    # accept files saved from a whole lnzoo model or a Backbone wrapper by stripping known prefixes
    for prefix in ("backbones.0.body.", "backbone.body.", "body."):
        if not any(k in own for k in state) and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UsageError(f"{path}: none of its {len(state)} tensors fit {what}; is it the right architecture?")
    model.load_state_dict(usable, strict=False)
    return {"loaded": sorted(usable), "missing": sorted(set(own) - set(usable)),
            "unused": sorted(set(state) - set(usable))}


HEAD_KEYS = ("fc.", "head.", "classifier.", "last_linear.", "head_dist.")  # classifier heads of hub weight files


def load_pretrained_file(model: nn.Module, path: str | Path, what: str, head: Sequence[str] = ()) -> dict[str, Any]:
    """Load a weight file downloaded elsewhere (a model hub's ``model.safetensors``) into the headless ``model``.

    Every tensor of the model must come from the file with its shape: a missing or unexpected key or a shape
    mismatch is an error naming the file, the model and the first few of each (a file of another architecture
    is refused, never loaded in part). The file's classifier-head keys (``head``, a timm model's own classifier
    and :data:`HEAD_KEYS` prefixes), which a backbone has no use for, are ignored: a warning says so, and the
    returned report lists them.
    """
    from lnzoo.checkpoint import read_weights

    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"model.backbone.pretrained_file: {path} not found (the weights of {what})")
    if path.suffix != ".safetensors":
        raise UsageError(f"model.backbone.pretrained_file: {path}: give a .safetensors file (no pickles); a hub's "
                         "model.safetensors is one")
    state = read_weights(path, "model.backbone.pretrained_file: ")
    own = model.state_dict()
    for prefix in ("module.", "model.", "backbones.0.body.", "backbone.body.", "body."):  # saved from a wrapper
        if not any(k in own for k in state) and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()  # timm names its own
    head = [*head, *([classifier] if isinstance(classifier, str) else classifier)]
    heads = (*(f"{h}." for h in head if h), *HEAD_KEYS)
    ignored = sorted(k for k in state if k not in own and k.startswith(heads))
    unexpected = sorted(k for k in state if k not in own and k not in ignored)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    shapes = [f"{k} (file {list(state[k].shape)} vs model {list(own[k].shape)})" for k in sorted(own)
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")
        found = [f"{len(missing)} key(s) of the model missing from the file: {few(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected key(s) in the file: {few(unexpected)}" if unexpected else "",
                 f"{len(shapes)} shape mismatch(es): {few(shapes)}" if shapes else ""]
        raise UsageError(f"model.backbone.pretrained_file: {path} does not hold the weights of {what} (another "
                         f"architecture or variant?): {'; '.join(f for f in found if f)}. Give the weight file of "
                         "this very model, or the model_name the file belongs to")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    report = {"file": str(path), "loaded": sum(k in own for k in state), "ignored_head": ignored}
    if ignored:
        import warnings
        warnings.warn(f"model.backbone.pretrained_file {path}: loaded {report['loaded']} tensors into {what}; "
                      f"ignored its classifier head ({', '.join(ignored[:4])}): the model's own heads are new",
                      stacklevel=3)
    return report


def _hub_error(what: str, exc: Exception) -> LnzooError:
    return LnzooError(
        f"could not fetch pretrained weights for {what} from the model hub ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}). Offline? Use pretrained = false, or "
        f"pretrained = \"/path/to/weights.safetensors\".")


def timm_backbone(model_name: str = "resnet50", pretrained: bool | str = False, drop_rate: float = 0.0,
                  drop_path_rate: float | None = None) -> Backbone:
    import timm

    if not timm.is_model(model_name):
        from lnzoo.errors import UnknownNameError
        raise UnknownNameError("timm model", model_name, timm.list_models())
    kw: dict[str, Any] = {"num_classes": 0, "drop_rate": drop_rate}
    if drop_path_rate is not None:
        kw["drop_path_rate"] = drop_path_rate
    hub = pretrained is True or pretrained == "hub"
    try:
        body = timm.create_model(model_name, pretrained=hub, **kw)
    except Exception as exc:
        if hub:
            raise _hub_error(f"timm model {model_name!r}", exc) from None
        raise
    if isinstance(pretrained, str) and pretrained not in ("hub", ""):
        load_local_weights(body, pretrained, f"timm model {model_name!r}")
    info = getattr(body, "feature_info", None)
    cam = info[-1]["module"] if info else ""
    layout, prefix = "nchw", 0
    if hasattr(body, "blocks") and hasattr(body, "num_prefix_tokens"):  # ViT family: tokens
        layout, prefix = "tokens", int(body.num_prefix_tokens)
        cam = f"blocks.{len(body.blocks) - 1}.norm1"
    elif "swin" in model_name:
        layout = "nhwc"
    return Backbone(body, body.num_features, cam, layout, prefix, source=f"timm:{model_name}")


timm_backbone.lnzoo_check_kwargs = {"model_name": "test_resnet"}  # tiny model for the conformance kit


def _torchvision(arch: str, weights: str, head_attr: str, width: int, cam: str, layout: str,
                 pretrained: bool | str) -> Backbone:
    """A torchvision classifier with its classification layer removed."""
    import torchvision

    hub = pretrained is True or pretrained == "hub"
    try:
        body = getattr(torchvision.models, arch)(weights=weights if hub else None)
    except Exception as exc:
        raise _hub_error(f"torchvision {arch}", exc) from None
    if isinstance(pretrained, str) and pretrained not in ("hub", ""):
        load_local_weights(body, pretrained, f"torchvision {arch}")
    setattr(body, head_attr, nn.Identity())
    return Backbone(body, width, cam, layout, source=f"torchvision:{arch}")


def tv_resnet50(pretrained: bool | str = False) -> Backbone:
    return _torchvision("resnet50", "IMAGENET1K_V2", "fc", 2048, "layer4", "nchw", pretrained)


def tv_swin_t(pretrained: bool | str = False) -> Backbone:
    return _torchvision("swin_t", "IMAGENET1K_V1", "head", 768, "features.7", "nhwc", pretrained)
