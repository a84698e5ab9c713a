"""Default plugin: backbones from timm (any model by name) and the seeds' torchvision ResNet-50 / Swin-T."""
from __future__ import annotations

import lnzoo


def timm_backbone(model_name: str = "resnet50", pretrained: bool | str = False, drop_rate: float = 0.0,
                  drop_path_rate: float | None = None):
    """Any timm model by name (e.g. resnet18, convnext_tiny, vit_small_patch16_224)."""
    from lnzoo.nn.backbones import timm_backbone as build
    return build(model_name, pretrained, drop_rate, drop_path_rate)


timm_backbone.lnzoo_check_kwargs = {"model_name": "test_resnet"}  # tiny model for the conformance kit


def tv_resnet50(pretrained: bool | str = False):
    """torchvision ResNet-50, the seed's stage I-III backbone."""
    from lnzoo.nn.backbones import tv_resnet50 as build
    return build(pretrained)


def tv_swin_t(pretrained: bool | str = False):
    """torchvision Swin-T, the seed's stage II transformer."""
    from lnzoo.nn.backbones import tv_swin_t as build
    return build(pretrained)


@lnzoo.hookimpl
def lnzoo_register_backbones(register):
    register("timm", timm_backbone)
    register("tv_resnet50", tv_resnet50)
    register("tv_swin_t", tv_swin_t)
