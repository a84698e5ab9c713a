"""Default plugin: backbones from timm (any model by name) and the seeds' torchvision ResNet-50 / Swin-T."""
from __future__ import annotations

import lnzoo


@lnzoo.hookimpl
def lnzoo_register_backbones(register):
    register("timm", "lnzoo.nn.backbones:timm_backbone",
             "Any timm model by name (e.g. resnet18, convnext_tiny, vit_small_patch16_224).")
    register("tv_resnet50", "lnzoo.nn.backbones:tv_resnet50", "torchvision ResNet-50, the seed's stage I-III backbone.")
    register("tv_swin_t", "lnzoo.nn.backbones:tv_swin_t", "torchvision Swin-T, the seed's stage II transformer.")
