"""Default plugin: fusion of N views (full image + ROI crop, or 2D + CDFI + elastography)."""
from __future__ import annotations

import lnzoo


@lnzoo.hookimpl
def lnzoo_register_fusions(register):
    register("single", "lnzoo.nn.fusions:SingleView", "One view, no fusion.", default=True)
    register("concat", "lnzoo.nn.fusions:ConcatFusion",
             "Concatenate the views' features (the seed's dual-branch fusion); missing views are zeros.")
    register("mean", "lnzoo.nn.fusions:MeanFusion", "Mean of the features of the views present.")
    register("attention", "lnzoo.nn.fusions:AttentionFusion",
             "Learned per-view attention weights over the views present (gated attention).")
