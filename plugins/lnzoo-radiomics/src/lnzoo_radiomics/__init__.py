"""lnzoo-radiomics: the input kind ``radiomics``, one radiomics feature vector per manifest row.

The hook lives in :mod:`lnzoo_radiomics.plugin` (no torch, no numpy); the input kind in
:mod:`lnzoo_radiomics.kind` (torch only inside ``encoder``).
"""

__version__ = "0.1.0"
