"""Default plugin: the linear, MLP and cosine task heads."""
from __future__ import annotations

import lnzoo


def linear(in_features: int, num_classes: int, dropout: float = 0.0):
    """Dropout + one linear layer."""
    from lnzoo.nn.heads import LinearHead
    return LinearHead(in_features, num_classes, dropout)


def mlp(in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.2):
    """Linear -> ReLU -> dropout -> linear (hidden 256: the CV4LymphNode head)."""
    from lnzoo.nn.heads import MLPHead
    return MLPHead(in_features, num_classes, hidden, dropout)


def cosine(in_features: int, num_classes: int, scale: float = 16.0, learn_scale: bool = True):
    """Cosine-similarity classifier with a learned scale; steadier on imbalanced classes."""
    from lnzoo.nn.heads import CosineHead
    return CosineHead(in_features, num_classes, scale, learn_scale)


@lnzoo.hookimpl
def lnzoo_register_heads(register):
    register("linear", linear)
    register("mlp", mlp)
    register("cosine", cosine)
