"""lnzoo: a plugin-based multi-task model zoo for lymph node ultrasound.

Plugin authors need only ``lnzoo.hookimpl``; nothing here imports torch.
"""
from lnzoo.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
