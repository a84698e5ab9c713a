"""Default plugin: self-supervised pretraining methods (lightly's losses and heads; :mod:`lnzoo.pretrain.methods`)."""
from __future__ import annotations

import lnzoo


@lnzoo.hookimpl
def lnzoo_register_pretrainers(register):
    register("simclr", "lnzoo.pretrain.methods:simclr",
             "SimCLR: contrastive NT-Xent over the batch with a projection MLP (CNNs and ViTs).", default=True)
    register("byol", "lnzoo.pretrain.methods:byol",
             "BYOL: an online network and predictor against its momentum copy; no negatives.")
    register("dino", "lnzoo.pretrain.methods:dino",
             "DINO: self-distillation against an EMA teacher with centred, sharpened outputs (ViTs).")
