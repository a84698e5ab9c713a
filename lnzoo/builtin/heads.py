"""Default plugin: the linear, MLP and cosine task heads."""
from __future__ import annotations

import lnzoo


@lnzoo.hookimpl
def lnzoo_register_heads(register):
    register("linear", "lnzoo.nn.heads:LinearHead", "Dropout + one linear layer.", default=True)
    register("mlp", "lnzoo.nn.heads:MLPHead",
             "Linear -> ReLU -> dropout -> linear (hidden 256: the CV4LymphNode head).")
    register("cosine", "lnzoo.nn.heads:CosineHead",
             "Cosine-similarity classifier with a learned scale; steadier on imbalanced classes.")
