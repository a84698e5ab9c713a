"""Torch implementations of lnzoo's built-in components (imported only when a model is built)."""
