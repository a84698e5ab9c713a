"""Default plugin: fusion of N views (full image + ROI crop, or 2D + CDFI + elastography)."""
from __future__ import annotations

import lnzoo


def single(num_views: int, in_features: int):
    """One view, no fusion."""
    from lnzoo.nn.fusions import SingleView
    return SingleView(num_views, in_features)


def concat(num_views: int, in_features: int):
    """Concatenate the views' features (the seed's dual-branch fusion); missing views are zeros."""
    from lnzoo.nn.fusions import ConcatFusion
    return ConcatFusion(num_views, in_features)


def mean(num_views: int, in_features: int):
    """Mean of the features of the views present."""
    from lnzoo.nn.fusions import MeanFusion
    return MeanFusion(num_views, in_features)


def attention(num_views: int, in_features: int, hidden: int = 128, view_embedding: bool = True):
    """Learned per-view attention weights over the views present (gated attention)."""
    from lnzoo.nn.fusions import AttentionFusion
    return AttentionFusion(num_views, in_features, hidden, view_embedding)


@lnzoo.hookimpl
def lnzoo_register_fusions(register):
    register("single", single)
    register("concat", concat)
    register("mean", mean)
    register("attention", attention)
