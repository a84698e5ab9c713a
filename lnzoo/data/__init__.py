"""Data: sources, views, splits, the synthetic phantom."""
