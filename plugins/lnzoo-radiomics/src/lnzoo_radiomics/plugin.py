"""The lnzoo plugin module named by the ``lnzoo`` entry point ``radiomics``.

lnzoo imports every plugin at start-up (``lnzoo --help`` included), so this module imports no torch: the
input kind is registered as a ``"module:attr"`` string that lnzoo imports when a recipe first builds it.
"""
from __future__ import annotations

import lnzoo


@lnzoo.hookimpl
def lnzoo_register_inputs(register):
    register("radiomics", "lnzoo_radiomics.kind:RadiomicsInput",
             "Radiomics features per row: a CSV file 'feature,value' the cell names, standardised per fold.")
