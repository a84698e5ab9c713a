"""lnzoo-ordinal: a CORAL ordinal-regression head (``coral``) and the ``elastography_score`` task.

The hooks live in :mod:`lnzoo_ordinal.plugin` (torch-free); the torch module in
:mod:`lnzoo_ordinal.heads`.
"""

__version__ = "0.1.0"
