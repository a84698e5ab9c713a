"""Default plugin: fusion of N members (views: full image + ROI crop, 2D + CDFI + elastography; and other inputs)."""
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
    register("transformer", "lnzoo.nn.fusions:TransformerFusion",
             "The views and inputs as tokens through a small transformer encoder, a summary token out "
             "(LLNM-Net's fusion of image, report and clinical data); missing members are masked.")
