"""Default plugin: lnzoo's own input kinds besides the image views."""
from __future__ import annotations

import lnzoo


@lnzoo.hookimpl
def lnzoo_register_inputs(register):
    register("covariates", "lnzoo.data.covariates:CovariatesInput",
             "Clinical covariates (data.covariates): numbers standardised, categories one-hot, each with a "
             "missing indicator; fitted on the training part.")
    register("text", "lnzoo.data.text:TextInput",
             "A report in a manifest cell (Chinese or English): characters and frequent words of the training "
             "reports (tokenizers WordPiece, offline), a small transformer or pooled embedding.")
    register("morphology", "lnzoo.data.morphology_input:MorphologyInput",
             "Nodule shape, echogenicity, margin and texture features from its mask and image (scikit-image), "
             "standardised on the training part.")
